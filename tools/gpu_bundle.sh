#!/usr/bin/env bash
# Build the portable GPU check: a self-contained folder (at most 48 MiB) that
# runs our layers' gtests (GPU and CPU cases, GPU against CPU) and a GPU
# benchmark on a bare GPU machine, one without Caffe's build dependencies.
# Built here, where there is no GPU: nvcc is enough.
#
#   bash tools/gpu_bundle.sh [OUT_DIR]         (default: build/gpu_bundle)
#   bash OUT_DIR/run.sh [RESULTS_DIR]           (on the GPU machine)
#
# What goes in, from the CUDA tree that build_caffe.sh --cuda builds (one CUDA
# build serves both; native code for sm_75..sm_90 and compute_90 PTX):
#   lib/libirgcheck.so  the pieces of Caffe our layers need (blob, syncedmem,
#                       common, layer, math functions, caffe.pb) and our four
#                       layers, with OpenBLAS linked in statically (its BLAS
#                       part only; no OpenCV, LevelDB, LMDB, HDF5 or Boost
#                       libraries beyond boost_thread are used by these pieces)
#   bin/irg_gtests      our layers' gtests (Caffe's gtest main)
#   bin/irg_gpu_bench   gpu_check/irg_gpu_bench.cpp
#   lib/*.so.*          glog, gflags, libunwind, liblzma, protobuf, zlib,
#                       boost_thread: everything else they load, except libc,
#                       libstdc++ and libgcc_s (the system's) and the CUDA
#                       runtime, cuBLAS and cuRAND (found by run.sh at run time
#                       from the system's CUDA or PyPI's nvidia-* wheels)
#   run.sh, report.py, torch_bench.py, python/  the driver and its helpers
# Binaries carry DT_RPATH $ORIGIN/../lib (libraries $ORIGIN): no path from
# this machine.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$REPO/build/gpu_bundle}
LIMIT_MIB=48
die() { echo "gpu_bundle: error: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }
command -v nvcc > /dev/null || die "needs nvcc on PATH (the CUDA toolkit)"

step "The CUDA tree (tools/build_caffe.sh --with-tests --cuda; cached)"
bash "$REPO/tools/build_caffe.sh" --with-tests --cuda | tail -3
TREE=$(cd "$REPO/.caffe-cuda" && pwd -P)
B=$TREE/.build_release
CUDA_LIBS=$(cat "$TREE/.irg-ld-library-path")
NVCC=$(command -v nvcc)
CUDA_DIR=$(cd "$("$NVCC" --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')" && pwd)
CUDART_DIR=$(dirname "$(find "$CUDA_DIR"/lib64 "$CUDA_DIR"/lib "$CUDA_DIR"/targets/*/lib \
  -maxdepth 1 -name 'libcudart.so' 2>/dev/null | head -1)")
[ -f "$CUDART_DIR/libcudart.so" ] || die "no libcudart.so under $CUDA_DIR"
multiarch=$(gcc -print-multiarch)
OPENBLAS_A=/usr/lib/$multiarch/openblas-pthread/libopenblas.a
[ -f "$OPENBLAS_A" ] || die "no $OPENBLAS_A (Debian's libopenblas-pthread-dev)"

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib" "$STAGE/python"
INC=(-I"$TREE/include" -I"$B/src" -I"$CUDA_DIR/include" -I"$(dirname "$CUDA_LIBS")/include"
     -I"/usr/include/$multiarch/openblas-pthread")
LINK_CUDA=(-L"$CUDART_DIR" -L"$CUDA_LIBS" -lcudart -lcublas -lcurand)
RPATH_BIN=(-Wl,--disable-new-dtags -Wl,-rpath,'$ORIGIN/../lib')

step "lib/libirgcheck.so: Caffe's pieces, our layers, OpenBLAS (static)"
OBJS=()
for o in blob common syncedmem layer util/math_functions util/benchmark proto/caffe.pb \
         layers/loss_layer layers/batch_euclidean_map_layer layers/batch_euclidean_vector_layer \
         layers/triplet_relation_loss_layer layers/local_center_kd_loss_layer; do
  OBJS+=("$B/src/caffe/$o.o")
done
for o in util/math_functions layers/batch_euclidean_map_layer layers/batch_euclidean_vector_layer \
         layers/triplet_relation_loss_layer layers/local_center_kd_loss_layer; do
  OBJS+=("$B/cuda/src/caffe/$o.o")
done
for o in "${OBJS[@]}"; do [ -f "$o" ] || die "missing object $o (is the CUDA tree built?)"; done
g++ -shared -o "$STAGE/lib/libirgcheck.so" "${OBJS[@]}" \
  -Wl,--no-undefined -Wl,--exclude-libs,libopenblas.a -Wl,--disable-new-dtags -Wl,-rpath,'$ORIGIN' \
  "$OPENBLAS_A" "${LINK_CUDA[@]}" -lglog -lgflags -lprotobuf -lboost_thread -lboost_system \
  -lpthread -lm

step "bin/irg_gtests: our layers' gtests with Caffe's gtest main"
TESTS=()
for t in batch_euclidean_map_layer batch_euclidean_vector_layer triplet_relation_loss_layer \
         local_center_kd_loss_layer; do
  TESTS+=("$B/src/caffe/test/test_$t.o")
done
for o in "${TESTS[@]}" "$B/src/gtest/gtest-all.o"; do
  [ -f "$o" ] || die "missing object $o (is the CUDA tree's test binary built?)"
done
# Compiled as Caffe's Makefile compiles it into test_all.testbin.
g++ -pthread -fPIC -O2 -DCAFFE_VERSION=1.0.0 -DNDEBUG -c "${INC[@]}" -I"$TREE/src" \
  "$TREE/src/caffe/test/test_caffe_main.cpp" -o "$STAGE/test_caffe_main.o"
g++ -o "$STAGE/bin/irg_gtests" "$STAGE/test_caffe_main.o" "${TESTS[@]}" "$B/src/gtest/gtest-all.o" \
  -L"$STAGE/lib" -lirgcheck "${RPATH_BIN[@]}" "${LINK_CUDA[@]}" -lglog -lgflags -lprotobuf \
  -lboost_system -lpthread

step "bin/irg_gpu_bench: gpu_check/irg_gpu_bench.cpp"
g++ -std=c++17 -O2 "${INC[@]}" -DNDEBUG "$REPO/gpu_check/irg_gpu_bench.cpp" \
  -o "$STAGE/bin/irg_gpu_bench" -L"$STAGE/lib" -lirgcheck "${RPATH_BIN[@]}" "${LINK_CUDA[@]}" \
  -lglog -lgflags -lprotobuf -lboost_system -ldl -lpthread

step "The shared libraries they load (all but libc, libstdc++, libgcc_s and CUDA's)"
SYSTEM_RE='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s)\.'
CUDA_RE='^(libcudart|libcublas|libcublasLt|libcurand|libcupti|libcuda)\.'
for _ in 1 2 3; do  # until closed: each copied library may bring others
  for elf in "$STAGE"/bin/* "$STAGE"/lib/*; do
    LD_LIBRARY_PATH="$STAGE/lib:$CUDA_LIBS:$CUDART_DIR" ldd "$elf" | awk '$3 ~ /^\// {print $1, $3}' |
      while read -r name path; do
        if ! [[ $name =~ $SYSTEM_RE || $name =~ $CUDA_RE ]] && [ ! -e "$STAGE/lib/$name" ]; then
          cp -L "$path" "$STAGE/lib/$name"
        fi
      done
  done
done
strip --strip-unneeded "$STAGE"/bin/* "$STAGE"/lib/*
rm -f "$STAGE/test_caffe_main.o"

step "The driver"
cp "$REPO/gpu_check/run.sh" "$REPO/gpu_check/report.py" "$REPO/gpu_check/torch_bench.py" "$STAGE/"
cp "$REPO/pyirg/bench/torch_forms.py" "$STAGE/python/torch_forms.py"
cp "$REPO/pyirg/blas.py" "$STAGE/python/blas.py"
{
  echo "irg-caffe portable GPU check"
  dirty=""
  if git -C "$REPO" status --porcelain 2>/dev/null | grep -q .; then
    dirty=" (with uncommitted changes)"
  fi
  echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$dirty"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version | head -1)"
  echo "nvcc: $("$NVCC" --version | tail -1)"
  echo "archs: $(grep '^CUDA_ARCH' "$TREE/Makefile.config" | sed 's/CUDA_ARCH := //')"
  echo "run: bash run.sh [RESULTS_DIR]"
} > "$STAGE/BUILD_INFO.txt"

size=$(du -sb "$STAGE" | cut -f1)
mib=$(( (size + 1048575) / 1048576 ))
[ "$size" -le $((LIMIT_MIB * 1048576)) ] || die "the bundle is $mib MiB, over the $LIMIT_MIB MiB limit"
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
cp -a "$STAGE" "$OUT"
chmod 755 "$OUT"
step "Done: $OUT ($mib MiB of at most $LIMIT_MIB)"
echo "On a GPU machine:  bash $OUT/run.sh [RESULTS_DIR]"
