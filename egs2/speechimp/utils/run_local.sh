#!/usr/bin/env bash
# utils/run_local.sh — run a (parallel) job on this machine, logging like Kaldi's run.pl.
#
# Usage:
#   utils/run_local.sh [options] [JOB=1:N] <log-file> <command> [<arg> ...]
#
#   JOB=1:N     run N jobs (any variable name works: SPLIT=1:4); every occurrence of
#               the name in <log-file> and in the command's arguments is replaced by the
#               job index. JOB=3 runs the single job 3. Without it, one job runs.
#   <log-file>  per-job log; its directory is created. It gets a header (command line,
#               start time), the command's stdout+stderr, and a footer:
#                 # Accounting: time=<seconds> threads=<num_threads>
#                 # Ended (code <exit status>) at <date>, elapsed time <seconds> seconds
#
# The arguments are quoted one by one (bash's ${arg@Q}) and run with `bash -o pipefail -c`,
# so spaces and quotes inside an argument survive. An argument that is exactly a shell
# operator ('|', '||', '&&', ';', '>', '>>', '<', '2>', '2>&1', '&>', '|&') is passed
# unquoted, so `... \| gzip -c \> out.JOB.gz` builds a pipeline as with run.pl. To pass
# such a token literally, wrap the command in `bash -c '...'`.
# Jobs read stdin from /dev/null.
#
# Options (`--name value` or `--name=value`; dashes and underscores are equivalent):
#   --max_jobs_run N   at most N jobs at a time (default: nproc)
#   --num_threads N    threads per job: exported as OMP_NUM_THREADS/MKL_NUM_THREADS (default 1)
#   --gpu N            accepted for compatibility with run_slurm.sh; nothing is allocated
#   --mem X, --time T  accepted and ignored (scheduler options)
#   --partition P, --account A, --qos Q, --constraint C, --sbatch_opts "..."
#                      Slurm-only; accepted and ignored so cmd.sh can switch backends
#   -h, --help         this text
#
# Exit status: 0 when every job succeeded; otherwise 1, after naming the failing logs
# on stderr. Interrupting the launcher (Ctrl-C / TERM) kills the running jobs.
set -euo pipefail

max_jobs_run=            # empty: nproc
num_threads=1
gpu=0
mem=
time_limit=

# ---- options, JOB=start:end, log file, command (shared with the other launcher) -----
# shellcheck source=launcher_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/launcher_lib.sh"
parse_launcher_args "$@"
check_launcher_args
max_jobs_run=${max_jobs_run:-$(nproc 2>/dev/null || echo 1)}

export OMP_NUM_THREADS=$num_threads MKL_NUM_THREADS=$num_threads
have_setsid=0
command -v setsid >/dev/null 2>&1 && have_setsid=1

statusdir=$(mktemp -d "${TMPDIR:-/tmp}/run_local.XXXXXX")
pids=()
cleanup() { rm -rf "$statusdir"; }
on_signal() {
  trap - INT TERM
  local p
  for p in "${pids[@]}"; do kill -TERM -- "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  cleanup
  die "interrupted; jobs killed"
}
trap cleanup EXIT
trap on_signal INT TERM

# run_job INDEX: one job, in the background subshell that calls it.
run_job() {
  local idx=$1 log cmdline t0 t1 rc
  log=$(subst "$idx" "$logspec")
  cmdline=$(build_cmdline "$idx")
  mkdir -p -- "$(dirname -- "$log")"
  t0=$(date +%s)
  {
    printf '# %s\n' "$cmdline"
    printf '# Started at %s (host %s, threads %s, gpu %s, backend local)\n' \
      "$(date)" "$(hostname 2>/dev/null || echo unknown)" "$num_threads" "$gpu"
    printf '#\n'
  } >"$log"
  # The command runs in its own process group (setsid) so that a TERM from the
  # launcher's signal handler reaches the whole pipeline, not just its first process.
  local child
  if ((have_setsid)); then
    setsid -w bash -o pipefail -c "$cmdline" </dev/null >>"$log" 2>&1 &
  else
    bash -o pipefail -c "$cmdline" </dev/null >>"$log" 2>&1 &
  fi
  child=$!
  trap 'kill -TERM -- "-$child" 2>/dev/null || kill -TERM "$child" 2>/dev/null || true' TERM
  rc=0
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do  # woken by the trap: wait for the real exit
    rc=0
    wait "$child" || rc=$?
  done
  trap - TERM
  t1=$(date +%s)
  {
    printf '# Accounting: time=%d threads=%d\n' "$((t1 - t0))" "$num_threads"
    printf '# Ended (code %d) at %s, elapsed time %d seconds\n' "$rc" "$(date)" "$((t1 - t0))"
  } >>"$log"
  printf '%d\n' "$rc" >"$statusdir/$idx"
  return "$rc"
}

# ---- launch, at most max_jobs_run at a time ----------------------------------------------
for ((i = first; i <= last; i++)); do
  while (($(jobs -pr | wc -l) >= max_jobs_run)); do
    wait -n 2>/dev/null || true
  done
  run_job "$i" &
  pids+=("$!")
done
wait || true

# ---- collect ---------------------------------------------------------------------------
collect_status "$statusdir"
((${#failed[@]} == 0)) || die_failed
exit 0
