#!/usr/bin/env bash
# Optional system voices for the offline demo: CMU Flite (Debian/Ubuntu package "flite").
#
#   tools/install_voices.sh        # run by `make demo`; never fails the build
#
# The demo speaks its sets with flite when the program is installed: its voices are much
# nearer natural speech for Whisper (Whisper tiny.en's word error rate on the demo's
# test_llamaq questions: 5-10 % against 27 % with espeak-ng), so the trained speech LLM
# transfers better to real recordings.  Without flite the demo falls back to the pip-only
# espeak-ng voices with a warning, and RESULTS.md says which family spoke the data.
# Installing needs root and an apt source; otherwise this script only says so.
set -uo pipefail

if command -v flite >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install_voices.sh: installing flite (apt-get install flite)" >&2
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -q flite >/dev/null 2>&1; then
    exit 0
  fi
fi
echo "install_voices.sh: flite is not installed and cannot be installed here" \
  "(as root: apt-get install flite); the demo will use espeak-ng voices" >&2
exit 0
