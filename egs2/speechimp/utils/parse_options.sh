# shellcheck shell=bash
# utils/parse_options.sh — command-line options for recipe scripts (speechimp's own).
#
# Usage (inside a script, AFTER its defaults are declared):
#
#   stage=1
#   stop_stage=100
#   use_lora=false
#   help_message="Usage: $0 [options] <arg>"
#   . utils/parse_options.sh          # source it WITHOUT arguments
#   # "$@" now holds only the positional arguments
#
# Rules:
#   --name value  and  --name=value    set the existing shell variable `name`;
#                                      dashes in the name map to underscores
#                                      (--stop-stage and --stop_stage both set stop_stage).
#   --help, -h                         print "$help_message" to stdout and exit 0.
#   --config FILE / --config=FILE      source FILE (lines `name=value`, shell syntax,
#                                      `#` comments) before any other option is applied,
#                                      wherever it appears; every name it assigns must
#                                      already exist. May be given more than once.
#   --                                 ends option parsing; the rest is positional.
#   Parsing stops at the first argument that does not start with `--`; it and
#   everything after it stay in "$@".
#
# Errors (message on stderr, then `exit 1` of the calling script):
#   - an option naming a variable the script never declared (typo guard);
#   - an option without a value (`--stage` as the last argument);
#   - a non true/false value for a variable whose current value is true or false;
#   - an array variable (only scalars can be set from the command line).
#
# A value may itself start with `--` (e.g. --train_args "--max_epoch 3").
# All helper variables are prefixed `__po_` and removed before returning.

# Where errors are reported: the calling script's name.
__po_prog=${0##*/}

# __po_die MESSAGE: print the error (and a hint to --help) and stop the caller.
__po_die() {
  printf '%s: %s\n' "$__po_prog" "$1" >&2
  printf '%s: run "%s --help" for the list of options\n' "$__po_prog" "$__po_prog" >&2
  exit 1
}

# The helpers below run in the caller's dynamic scope, so their locals carry the
# __po_ prefix: a plain `local name` would hide a recipe variable called `name`.

# __po_check_name NAME OPTION: NAME must be an existing, settable scalar variable.
__po_check_name() {
  local __po_n=$1 __po_o=$2 __po_decl __po_flags
  if [[ ! $__po_n =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [[ $__po_n == __po_* ]]; then
    __po_die "invalid option '$__po_o'"
  fi
  if ! __po_decl=$(declare -p "$__po_n" 2>/dev/null); then
    __po_die "unknown option '$__po_o' (no variable '$__po_n' in this script)"
  fi
  __po_flags=${__po_decl#declare -}
  __po_flags=${__po_flags%% *}
  if [[ $__po_flags == *[aA]* ]]; then
    __po_die "option '$__po_o' names an array variable '$__po_n'; only scalars can be set"
  fi
}

# __po_assign NAME VALUE OPTION: validate booleans, then assign.
__po_assign() {
  local __po_n=$1 __po_v=$2 __po_o=$3 __po_cur
  __po_cur=${!__po_n-}
  if [[ $__po_cur == true || $__po_cur == false ]]; then
    if [[ $__po_v != true && $__po_v != false ]]; then
      __po_die "option '$__po_o' expects true or false, got '$__po_v'"
    fi
  fi
  # printf -v assigns in the caller's scope without eval (values are never re-parsed).
  if ! printf -v "$__po_n" '%s' "$__po_v" 2>/dev/null; then
    __po_die "cannot set '$__po_n' from option '$__po_o' (read-only?)"
  fi
}

# __po_load_config FILE: check every `name=` it assigns, then source it.
__po_load_config() {
  local __po_f=$1 __po_line __po_lineno=0 __po_n
  [[ -n $__po_f ]] || __po_die "option '--config' needs a file name"
  [[ -f $__po_f && -r $__po_f ]] || __po_die "config file '$__po_f' not found or unreadable"
  while IFS= read -r __po_line || [[ -n $__po_line ]]; do
    __po_lineno=$((__po_lineno + 1))
    if [[ $__po_line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)= ]]; then
      __po_n=${BASH_REMATCH[2]}
      if ! declare -p "$__po_n" >/dev/null 2>&1; then
        __po_die "config '$__po_f' line $__po_lineno: unknown variable '$__po_n'"
      fi
    fi
  done <"$__po_f"
  # shellcheck disable=SC1090
  . "$__po_f"
}

# Pass 1: apply every --config among the leading options first, so that explicit
# command-line options always win over config values whatever their order.
__po_args=("$@")
__po_i=0
while ((__po_i < ${#__po_args[@]})); do
  __po_arg=${__po_args[__po_i]}
  case $__po_arg in
    --) break ;;
    --config=*) __po_load_config "${__po_arg#--config=}" ;;
    --config)
      ((__po_i + 1 < ${#__po_args[@]})) || __po_die "option '--config' needs a value"
      __po_load_config "${__po_args[__po_i + 1]}"
      __po_i=$((__po_i + 1))
      ;;
    --help | -h) ;;
    --*=*) ;;
    --*) __po_i=$((__po_i + 1)) ;;  # skip this option's value
    *) break ;;
  esac
  __po_i=$((__po_i + 1))
done

# Pass 2: the options themselves, consumed from the caller's "$@".
while (($# > 0)); do
  case $1 in
    --)
      shift
      break
      ;;
    --help | -h)
      if [[ -n ${help_message-} ]]; then
        printf '%s\n' "$help_message"
      else
        printf 'Usage: %s [options] (this script has no help_message)\n' "$__po_prog"
      fi
      exit 0
      ;;
    --config=*)
      shift
      ;;
    --config)
      shift 2
      ;;
    --*=*)
      __po_opt=${1%%=*}
      __po_name=${__po_opt#--}
      __po_name=${__po_name//-/_}
      __po_check_name "$__po_name" "$__po_opt"
      __po_assign "$__po_name" "${1#*=}" "$__po_opt"
      shift
      ;;
    --?*)
      __po_opt=$1
      __po_name=${__po_opt#--}
      __po_name=${__po_name//-/_}
      __po_check_name "$__po_name" "$__po_opt"
      (($# >= 2)) || __po_die "option '$__po_opt' needs a value"
      __po_assign "$__po_name" "$2" "$__po_opt"
      shift 2
      ;;
    *)
      break  # first positional argument: stop here
      ;;
  esac
done

unset -v __po_args __po_i __po_arg __po_opt __po_name __po_prog
unset -f __po_die __po_check_name __po_assign __po_load_config
true
