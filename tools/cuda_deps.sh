#!/usr/bin/env bash
# Make cuBLAS, cuRAND and NCCL available to Caffe's CUDA build when the CUDA
# toolkit on this machine lacks them: PyPI's nvidia-cublas / nvidia-curand /
# nvidia-nccl-cu13 wheels carry the headers and the shared libraries (NCCL: Caffe's
# multi-GPU training, USE_NCCL). They are downloaded once into the cache and
# unpacked (headers always, libraries with --libs); the folder is printed last.
#
#   bash tools/cuda_deps.sh [--libs]      -> prints $IRG_CACHE/cuda-deps
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${IRG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/irg-caffe}
PY=${PYTHON:-$REPO/.venv/bin/python}
OUT=$CACHE/cuda-deps
WANT_LIBS=0
[ "${1:-}" = "--libs" ] && WANT_LIBS=1

WHEELS="nvidia-cublas>=13,<14 nvidia-curand>=10.4,<11 nvidia-nccl-cu13>=2.18,<3"
if [ "$(cat "$OUT/.wheels" 2>/dev/null)" != "$WHEELS" ]; then
  echo "cuda_deps: fetching the nvidia-cublas / nvidia-curand / nvidia-nccl-cu13 wheels from PyPI" >&2
  rm -rf "$OUT" && mkdir -p "$OUT/wheels"
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps -d "$OUT/wheels" $WHEELS 2>&1 | grep -v '^WARNING' >&2 || true
  ls "$OUT"/wheels/nvidia_cublas-*.whl "$OUT"/wheels/nvidia_curand-*.whl \
    "$OUT"/wheels/nvidia_nccl_cu13-*.whl > /dev/null
  echo "$WHEELS" > "$OUT/.wheels"
fi
unpack() {  # unpack KIND: the wheel members under */KIND/ into $OUT/KIND
  "$PY" - "$OUT" "$1" <<'EOF'
import sys, zipfile
from pathlib import Path
out, kind = Path(sys.argv[1]), sys.argv[2]
(out / kind).mkdir(parents=True, exist_ok=True)
for wheel in sorted((out / "wheels").glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if f"/{kind}/" in name and not name.endswith("/"):
                # The path below include/ or lib/ (nccl_device/*.h keep their folder).
                target = out / kind / name.split(f"/{kind}/", 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
                if kind == "lib" and ".so." in target.name:  # libfoo.so.13 -> libfoo.so
                    link = out / kind / (target.name.split(".so.")[0] + ".so")
                    link.unlink(missing_ok=True)
                    link.symlink_to(target.name)
EOF
  touch "$OUT/.$1"
}
[ -f "$OUT/.include" ] || unpack include
if [ "$WANT_LIBS" = 1 ] && [ ! -f "$OUT/.lib" ]; then
  echo "cuda_deps: unpacking the cuBLAS / cuRAND / NCCL libraries (about 1 GB)" >&2
  unpack lib
fi
ls "$OUT/include/cublas_v2.h" "$OUT/include/curand.h" "$OUT/include/nccl.h" > /dev/null
echo "$OUT"
