#!/usr/bin/env bash
# Create or refresh .venv with the pinned stack; a no-op when nothing it depends on changed.
# "Stale" means: the venv's python is missing/broken, or constraints.txt / setup.py /
# this script changed since the last successful install (content hash, not timestamps,
# because a fresh clone gives every file a new mtime).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.nnfund-installed"
WANT=$(cat constraints.txt setup.py scripts/setup_venv.sh | sha256sum | cut -d' ' -f1)

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import sys" 2>/dev/null \
   && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

start=$(date +%s)
if ! { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import sys"; } 2>/dev/null; then
  echo "setup: creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -U pip wheel setuptools==69.5.1
# TensorFlow first: Horovod compiles against whatever TensorFlow is installed.
"${PIP[@]}" install -q -c constraints.txt tensorflow-cpu
if ! "$VENV/bin/python" -c "import horovod.tensorflow" 2>/dev/null; then
  echo "setup: building Horovod with TensorFlow + Gloo (about 2-3 minutes on 2 cores)"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 MAKEFLAGS=-j2 \
    "${PIP[@]}" install -q --no-build-isolation -c constraints.txt "horovod[spark,tensorflow-cpu]"
fi
"${PIP[@]}" install -q --no-build-isolation -c constraints.txt -e ".[cpu,spark,test]"
"$VENV/bin/horovodrun" --check-build | grep -E '\[X\] (TensorFlow|Gloo)' >/dev/null \
  || { echo "setup: Horovod was built without TensorFlow or Gloo" >&2; "$VENV/bin/horovodrun" --check-build >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "setup: $VENV ready in $(( $(date +%s) - start ))s"
