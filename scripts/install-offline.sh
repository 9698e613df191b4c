#!/usr/bin/env bash
# Install fairseq (fairseq-fixed) and its missing dependencies from a wheelhouse made by build-wheelhouse.sh,
# without network, into TARGET_DIR (default /tmp/site); then: export PYTHONPATH=TARGET_DIR:$PWD
# usage: scripts/install-offline.sh WHEELHOUSE [TARGET_DIR]
set -euo pipefail
WH="${1:?usage: scripts/install-offline.sh WHEELHOUSE [TARGET_DIR]}"
TARGET="${2:-/tmp/site}"
[[ -f "$WH/fairseq_fixed-0.12.3.1.tar.gz" ]] || { echo "error: $WH has no fairseq_fixed-0.12.3.1.tar.gz (run scripts/build-wheelhouse.sh)" >&2; exit 1; }
if PYTHONPATH="$TARGET" python3 -c "import fairseq, hydra" 2>/dev/null; then echo "fairseq already in $TARGET" >&2; exit 0; fi
python3 -m pip install --quiet --no-index --no-deps --target "$TARGET" "$WH"/*.whl
# CUDA_HOME unset: build fairseq's C++ helpers only (its optional CUDA kernels are not used here)
env -u CUDA_HOME python3 -m pip install --quiet --no-index --no-deps --no-build-isolation --target "$TARGET" \
  "$WH/fairseq_fixed-0.12.3.1.tar.gz"
PYTHONPATH="$TARGET" python3 -c "import fairseq; print('fairseq', fairseq.__version__, 'installed in $TARGET')"
