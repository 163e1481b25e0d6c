#!/usr/bin/env bash
# Compile the IRG layers' CUDA code with nvcc against Caffe's headers with
# CPU_ONLY off, and the gtest files with their GPU cases, so that a broken
# kernel fails the test command even on machines that cannot run it.
#
#   bash tools/check_cuda.sh CAFFE_ROOT [ARCH...]     (default arch: sm_75 sm_90)
#
# Caffe's GPU headers include cuBLAS and cuRAND, which a bare CUDA toolkit may
# lack: tools/cuda_deps.sh takes their headers from PyPI's nvidia-cublas /
# nvidia-curand wheels. Exit status 77 means "no nvcc here" (reported as skipped
# by the tests).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CAFFE_ROOT=${1:?usage: check_cuda.sh CAFFE_ROOT [ARCH...]}
shift
ARCHS=("${@:-sm_75}")
[ $# -gt 0 ] || ARCHS=(sm_75 sm_90)
NVCC=${NVCC:-$(command -v nvcc || true)}
[ -n "$NVCC" ] || { echo "check_cuda: no nvcc on PATH: CUDA compile check skipped"; exit 77; }

HEADERS=$(bash "$REPO/tools/cuda_deps.sh")

# The toolkit's own include directories, as nvcc itself reports them (nvcc
# may be a wrapper script outside the toolkit).
CUDA_INC=()
for dir in $("$NVCC" --dryrun -c -x cu /dev/null 2>&1 | grep -E '^#\$ (SYSTEM_)?INCLUDES=' |
    grep -oE '/[^" ]+'); do
  CUDA_INC+=(-I"$dir")
done
multiarch=$(gcc -print-multiarch)
INC=(-I"$REPO/caffe_layers/include" -I"$CAFFE_ROOT/include" -I"$CAFFE_ROOT/.build_release/src"
     -I"$CAFFE_ROOT/src" -I"$HEADERS/include" -I/usr/include/hdf5/serial
     -I"/usr/include/$multiarch/openblas-pthread")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
GENCODE=()
for a in "${ARCHS[@]}"; do GENCODE+=(-gencode "arch=compute_${a#sm_},code=$a"); done

status=0
for cu in "$REPO"/caffe_layers/src/caffe/layers/*.cu; do
  echo "check_cuda: nvcc ${ARCHS[*]} $(basename "$cu")"
  "$NVCC" -c -std=c++17 "${GENCODE[@]}" -Xcompiler -fPIC "${INC[@]}" "$cu" \
    -o "$OUT/$(basename "$cu").o" || status=1
done
# The .cpp files (layers and tests) with CPU_ONLY off: the GPU typed tests are
# instantiated and the layer's GPU declarations are used.
for cpp in "$REPO"/caffe_layers/src/caffe/layers/*.cpp "$REPO"/caffe_layers/src/caffe/test/*.cpp; do
  echo "check_cuda: g++ (CPU_ONLY off) $(basename "$cpp")"
  g++ -c -std=c++17 -fPIC "${INC[@]}" "${CUDA_INC[@]}" "$cpp" -o "$OUT/$(basename "$cpp").o" || status=1
done
if [ "$status" = 0 ]; then
  echo "check_cuda: all CUDA-enabled objects compiled"
else
  echo "check_cuda: FAILED" >&2
fi
exit "$status"
