#!/usr/bin/env bash
# Make cuBLAS and cuRAND available to Caffe's CUDA build when the CUDA toolkit on
# this machine lacks them: PyPI's nvidia-cublas / nvidia-curand wheels carry the
# headers and the shared libraries. They are downloaded once into the cache and
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

if [ ! -f "$OUT/.wheels" ]; then
  echo "cuda_deps: fetching the nvidia-cublas / nvidia-curand wheels from PyPI" >&2
  rm -rf "$OUT" && mkdir -p "$OUT/wheels"
  "$PY" -m pip download -q --no-deps -d "$OUT/wheels" \
    "nvidia-cublas>=13,<14" "nvidia-curand>=10.4,<11" 2>&1 | grep -v '^WARNING' >&2 || true
  ls "$OUT"/wheels/nvidia_cublas-*.whl "$OUT"/wheels/nvidia_curand-*.whl > /dev/null
  touch "$OUT/.wheels"
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
                target = out / kind / Path(name).name
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
  echo "cuda_deps: unpacking the cuBLAS / cuRAND libraries (about 700 MB)" >&2
  unpack lib
fi
ls "$OUT/include/cublas_v2.h" "$OUT/include/curand.h" > /dev/null
echo "$OUT"
