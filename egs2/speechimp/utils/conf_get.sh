#!/usr/bin/env bash
# utils/conf_get.sh — read one value of a YAML file from shell (sourced:  . utils/conf_get.sh).
#
#   conf_get FILE KEY
#       print the value at the dotted KEY of the YAML mapping in FILE, e.g.
#         bs=$(conf_get conf/decode.yaml batch_size)
#         llm=$(conf_get conf/model/tiny_random.yaml pretrained.llm)
#       Booleans print as true/false, null as an empty line, numbers and strings as
#       Python's str() writes them. A missing file, invalid YAML, a missing key or a key
#       holding a list or mapping is an error: a message naming FILE and KEY on stderr,
#       exit status 1 (under `set -e` the calling script stops).
#   conf_get FILE KEY DEFAULT
#       the same, but a missing KEY prints DEFAULT (an optional key, e.g.
#         pad=$(conf_get "$model_preset" encoder_conf.pad_to_30s false)
#       ); every other error is still one.
#
# One short `python -c` per call (PyYAML only, none of espnet_ext is imported); `python`
# is the one on PATH, i.e. the recipe's virtual environment after `. ./path.sh`.
# Run directly (utils/conf_get.sh FILE KEY) it does the same.

conf_get() {
  if (($# != 2 && $# != 3)); then
    printf 'usage: conf_get FILE KEY [DEFAULT] (a dotted key, e.g. adaptor_conf.downsample_rate;\n' >&2
    printf '       DEFAULT: printed when KEY is missing)\n' >&2
    return 2
  fi
  python -c '
import sys

import yaml

path, key = sys.argv[1:3]
default = sys.argv[3] if len(sys.argv) > 3 else None


def fail(msg):
    sys.exit(f"conf_get: {path}: {msg}")


try:
    with open(path, encoding="utf-8") as f:
        value = yaml.safe_load(f)
except OSError as e:
    fail(e.strerror)
except yaml.YAMLError as e:
    fail(f"not valid YAML: {e}")
for part in key.split("."):
    if not isinstance(value, dict) or part not in value:
        if default is not None and (value is None or isinstance(value, dict)):
            print(default)
            sys.exit(0)
        fail(f"no key {key}")
    value = value[part]
if isinstance(value, (dict, list)):
    kind = "mapping" if isinstance(value, dict) else "list"
    fail(f"{key} is a {kind}, not a single value")
print("" if value is None else str(value).lower() if isinstance(value, bool) else value)
' "$@"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  conf_get "$@"
fi
