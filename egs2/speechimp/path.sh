# shellcheck shell=bash
# path.sh — environment for the recipe (sourced by run.sh and by hand:  . ./path.sh).
#
#  - activates the speechimp virtual environment: $SPEECHIMP_VENV if set, otherwise
#    tools/venv of the repository root (two levels above egs2/speechimp), as created
#    by `make install` / tools/install.sh;
#  - puts the repository root on PYTHONPATH (espnet_ext importable without install);
#  - keeps every Hugging Face library offline: models and corpora come from local
#    copies only (see db.sh and exp/pretrained/);
#  - PYTHONUNBUFFERED=1 so that job logs show progress as it happens;
#  - OMP_NUM_THREADS defaults to the number of cores (launchers override per job
#    with --num_threads).
# Exports SPEECHIMP_ROOT (repository root) and SPEECHIMP_RECIPE (this directory).

SPEECHIMP_RECIPE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SPEECHIMP_ROOT=$(cd "${SPEECHIMP_RECIPE}/../.." && pwd)
export SPEECHIMP_RECIPE SPEECHIMP_ROOT

_speechimp_venv=${SPEECHIMP_VENV:-${SPEECHIMP_ROOT}/tools/venv}
if [ ! -x "${_speechimp_venv}/bin/python" ]; then
  {
    echo "path.sh: no Python environment at ${_speechimp_venv}"
    echo "path.sh: create it first:  make install   (or: ${SPEECHIMP_ROOT}/tools/install.sh)"
    echo "path.sh: or point SPEECHIMP_VENV at an existing one."
  } >&2
  unset _speechimp_venv
  return 1 2>/dev/null || exit 1
fi
if [ ! -f "${_speechimp_venv}/.speechimp-installed" ]; then
  echo "path.sh: warning: ${_speechimp_venv} looks incomplete (no .speechimp-installed);" \
    "re-run make install / tools/install.sh if imports fail" >&2
fi

# What `source bin/activate` does, without its prompt handling (safe under set -u).
VIRTUAL_ENV=$(cd "${_speechimp_venv}" && pwd)
export VIRTUAL_ENV
case ":${PATH}:" in
  *":${VIRTUAL_ENV}/bin:"*) ;;
  *) export PATH="${VIRTUAL_ENV}/bin:${PATH}" ;;
esac
unset PYTHONHOME
unset _speechimp_venv

case ":${PYTHONPATH:-}:" in
  *":${SPEECHIMP_ROOT}:"*) ;;
  *) export PYTHONPATH="${SPEECHIMP_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" ;;
esac

export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc 2>/dev/null || echo 1)}
