# shellcheck shell=bash
# Shared by run_local.sh and run_slurm.sh (sourced after their option defaults): the run.pl
# calling convention
#   <launcher> [options] [JOB=1:N] <log file> <command ...>
# and what both do around it: usage (the script's header comment), errors, option checks,
# JOB substitution, quoting, and the final report of failed jobs.

# shellcheck source=help.sh
. "$(dirname "${BASH_SOURCE[0]}")/help.sh"

prog=${0##*/}

# usage: the launcher's header comment.
usage() { script_header "$0"; }

# die MESSAGE...: "<launcher>: MESSAGE" on stderr, exit 1.
die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 1; }

# parse_launcher_args ARGS...: the options both launchers accept (each uses what it can:
# run_local.sh ignores the Slurm-only ones), then the job spec.  Sets max_jobs_run,
# num_threads, gpu, mem, time_limit, partition, account, qos, constraint, sbatch_opts
# (only those given) and everything parse_job_spec sets.
parse_launcher_args() {
  local opt val key
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
  parse_job_spec "$@"
}

# check_launcher_args: die unless --num_threads is a positive integer, --gpu a non-negative
# one and --max_jobs_run a positive integer or empty (the launcher's default).
check_launcher_args() {
  [[ -z $max_jobs_run || $max_jobs_run =~ ^[1-9][0-9]*$ ]] ||
    die "--max_jobs_run must be a positive integer, got '$max_jobs_run'"
  [[ $num_threads =~ ^[1-9][0-9]*$ ]] || die "--num_threads must be a positive integer, got '$num_threads'"
  [[ $gpu =~ ^[0-9]+$ ]] || die "--gpu must be a non-negative integer, got '$gpu'"
}

# parse_job_spec ARGS...: sets jobvar, first, last, logspec and cmd_args.
parse_job_spec() {
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
}

# Shell operators that pass through unquoted, so `\| gzip \> out.JOB.gz` builds a
# pipeline as with run.pl (wrap the command in bash -c '...' to pass one literally).
is_operator() {
  case $1 in
    '|' | '||' | '&&' | ';' | '>' | '>>' | '<' | '2>' | '2>>' | '2>&1' | '&>' | '|&') return 0 ;;
  esac
  return 1
}

# subst INDEX STRING: STRING with the job variable replaced by INDEX.
subst() { if [[ -n $jobvar ]]; then printf '%s' "${2//"$jobvar"/$1}"; else printf '%s' "$2"; fi; }

# build_cmdline INDEX: the command line of job INDEX (JOB substituted, args quoted).
build_cmdline() {
  local idx=$1 a out=
  for a in "${cmd_args[@]}"; do
    [[ -n $jobvar ]] && a=${a//"$jobvar"/$idx}
    if is_operator "$a" || [[ $a =~ ^[A-Za-z0-9_./:=,+%@-]+$ ]]; then
      out+="$a "                  # operator or plain word: as is
    else
      out+="${a@Q} "              # anything else: single-quoted, bash-escaped
    fi
  done
  printf '%s' "${out% }"
}

# collect_status STATUSDIR: read the exit status every job first..last wrote to
# STATUSDIR/<index>. Sets failed (the indices of jobs that failed or left no status) and
# missing (how many left none).
collect_status() {
  local dir=$1 i rc
  failed=()
  missing=0
  for ((i = first; i <= last; i++)); do
    rc=$(cat "$dir/$i" 2>/dev/null || echo missing)
    [[ $rc == missing ]] && missing=$((missing + 1))
    [[ $rc == 0 ]] || failed+=("$i")
  done
}

# log_excerpt LOG: the lines of a failed job's LOG most likely to say why, indented, on stdout:
# the last Python exception line ("ValueError: ...", "[rank0]: ..."-prefixed ones too; torchrun's
# own ChildFailedError is passed over) after the last "Traceback", or anywhere when there is
# none; without one, the last 3 non-empty lines of the job's output (the launcher's "# ..."
# header and footer left out). Lines are cut at 300 characters. Nothing for an empty log; a
# note for a missing or unreadable one.
log_excerpt() {
  local log=$1
  if [[ ! -r $log ]]; then
    printf '  (no log %s)\n' "$log"
    return 0
  fi
  awk '
    function cut(s) { return length(s) > 300 ? substr(s, 1, 300) "..." : s }
    { sub(/\r$/, "") }
    NR == 1 && /^# / { next }                  # the launcher header: command line,
    /^# Started at / || /^#$/ { next }         # start time, separator
    /^# Accounting: time=/ || /^# Ended \(code / { next }  # and footer
    /^(\[[a-z]*[0-9]+\]: ?)?Traceback / { prev = exc; exc = "" }
    /^(\[[a-z]*[0-9]+\]: ?)?[A-Za-z_][A-Za-z0-9_.]*(Error|Exception)([^A-Za-z0-9_].*)?:/ {
      # torchrun reports a failed worker with its own ChildFailedError: keep the worker error
      exc = (/ChildFailedError/ && prev != "") ? prev : $0
    }
    /[^ \t]/ { l1 = l2; l2 = l3; l3 = $0; n++ }
    END {
      if (exc != "") { print "  " cut(exc); exit }
      if (n >= 3) print "  " cut(l1)
      if (n >= 2) print "  " cut(l2)
      if (n >= 1) print "  " cut(l3)
    }
  ' "$log" 2>/dev/null || true
}

# die_failed: name the log of every failed job (see collect_status) on stderr, show the first
# one's error lines (log_excerpt) and die.
die_failed() {
  local total=$((last - first + 1)) i log
  log=$(subst "${failed[0]}" "$logspec")
  if ((${#failed[@]} == 1)); then
    printf '%s: job %s failed (1 / %s); see log %s\n' "$prog" "${failed[0]}" "$total" "$log" >&2
  else
    for i in "${failed[@]}"; do
      printf '%s: failed: %s\n' "$prog" "$(subst "$i" "$logspec")" >&2
    done
    printf '%s: %s / %s jobs failed; e.g. see log %s\n' "$prog" "${#failed[@]}" "$total" "$log" >&2
  fi
  log_excerpt "$log" >&2
  exit 1
}
