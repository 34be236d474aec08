#!/usr/bin/env bash
# Create or refresh .venv with the pinned stack; a no-op when nothing it depends on changed.
# "Stale" means: the venv's python is missing/broken, or constraints.txt / setup.py /
# this script changed since the last successful install (content hash, not timestamps,
# because a fresh clone gives every file a new mtime).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# NNFUND_MPI=1 (default): install Open MPI when mpirun is missing (needs root and apt-get) and
# build Horovod with MPI and Gloo, so train.controller=auto picks MPI (faster on one host,
# README "Controllers"). NNFUND_MPI=0: Gloo only, nothing installed outside the venv.
NNFUND_MPI=${NNFUND_MPI:-1}
STAMP="$VENV/.nnfund-installed"
HOROVOD_PATCH=scripts/horovod-0.28.1-idle-wait.patch
WANT=$( { cat constraints.txt setup.py scripts/setup_venv.sh "$HOROVOD_PATCH"; echo "mpi=$NNFUND_MPI"; } \
        | sha256sum | cut -d' ' -f1)

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import sys" 2>/dev/null \
   && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$WANT" ]] \
   && { [[ "$NNFUND_MPI" != 1 ]] || command -v mpirun >/dev/null; }; then
  echo "setup: $VENV is up to date"
  exit 0
fi

start=$(date +%s)
if ! { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import sys"; } 2>/dev/null; then
  echo "setup: creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 11))'; then
  echo "setup: $VENV has $("$VENV/bin/python" --version 2>&1); the pinned stack (TensorFlow 2.15," \
       "Horovod 0.28.1) needs Python 3.10 or 3.11. Remove $VENV and rerun with" \
       "PYTHON=python3.11 (or python3.10)." >&2
  exit 1
fi
rm -f "$STAMP"
PIP=("$VENV/bin/python" -m pip)
# The build tools pinned too (setuptools: petastorm needs one below 70; pip
# and wheel: the versions this stack was installed and tested with).
"${PIP[@]}" install -q pip==26.3 wheel==0.48.0 setuptools==69.5.1
# TensorFlow first: Horovod compiles against whatever TensorFlow is installed.
"${PIP[@]}" install -q -c constraints.txt tensorflow-cpu
if [[ "$NNFUND_MPI" == 1 ]] && ! command -v mpirun >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing Open MPI (Debian openmpi-bin, libopenmpi-dev)"
    # Three tries: a mirror that is briefly unreachable should not fail a whole set-up.
    for try in 1 2 3; do
      if apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null; then
        break
      fi
      if [[ "$try" == 3 ]]; then
        echo "setup: apt-get could not install Open MPI (3 tries, see above)." >&2
        echo "  Fix the package source, or set NNFUND_MPI=0 to build Horovod with Gloo only." >&2
        exit 1
      fi
      echo "setup: apt-get failed (try $try of 3); retrying in 10 s" >&2
      sleep 10
    done
  else
    echo "setup: Open MPI is missing and cannot be installed here (needs root and apt-get)." >&2
    echo "  Install it (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) and rerun," >&2
    echo "  or set NNFUND_MPI=0 to build Horovod with Gloo only." >&2
    exit 1
  fi
fi
if [[ "$NNFUND_MPI" == 1 ]] && ! command -v mpicxx >/dev/null; then
  # mpirun without the compiler wrappers and headers (openmpi-bin without libopenmpi-dev):
  # Horovod's MPI build would fail minutes later with a compiler error.
  echo "setup: mpirun is here but mpicxx is not: Horovod's MPI build needs Open MPI's" \
       "development files (Debian/Ubuntu: apt-get install libopenmpi-dev), or set NNFUND_MPI=0" \
       "to build Horovod with Gloo only." >&2
  exit 1
fi
if [[ "$NNFUND_MPI" == 1 ]]; then
  WANT_BUILD="h.gloo_built() and h.mpi_built()"; MPI_FLAG=HOROVOD_WITH_MPI=1
else
  WANT_BUILD="h.gloo_built()"; MPI_FLAG=HOROVOD_WITHOUT_MPI=1
fi
# The build we want has the controllers and our idle-wait patch: its variables are in the library,
# and the patch it was built from is this checkout's (a changed patch rebuilds Horovod).
PATCH_MARK="$VENV/.nnfund-horovod-patch"
PATCH_SUM=$(sha256sum "$HOROVOD_PATCH" | cut -d' ' -f1)
horovod_has_controllers() {
  [[ "$(cat "$PATCH_MARK" 2>/dev/null)" == "$PATCH_SUM" ]] || return 1
  "$VENV/bin/python" -c "
import pathlib, sys, horovod.tensorflow as h
libs = pathlib.Path(h.__file__).parent.glob('mpi_lib*.so')
patched = any(b'HOROVOD_IDLE_WAIT_HOLD' in lib.read_bytes() for lib in libs)
sys.exit(0 if $WANT_BUILD and patched else 1)" 2>/dev/null
}
if ! horovod_has_controllers; then
  echo "setup: building Horovod with TensorFlow, Gloo and $MPI_FLAG (3-5 minutes on 2 cores)"
  # Uninstall first and bypass pip's wheel cache: a cached wheel from another build (say,
  # Gloo only) would otherwise be reused, since the build flags are not part of its key.
  rm -f "$PATCH_MARK"
  "${PIP[@]}" uninstall -q -y horovod 2>/dev/null || true
  # The pinned sdist with our patch applied (HOROVOD_IDLE_WAIT: the background thread sleeps
  # while no tensor is queued instead of waking every cycle; see the patch's header).
  SRC=$(mktemp -d)
  trap 'rm -rf "$SRC"' EXIT
  HOROVOD_PIN=$(grep -E '^horovod==' constraints.txt)
  "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$SRC" "$HOROVOD_PIN"
  tar -xzf "$SRC"/horovod-*.tar.gz -C "$SRC"
  (cd "$SRC/horovod-${HOROVOD_PIN#horovod==}" && git apply -p1 "$ROOT/$HOROVOD_PATCH") \
    || { echo "setup: $HOROVOD_PATCH does not apply to $HOROVOD_PIN" >&2; exit 1; }
  env HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITH_GLOO=1 "$MPI_FLAG" MAKEFLAGS=-j2 \
    "${PIP[@]}" install -q --no-cache-dir --no-build-isolation -c constraints.txt \
      "$SRC/horovod-${HOROVOD_PIN#horovod==}[spark,tensorflow-cpu]"
  echo "$PATCH_SUM" > "$PATCH_MARK"
fi
"${PIP[@]}" install -q --no-build-isolation -c constraints.txt -e ".[cpu,spark,test]"
horovod_has_controllers \
  || { echo "setup: Horovod lacks a controller it should have ($WANT_BUILD) or the" \
            "$HOROVOD_PATCH build" >&2;
       "$VENV/bin/horovodrun" --check-build >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "setup: $VENV ready in $(( $(date +%s) - start ))s"
