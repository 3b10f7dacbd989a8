# shellcheck shell=bash
# utils/log.sh — logging and stage-timing helpers, sourced by run.sh:  . utils/log.sh
#
#   log MESSAGE...
#       "2026-01-31T12:00:00 (run.sh:42:main) MESSAGE" on stderr: time stamp, the calling
#       script, line and function.
#
#   stage_header N "input -> output"
#       log a banner for stage N, e.g. "==== Stage 3: data/train -> exp/importance/base ====".
#
#   time_stage TSV STAGE COMMAND [ARG...]
#       run COMMAND (a program or a shell function, in the current shell), then record
#       its wall time in TSV; returns COMMAND's exit status. A failing command is not
#       recorded (under `set -e` the script stops at the failure, as without time_stage).
#
#   time_stage_begin STAGE / time_stage_end TSV STAGE
#       the same for an inline block:   time_stage_begin 3; ...; time_stage_end "$tsv" 3
#
#   record_stage_time TSV STAGE SECONDS
#       write "STAGE<TAB>SECONDS" into TSV, replacing an earlier line of that stage
#       (a re-run stage keeps its latest time) and keeping the order of first appearance.
#       The file has no header. The update is atomic: a complete new file is written
#       next to TSV and renamed over it, under an flock(1) lock when available, so
#       parallel writers neither lose lines nor expose a half-written file.
#
# Seconds carry one decimal (from $EPOCHREALTIME, bash >= 5; whole seconds otherwise).

# _log_at DEPTH MESSAGE...: log with the location of the caller DEPTH frames up.
_log_at() {
  local depth=$1
  shift
  local src=${BASH_SOURCE[depth + 1]:-${0}}
  local line=${BASH_LINENO[depth]:-0}
  local func=${FUNCNAME[depth + 1]:-main}
  printf '%s (%s:%s:%s) %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "${src##*/}" "$line" "$func" "$*" >&2
}

# log MESSAGE...: timestamped message to stderr.
log() { _log_at 1 "$@"; }

# stage_header N DESCRIPTION: banner for a stage.
stage_header() {
  local n=${1:?stage_header: stage number missing}
  shift
  _log_at 1 "==== Stage ${n}${1:+: $*} ===="
}

# _now_ds: current time in tenths of a second.
_now_ds() {
  if [[ -n ${EPOCHREALTIME:-} ]]; then
    local t=${EPOCHREALTIME//[!0-9]/}  # the decimal mark depends on the locale
    printf '%s' "$((10#${t:0:${#t}-5}))"  # microseconds -> tenths
  else
    printf '%s' "$(($(date +%s) * 10))"
  fi
}

# _fmt_ds TENTHS: "12.3"
_fmt_ds() { printf '%d.%d' "$(($1 / 10))" "$(($1 % 10))"; }

# record_stage_time TSV STAGE SECONDS: atomic insert-or-replace of "STAGE<TAB>SECONDS".
record_stage_time() {
  local tsv=${1:?record_stage_time: TSV file missing} stage=${2:?record_stage_time: stage missing}
  local secs=${3:?record_stage_time: seconds missing}
  if [[ $stage == *$'\t'* || $stage == *$'\n'* ]]; then
    printf 'record_stage_time: stage name may not contain tabs or newlines\n' >&2
    return 1
  fi
  mkdir -p -- "$(dirname -- "$tsv")"
  (
    if command -v flock >/dev/null 2>&1; then
      exec 9>>"$tsv.lock"
      flock 9
    fi
    tmp=$(mktemp "$tsv.tmp.XXXXXX")
    # Keep every other stage's line in place; replace (or append) this stage's one.
    awk -F '\t' -v OFS='\t' -v s="$stage" -v t="$secs" '
      $1 == s { if (!done) print s, t; done = 1; next }
      { print }
      END { if (!done) print s, t }
    ' "$([[ -f $tsv ]] && printf '%s' "$tsv" || printf '/dev/null')" >"$tmp"
    mv -f -- "$tmp" "$tsv"
  )
}

# time_stage TSV STAGE COMMAND [ARG...]: run and record the wall time.
time_stage() {
  local tsv=${1:?time_stage: TSV file missing} stage=${2:?time_stage: stage missing}
  shift 2
  (($# > 0)) || { printf 'time_stage: command missing\n' >&2; return 2; }
  local t0 rc=0
  t0=$(_now_ds)
  # Not `"$@" || rc=$?`: that would switch off `set -e` inside a stage function.
  "$@"
  rc=$?
  ((rc == 0)) || return "$rc"
  record_stage_time "$tsv" "$stage" "$(_fmt_ds $(($(_now_ds) - t0)))"
}

# time_stage_begin STAGE / time_stage_end TSV STAGE: timing for an inline block.
declare -gA _stage_t0=()
time_stage_begin() {
  local stage=${1:?time_stage_begin: stage missing}
  _stage_t0[$stage]=$(_now_ds)
}
time_stage_end() {
  local tsv=${1:?time_stage_end: TSV file missing} stage=${2:?time_stage_end: stage missing}
  if [[ -z ${_stage_t0[$stage]+x} ]]; then
    printf 'time_stage_end: no time_stage_begin for stage %s\n' "$stage" >&2
    return 1
  fi
  local t0=${_stage_t0[$stage]}
  record_stage_time "$tsv" "$stage" "$(_fmt_ds $(($(_now_ds) - t0)))"
  unset '_stage_t0[$stage]'
}
