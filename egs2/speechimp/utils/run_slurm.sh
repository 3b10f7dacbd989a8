#!/usr/bin/env bash
# utils/run_slurm.sh — run a (parallel) job through Slurm with run_local.sh's interface.
#
# Usage:
#   utils/run_slurm.sh [options] [JOB=1:N] <log-file> <command> [<arg> ...]
#
#   Same calling convention, JOB substitution, quoting rules and log format as
#   utils/run_local.sh (header with the command line and start time; footer
#   "# Accounting: time=<s> threads=<n>" and "# Ended (code <rc>) at <date>, ...").
#   The jobs are submitted as ONE `sbatch --wait` job array (or a single job without
#   JOB=...), and this script blocks until all of them finished. The log files must be
#   on a file system shared with the compute nodes.
#
# Options (`--name value` or `--name=value`; dashes and underscores are equivalent)
# and their sbatch translation:
#   --num_threads N    --cpus-per-task=N   (and OMP_NUM_THREADS=N in the job; default 1)
#   --gpu N            --gres=gpu:N        (when N > 0; default 0)
#   --mem X            --mem=X             (e.g. 8G; per node)
#   --time T           --time=T            (e.g. 24:00:00)
#   --max_jobs_run N   --array=1-N%M       (at most M array tasks at once; default: no limit)
#   --partition P      --partition=P
#   --account A        --account=A
#   --qos Q            --qos=Q
#   --constraint C     --constraint=C
#   --sbatch_opts "…"  extra sbatch options, split on whitespace
#   -h, --help         this text
# Environment: SBATCH (default `sbatch`), SCANCEL (default `scancel`).
#
# Files: the generated job script, sbatch's own output and per-task exit codes go to
# <dir of the log>/q/. Exit status: 0 when every task succeeded; otherwise 1, naming the
# failing logs. Ctrl-C / TERM cancels the Slurm job (scancel).
set -euo pipefail

prog=${0##*/}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 1; }

max_jobs_run=
num_threads=1
gpu=0
mem=
time_limit=
partition=
account=
qos=
constraint=
sbatch_opts=
sbatch_bin=${SBATCH:-sbatch}
scancel_bin=${SCANCEL:-scancel}

# ---- options -------------------------------------------------------------------------
while (($# > 0)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    --*)
      if [[ $1 == *=* ]]; then opt=${1%%=*}; val=${1#*=}; shift
      else
        opt=$1
        (($# >= 2)) || die "option '$opt' needs a value"
        val=$2; shift 2
      fi
      key=${opt#--}; key=${key//-/_}
      case $key in
        max_jobs_run) max_jobs_run=$val ;;
        num_threads) num_threads=$val ;;
        gpu) gpu=$val ;;
        mem) mem=$val ;;
        time) time_limit=$val ;;
        partition) partition=$val ;;
        account) account=$val ;;
        qos) qos=$val ;;
        constraint) constraint=$val ;;
        sbatch_opts) sbatch_opts=$val ;;
        config) ;;  # accepted for run.pl compatibility; unused
        *) die "unknown option '$opt'" ;;
      esac
      ;;
    *) break ;;
  esac
done
[[ -z $max_jobs_run || $max_jobs_run =~ ^[1-9][0-9]*$ ]] ||
  die "--max_jobs_run must be a positive integer, got '$max_jobs_run'"
[[ $num_threads =~ ^[1-9][0-9]*$ ]] || die "--num_threads must be a positive integer, got '$num_threads'"
[[ $gpu =~ ^[0-9]+$ ]] || die "--gpu must be a non-negative integer, got '$gpu'"

# ---- JOB=start:end ---------------------------------------------------------------------
jobvar=
first=1
last=1
if (($# > 0)) && [[ $1 =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+)(:([0-9]+))?$ ]]; then
  jobvar=${BASH_REMATCH[1]}
  first=${BASH_REMATCH[2]}
  last=${BASH_REMATCH[4]:-$first}
  ((10#$first <= 10#$last)) || die "empty job range '$1'"
  first=$((10#$first)); last=$((10#$last))
  shift
fi
(($# >= 2)) || { usage >&2; die "expected [JOB=1:N] <log-file> <command ...>"; }
logspec=$1
shift
cmd_args=("$@")

# Shell operators that pass through unquoted (as in run_local.sh).
is_operator() {
  case $1 in '|' | '||' | '&&' | ';' | '>' | '>>' | '<' | '2>' | '2>>' | '2>&1' | '&>' | '|&') return 0 ;; esac
  return 1
}

# build_cmdline INDEX: the command line of job INDEX (JOB substituted, args quoted).
build_cmdline() {
  local idx=$1 a out=
  for a in "${cmd_args[@]}"; do
    [[ -n $jobvar ]] && a=${a//"$jobvar"/$idx}
    if is_operator "$a" || [[ $a =~ ^[A-Za-z0-9_./:=,+%@-]+$ ]]; then
      out+="$a "
    else
      out+="${a@Q} "
    fi
  done
  printf '%s' "${out% }"
}

# subst INDEX STRING: STRING with the job variable replaced by INDEX.
subst() { if [[ -n $jobvar ]]; then printf '%s' "${2//"$jobvar"/$1}"; else printf '%s' "$2"; fi; }

# abspath PATH: absolute form of PATH (it need not exist yet).
abspath() { if [[ $1 == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi; }

# ---- job script ------------------------------------------------------------------------
first_log=$(subst "$first" "$logspec")
qdir=$(abspath "$(dirname -- "$first_log")")/q
base=${logspec##*/}
base=${base%.log}
[[ -n $jobvar ]] && base=${base//"$jobvar"/}
base=${base//[^A-Za-z0-9_.-]/_}
base=${base##.}; base=${base%%.}; base=${base//../.}
[[ -n $base ]] || base=job
mkdir -p -- "$qdir"
script=$qdir/$base.sh
statusdir=$qdir/$base.status
rm -rf -- "$statusdir"
mkdir -p -- "$statusdir"

sbatch_args=(--wait "--job-name=$base" "--cpus-per-task=$num_threads")
((gpu > 0)) && sbatch_args+=("--gres=gpu:$gpu")
[[ -n $mem ]] && sbatch_args+=("--mem=$mem")
[[ -n $time_limit ]] && sbatch_args+=("--time=$time_limit")
[[ -n $partition ]] && sbatch_args+=("--partition=$partition")
[[ -n $account ]] && sbatch_args+=("--account=$account")
[[ -n $qos ]] && sbatch_args+=("--qos=$qos")
[[ -n $constraint ]] && sbatch_args+=("--constraint=$constraint")
if [[ -n $jobvar ]]; then
  sbatch_args+=("--array=$first-$last${max_jobs_run:+%$max_jobs_run}" "--output=$qdir/$base.%A_%a.out")
else
  sbatch_args+=("--output=$qdir/$base.%j.out")
fi
if [[ -n $sbatch_opts ]]; then
  read -r -a extra <<<"$sbatch_opts"
  sbatch_args+=("${extra[@]}")
fi

{
  printf '#!/usr/bin/env bash\n'
  printf '# Generated by %s at %s; submitted as:\n' "$prog" "$(date)"
  printf '#   %s %s %s\n' "$sbatch_bin" "${sbatch_args[*]}" "$script"
  printf 'cd %q || exit 1\n' "$PWD"
  printf 'export OMP_NUM_THREADS=%d MKL_NUM_THREADS=%d\n' "$num_threads" "$num_threads"
  printf 'task=${SLURM_ARRAY_TASK_ID:-%d}\n' "$first"
  printf 'case $task in\n'
  for ((i = first; i <= last; i++)); do
    log_i=$(subst "$i" "$logspec")
    cmd_i=$(build_cmdline "$i")
    printf '  %d) log=%s; cmd=%s ;;\n' "$i" "${log_i@Q}" "${cmd_i@Q}"
  done
  printf '  *) echo "task $task is not in %d..%d" >&2; exit 1 ;;\n' "$first" "$last"
  printf 'esac\n'
  cat <<'EOF'
mkdir -p -- "$(dirname -- "$log")"
t0=$(date +%s)
{
  printf '# %s\n' "$cmd"
  printf '# Started at %s (host %s, threads %s, backend slurm, job %s)\n' \
    "$(date)" "$(hostname 2>/dev/null || echo unknown)" "${OMP_NUM_THREADS}" \
    "${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-?}}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"
  printf '#\n'
} >"$log"
rc=0
bash -o pipefail -c "$cmd" </dev/null >>"$log" 2>&1 || rc=$?
t1=$(date +%s)
{
  printf '# Accounting: time=%d threads=%d\n' "$((t1 - t0))" "$OMP_NUM_THREADS"
  printf '# Ended (code %d) at %s, elapsed time %d seconds\n' "$rc" "$(date)" "$((t1 - t0))"
} >>"$log"
EOF
  printf 'echo "$rc" >%q/"$task"\n' "$statusdir"
  printf 'exit "$rc"\n'
} >"$script"
chmod +x "$script"

# ---- submit and wait ---------------------------------------------------------------------
command -v "$sbatch_bin" >/dev/null 2>&1 || die "'$sbatch_bin' not found; is this a Slurm login node? (set cmd_backend=local otherwise)"
submit_log=$qdir/$base.submit.log
sbatch_pid=
on_signal() {
  trap - INT TERM
  local id
  id=$(sed -n 's/.*Submitted batch job \([0-9][0-9]*\).*/\1/p' "$submit_log" 2>/dev/null | head -n1)
  [[ -n $id ]] && "$scancel_bin" "$id" 2>/dev/null || true
  [[ -n $sbatch_pid ]] && kill -TERM "$sbatch_pid" 2>/dev/null || true
  die "interrupted; Slurm job ${id:-?} cancelled"
}
trap on_signal INT TERM
"$sbatch_bin" "${sbatch_args[@]}" "$script" >"$submit_log" 2>&1 &
sbatch_pid=$!
sbatch_rc=0
wait "$sbatch_pid" || sbatch_rc=$?
trap - INT TERM

# ---- collect ---------------------------------------------------------------------------
failed=()
missing=0
for ((i = first; i <= last; i++)); do
  rc=$(cat "$statusdir/$i" 2>/dev/null || echo missing)
  [[ $rc == missing ]] && missing=$((missing + 1))
  [[ $rc == 0 ]] || failed+=("$i")
done
if ((${#failed[@]} > 0)); then
  total=$((last - first + 1))
  if ((${#failed[@]} > 1)); then
    for i in "${failed[@]}"; do
      printf '%s: failed: %s\n' "$prog" "$(subst "$i" "$logspec")" >&2
    done
  fi
  if ((missing > 0)); then
    printf '%s: %d task(s) left no exit status (sbatch exit %d; killed by Slurm, or not submitted?): see %s and %s/%s.*.out\n' \
      "$prog" "$missing" "$sbatch_rc" "$submit_log" "$qdir" "$base" >&2
  fi
  if ((${#failed[@]} == 1)); then
    die "job ${failed[0]} failed (1 / $total); see log $(subst "${failed[0]}" "$logspec")"
  fi
  die "${#failed[@]} / $total jobs failed; e.g. see log $(subst "${failed[0]}" "$logspec")"
fi
exit 0
