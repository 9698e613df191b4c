#!/usr/bin/env bash
# Install fairseq (fairseq-fixed) and its missing dependencies from a wheelhouse made by build-wheelhouse.sh,
# without network, into TARGET_DIR (default /tmp/site); then: export PYTHONPATH=TARGET_DIR:$PWD
# usage: scripts/install-offline.sh WHEELHOUSE [TARGET_DIR]
set -euo pipefail
WH="${1:?usage: scripts/install-offline.sh WHEELHOUSE [TARGET_DIR]}"
TARGET="${2:-/tmp/site}"
[[ -f "$WH/fairseq_fixed-0.12.3.1.tar.gz" ]] || { echo "error: $WH has no fairseq_fixed-0.12.3.1.tar.gz (run scripts/build-wheelhouse.sh)" >&2; exit 1; }
if PYTHONPATH="$TARGET" python3 -c "import fairseq, hydra" 2>/dev/null; then echo "fairseq already in $TARGET" >&2; exit 0; fi
PY_TAG=$(python3 -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
BUILT="$WH"
if ! ls "$WH"/fairseq_fixed-0.12.3.1-"$PY_TAG"-*.whl >/dev/null 2>&1; then
  # build fairseq's C++/Cython helpers once (~2 min; CUDA_HOME unset: its optional CUDA kernels are not used)
  # and keep the wheel in the wheelhouse, if writable: later installs with this Python take seconds
  [[ -w "$WH" ]] || BUILT="$(mktemp -d)"
  echo "building a $PY_TAG wheel of fairseq-fixed into $BUILT (once)" >&2
  env -u CUDA_HOME python3 -m pip wheel --quiet --no-index --no-deps --no-build-isolation -w "$BUILT" \
    "$WH/fairseq_fixed-0.12.3.1.tar.gz"
fi
python3 -m pip install --quiet --no-index --no-deps --target "$TARGET" \
  $(ls "$WH"/*.whl | grep -v -e '/fairseq_fixed-') "$BUILT"/fairseq_fixed-0.12.3.1-"$PY_TAG"-*.whl
PYTHONPATH="$TARGET" python3 -c 'import fairseq, sys; print("fairseq", fairseq.__version__, "installed in", sys.argv[1])' "$TARGET"
