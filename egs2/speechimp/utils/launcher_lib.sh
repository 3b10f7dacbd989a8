# Shared by run_local.sh and run_slurm.sh (sourced): the run.pl calling convention
#   <launcher> [options] [JOB=1:N] <log file> <command ...>
# The sourcing script defines die() and usage().

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
  case $1 in '|' | '||' | '&&' | ';' | '>' | '>>' | '<' | '2>' | '2>>' | '2>&1' | '&>' | '|&') return 0 ;; esac
  return 1
}

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
