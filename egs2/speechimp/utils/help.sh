# shellcheck shell=bash
# utils/help.sh — --help text from a script's own comments (sourced:  . utils/help.sh).
#
#   script_header FILE
#       the comment block at the top of FILE (from line 2 up to `set -euo pipefail`),
#       without the leading "# ".
#
#   options_help FILE
#       "Options (default in brackets):" and every option FILE declares between the line
#       "# ==== Options ..." and its `help_message=` line, in this layout:
#
#         # ---- General ---------------------     heading       ->  "General:"
#         # a remark                                remark        ->  "  a remark"
#         name=default           # meaning          option        ->  "  --name [default]  meaning"
#         other="a b"            # meaning, which   option
#                                # goes on here     continuation  ->  (the meaning's next line)
#
#       The default is the text after `=` up to the first blank (a "..." value whole);
#       meanings start in one column, continuations below them.

script_header() {
  sed -n '2,/^set -euo pipefail/{/^#/{s/^# \{0,1\}//;p}}' "$1"
}

options_help() {
  printf 'Options (default in brackets):\n'
  awk -v col=30 '
    function show(text) {          # the first line of a meaning goes beside its option
      if (head == "") { printf "%" col "s%s\n", "", text; return }
      if (length(head) < col - 1) printf "%-" col "s%s\n", head, text
      else { print head; printf "%" col "s%s\n", "", text }
      head = ""
    }
    function flush() { if (head != "") print head; head = "" }
    /^# ==== Options/ { inside = 1; next }
    !inside { next }
    /^help_message=/ { exit }
    /^# ---- / {
      flush(); h = $0; sub(/^# ---- */, "", h); sub(/ *-*$/, "", h)
      printf "\n%s:\n", h; next
    }
    /^[A-Za-z_][A-Za-z0-9_]*=/ {
      flush()
      name = $0; sub(/=.*/, "", name)
      rest = substr($0, length(name) + 2)
      if (substr(rest, 1, 1) == "\"") n = index(substr(rest, 2), "\"") + 1
      else { n = index(rest, " ") - 1; if (n < 0) n = length(rest) }
      def = substr(rest, 1, n); text = substr(rest, n + 1)
      head = "  --" name " [" def "]"
      if (sub(/^[ \t]*#[ ]?/, "", text)) show(text)
      next
    }
    /^[ \t]+#/ { text = $0; sub(/^[ \t]+#[ ]?/, "", text); show(text); next }
    /^#/ { flush(); text = $0; sub(/^#[ ]?/, "", text); print "  " text; next }
    END { flush() }
  ' "$1"
}
