#!/usr/bin/env bash
# Build an offline wheelhouse for an air-gapped GPU machine that already has torch, numpy, sacrebleu and
# sentencepiece (e.g. an NGC/PyTorch image): fairseq-fixed (sdist, built there against its torch) and the
# pure-Python / manylinux wheels fairseq needs but such images lack. Run on a machine with internet.
#
# usage: scripts/build-wheelhouse.sh [OUT_DIR] [PYTHON_VERSION]     (defaults: wheelhouse 3.12)
# then, on the offline machine:  scripts/install-offline.sh OUT_DIR [TARGET_DIR]
set -euo pipefail
OUT="${1:-wheelhouse}"
PYVER="${2:-3.12}"
ABI="cp${PYVER/./}"
mkdir -p "$OUT"
PLAT=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)

echo "[1/3] binary wheels for Python $PYVER" >&2
pip download --quiet --no-deps --only-binary :all: --python-version "$PYVER" --implementation cp --abi "$ABI" \
  "${PLAT[@]}" -d "$OUT" hydra-core==1.3.2 omegaconf==2.3.0 bitarray cffi pycparser tensorly pyyaml

echo "[2/3] antlr4-python3-runtime 4.9.3 (sdist only on PyPI: built here into a pure-Python wheel)" >&2
pip wheel --quiet --no-deps -w "$OUT" antlr4-python3-runtime==4.9.3

echo "[3/3] fairseq-fixed 0.12.3.1 sdist (compiled on the target against its own torch)" >&2
if [[ ! -f "$OUT/fairseq_fixed-0.12.3.1.tar.gz" ]]; then
  python3 -c "import torch, numpy, Cython" 2>/dev/null ||
    { echo "error: downloading the fairseq-fixed sdist needs torch, numpy and cython here (pip install torch==2.13.0 numpy cython)" >&2; exit 1; }
  pip download --quiet --no-deps --no-build-isolation --no-binary :all: -d "$OUT" fairseq-fixed==0.12.3.1
fi
ls -1 "$OUT"
