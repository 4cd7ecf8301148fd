#!/usr/bin/env bash
# Download (never install) the wheels that the GPU device image lacks, for gpu_check.sh to
# install there: .whl/ holds what the library needs (transformer-lens and its pure-Python
# dependencies missing from the image, plotly), .whl/gpu/ the GPU-only kernels (fla-core).
# Run it here, on the CPU machine, when .whl/ is missing (ignored folders need not survive
# between sessions); then carry `.whl` (and `.pydeps` if present) to the device:
#
#   bash benchmarks/gpu_wheels.sh          # about 15 MB, Python 3.12 wheels
#
# Nothing here is imported or installed on this machine: fla must never be installed on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DL=("$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p .whl/gpu
"${DL[@]}" -d .whl transformer-lens==4.3.0 beartype==0.23.1 fancy-einsum==0.0.3 typeguard==4.6.1 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 plotly==7.1.0
"${DL[@]}" -d .whl/gpu fla-core==0.5.2
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -q '^.whl/' .gitignore || echo '/.whl/' >>.git/info/exclude
ls -1 .whl/*.whl .whl/gpu/*.whl
du -sh .whl
