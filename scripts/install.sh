#!/usr/bin/env bash
# Sets up ddpseg in ./.venv (or, with DDPSEG_USE_CURRENT_ENV=1, in the active Python environment).
# A torch that is already installed is kept as it is (e.g. your CUDA build); where there is none, a
# pinned release is installed first, so the open `torch>=2.5` requirement never pulls a new multi-GB build.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${DDPSEG_TORCH_SPEC:-torch==2.13.0}   # override, e.g. with your CPU/CUDA choice
EXTRAS=${DDPSEG_EXTRAS:-test,all}

if [ "${DDPSEG_USE_CURRENT_ENV:-0}" = "1" ]; then
  PY=${PYTHON:-python3}
else
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  PY=.venv/bin/python
fi

if "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "ddpseg install: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "ddpseg install: no torch found, installing $TORCH_SPEC"
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
"$PY" -m pip install --quiet -e ".[${EXTRAS}]"
echo "ddpseg install: done ($("$PY" -c 'import ddpseg, torch; print("ddpseg", ddpseg.__version__, "torch", torch.__version__)'))"
