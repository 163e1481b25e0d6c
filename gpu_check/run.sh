#!/usr/bin/env bash
# The portable GPU check of irg-caffe's layers (built by tools/gpu_bundle.sh).
# On a bare GPU machine (x86-64 Linux, NVIDIA driver, CUDA 13 runtime
# libraries from the system or from PyPI's nvidia-* wheels, glibc >= 2.36,
# python3 with torch), nothing to install:
#
#   bash run.sh [RESULTS_DIR]       (default: ./irg-gpu-check-DATE)
#
# 1. finds libcudart.so.13, libcublas(Lt).so.13 and libcurand.so.10 (CUPTI,
#    for counting launches, if there): $IRG_CUDA_LIBS (colon-separated
#    folders), LD_LIBRARY_PATH, the system's CUDA, python3's nvidia-* wheels;
# 2. runs our gtests: CPU and GPU cases, GPU against CPU (gtests.log);
# 3. times both layers on the GPU (irg_gpu_bench) and, when torch has CUDA,
#    PyTorch autograd of the same computation (torch_bench.py);
# 4. prints one table last and writes summary.md, with the details, into
#    RESULTS_DIR.
# Exit status: 0 all passed, 1 a gtest or a step failed, 3 CUDA libraries
# missing, 77 no GPU (nothing run).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$PWD/irg-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
NEEDED="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10"
PY=$(command -v python3 || true)

candidate_dirs() {
  local IFS=:
  for d in ${IRG_CUDA_LIBS:-} ${LD_LIBRARY_PATH:-}; do [ -n "$d" ] && echo "$d"; done
  unset IFS
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda-13*/lib64 \
           /usr/local/cuda-13*/lib /usr/local/cuda*/targets/x86_64-linux/lib \
           /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do
    [ -d "$d" ] && echo "$d"
  done
  if [ -n "$PY" ]; then  # site-packages/nvidia/*/lib (cu13/lib, cublas/lib, ...)
    "$PY" - <<'EOF' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
for root in (spec.submodule_search_locations or []) if spec else []:
    for sub in sorted(os.listdir(root)):
        lib = os.path.join(root, sub, "lib")
        if os.path.isdir(lib):
            print(lib)
EOF
  fi
}

DIRS=$(candidate_dirs | awk '!seen[$0]++')
LIBPATH=""
missing=""
for lib in $NEEDED libcupti.so.13; do
  found=""
  for d in $DIRS; do
    if [ -e "$d/$lib" ]; then found=$d; break; fi
  done
  if [ -n "$found" ]; then
    case ":$LIBPATH:" in *":$found:"*) ;; *) LIBPATH=${LIBPATH:+$LIBPATH:}$found ;; esac
  elif [ "$lib" != libcupti.so.13 ]; then
    missing="$missing $lib"
  fi
done
if [ -n "$missing" ]; then
  echo "irg gpu check: missing CUDA 13 libraries:$missing"
  echo "  looked in: $(echo "$DIRS" | tr '\n' ' ')"
  echo "  point IRG_CUDA_LIBS at the folders that hold them (or pip install torch with CUDA 13)"
  exit 3
fi
export LD_LIBRARY_PATH=$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "CUDA libraries from: $LIBPATH" | tee "$OUT/environment.txt"

probe=$("$HERE/bin/irg_gpu_bench" --probe 2>&1)
status=$?
if [ "$status" = 77 ]; then
  echo "irg gpu check: $probe"
  echo "irg gpu check: no GPU here, nothing run (exit 77)"
  exit 77
elif [ "$status" != 0 ]; then
  echo "irg gpu check: the probe failed (exit $status): $probe"
  exit 1
fi
{
  echo "$probe"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) threads"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  cat "$HERE/BUILD_INFO.txt"
} >> "$OUT/environment.txt"
echo "$probe"

# The CPU cases' OpenBLAS on the best kernel of this CPU (pyirg/blas.py).
if [ -n "$PY" ] && [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  eval "$(PYTHONPATH=$HERE/python "$PY" -c 'import blas; print(blas.export_line())' 2>/dev/null)"
fi
echo "OpenBLAS kernel: ${OPENBLAS_CORETYPE:-chosen by OpenBLAS}" >> "$OUT/environment.txt"

failed=0
echo "==> gtests (log: $OUT/gtests.log)"
GLOG_minloglevel=1 "$HERE/bin/irg_gtests" > "$OUT/gtests.log" 2>&1 || failed=1
grep -E '^\[  (PASSED|FAILED)  \]|tests? from .* ran' "$OUT/gtests.log" | tail -4

echo "==> Caffe layers on the GPU (irg_gpu_bench)"
GLOG_minloglevel=1 "$HERE/bin/irg_gpu_bench" --out "$OUT/caffe_bench.tsv" \
  > "$OUT/caffe_bench.log" 2>&1 || { failed=1; tail -20 "$OUT/caffe_bench.log"; }

if [ -n "$PY" ]; then
  echo "==> PyTorch CUDA autograd of the same computation (torch_bench.py)"
  "$PY" "$HERE/torch_bench.py" --out "$OUT/torch_bench.tsv" > "$OUT/torch_bench.log" 2>&1
  tail -1 "$OUT/torch_bench.log"
  "$PY" "$HERE/report.py" "$OUT" || failed=1
else
  echo "(no python3: PyTorch times and the merged table skipped)"
  cat "$OUT/caffe_bench.log"
fi
exit "$failed"
