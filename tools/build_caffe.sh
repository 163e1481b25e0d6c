#!/usr/bin/env bash
# Build Caffe (CPU_ONLY: libcaffe, the `caffe` tool, pycaffe) with the IRG layers
# dropped in, on a fresh Debian or Ubuntu machine. One command; see README.md.
#
#   bash tools/build_caffe.sh [--caffe-root DIR] [--with-tests] [--cuda] [--jobs N]
#
# Without --caffe-root, Caffe's source is Debian's `caffe` source package and two
# trees are built under the cache ($IRG_CACHE, default ~/.cache/irg-caffe):
#   base/    stock Caffe + the caffe.proto patch only (what the plugin build needs)
#   dropin/  base + our layers and tests, built with `make` exactly as the README's
#            drop-in procedure says; this is the Caffe everything else uses.
#   cuda/    (--cuda, needs nvcc) the drop-in tree built with CUDA and NCCL
#            instead of CPU_ONLY, native code for sm_75..sm_90 plus compute_90
#            PTX, with pycaffe (caffe.NCCL: pyirg train --gpus) and a test binary
#            of our gtests (GPU and CPU cases; run where a GPU is).
#            tools/gpu_bundle.sh packages its objects into the portable check.
# All are keyed by everything that goes into them, so a second run with nothing
# changed only checks the stamps. With --caffe-root, the drop-in procedure runs on
# the user's own tree, in place.
#
# It also makes the project's virtual environment (.venv) and installs pyirg into
# it, and points .caffe (and .caffe-base) in the checkout at the trees it built;
# tools/env.sh reads those links.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${IRG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/irg-caffe}
JOBS=$(nproc)
USER_ROOT=""
WITH_TESTS=0
WITH_CUDA=0
CAFFE_SRC_VERSION=1.0.0+git20180821.99bd997-8
# Bump when the recipe below changes in a way that alters the built trees.
RECIPE=3

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --caffe-root) USER_ROOT=$(cd "$2" && pwd); shift 2 ;;
    --with-tests) WITH_TESTS=1; shift ;;
    --cuda) WITH_CUDA=1; shift ;;
    --jobs) JOBS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "build_caffe: unknown option $1" >&2; usage 2 ;;
  esac
done

START=$SECONDS
step() { printf '\n==> [%s +%ds] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
die() { echo "build_caffe: error: $*" >&2; exit 1; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# --- 1. Debian build dependencies ---------------------------------------------
PY_MINOR=$(python3 -c 'import sys; print(sys.version_info[1])')
APT_PKGS="build-essential dpkg-dev libboost-system-dev libboost-thread-dev
  libboost-filesystem-dev libboost-python-dev libgflags-dev libgoogle-glog-dev
  libhdf5-dev libleveldb-dev liblmdb-dev libopenblas-dev libopencv-dev
  libprotobuf-dev libprotoc-dev libsnappy-dev protobuf-compiler python3-dev python3-venv"
step "Debian build dependencies"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing="$missing $p"
done
missing=$(echo "$missing" | tr ' ' '\n' | sort -u | grep -v '^$' || true)
if [ -n "$missing" ]; then
  echo "installing: $(echo $missing)"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
else
  echo "all present"
fi

# --- 2. the project's virtual environment ---------------------------------------
step "Python virtual environment ($REPO/.venv)"
VENV=$REPO/.venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
venv_key=$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.irg-stamp" 2>/dev/null)" != "$venv_key" ]; then
  # torch==2.13.0 is pinned in pyproject.toml: a CPU build where one is on disk.
  if ! { "$VENV/bin/pip" install -q --upgrade pip &&
         "$VENV/bin/pip" install -q -e "$REPO[dev]"; } > "$VENV/.irg-pip.log" 2>&1; then
    tail -30 "$VENV/.irg-pip.log" >&2
    die "pip install failed (log: $VENV/.irg-pip.log)"
  fi
  echo "$venv_key" > "$VENV/.irg-stamp"
  echo "installed pyirg and its dependencies"
else
  echo "up to date"
fi
PY=$VENV/bin/python
PY_INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PY_LIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
NP_VERSION=$("$PY" -c 'import numpy; print(numpy.__version__)')
# pycaffe compiles against numpy's C headers: copy them into the cache so the
# build (and its key) does not depend on where this checkout's .venv lives.
NP_INC=$CACHE/numpy-$NP_VERSION/include
if [ ! -f "$NP_INC/numpy/arrayobject.h" ]; then
  mkdir -p "$(dirname "$NP_INC")"
  cp -r "$("$PY" -c 'import numpy; print(numpy.get_include())')" "$NP_INC"
fi

# --- helpers ---------------------------------------------------------------------
makefile_config() {
  # Caffe's Makefile.config for a CPU_ONLY build against Debian's libraries.
  local multiarch
  multiarch=$(gcc -print-multiarch)
  cat <<EOF
# Written by irg-caffe tools/build_caffe.sh
CPU_ONLY := 1
BLAS := open
BLAS_INCLUDE := /usr/include/$multiarch/openblas-pthread
OPENCV_VERSION := 3
PYTHON_LIBRARIES := boost_python3$PY_MINOR
PYTHON_INCLUDE := $PY_INC $NP_INC
PYTHON_LIB := $PY_LIB
INCLUDE_DIRS := \$(PYTHON_INCLUDE) /usr/local/include /usr/include/hdf5/serial /usr/include/opencv4
LIBRARY_DIRS := \$(PYTHON_LIB) /usr/local/lib /usr/lib /usr/lib/$multiarch/hdf5/serial
BUILD_DIR := build
DISTRIBUTE_DIR := distribute
TEST_GPUID := 0
Q ?= @
EOF
}

protobuf_fix() {
  # protobuf >= 3.21: CodedInputStream::SetTotalBytesLimit takes one argument.
  sed -i 's/SetTotalBytesLimit(kProtoReadBytesLimit, [0-9]*)/SetTotalBytesLimit(kProtoReadBytesLimit)/' \
    "$1/src/caffe/util/io.cpp"
}

run_make() {
  # Stream make's one-line-per-file progress, numbered; keep the full log.
  local root=$1; shift
  local log=$root/.irg-make.log
  echo "make -j$JOBS $* (log: $log)"
  set +o pipefail
  (cd "$root" && make -j"$JOBS" "$@") 2>&1 | tee "$log" |
    grep --line-buffered -E '^(CXX|NVCC|LD|AR|PROTOC|TOUCH)' |
    awk '{ printf "  [%3d] %s\n", ++n, $0; fflush() }'
  local status=${PIPESTATUS[0]}
  set -o pipefail
  if [ "$status" != 0 ]; then
    grep -E 'error|Error' "$log" | head -20 >&2
    tail -20 "$log" >&2
    die "make $* failed in $root (full log: $log)"
  fi
}

hash_files() { (cd "$REPO" && find "$@" -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

LAYERS_KEY=$(hash_files caffe_layers tools/install_layers.py)
TEST_BIN=.build_release/test/test_all.testbin
BUILD_TARGETS=(all pycaffe)

build_dropin() {
  # The README's drop-in procedure on tree $1: install layers, make all pycaffe.
  local root=$1 key=$2
  python3 "$REPO/tools/install_layers.py" "$root"
  if [ "$(cat "$root/.irg-stamp-lib" 2>/dev/null)" = "$key" ] &&
     [ -f "$root/.build_release/lib/libcaffe.so" ]; then
    echo "cached build is current (key $key)"
  else
    run_make "$root" "${BUILD_TARGETS[@]}"
    echo "$key" > "$root/.irg-stamp-lib"
  fi
  if [ "$WITH_TESTS" = 1 ]; then
    step "Caffe's test binary with our tests in it ($root/$TEST_BIN)"
    if [ "$(cat "$root/.irg-stamp-test" 2>/dev/null)" = "$key" ] && [ -x "$root/$TEST_BIN" ]; then
      echo "cached test binary is current"
    else
      run_make "$root" "$TEST_BIN"
      echo "$key" > "$root/.irg-stamp-test"
    fi
  fi
}

# The smoke check: pycaffe imports with the layers registered, and reports the
# OpenBLAS kernel it runs on (chosen from the CPU's flags by pyirg/blas.py unless
# OPENBLAS_CORETYPE is already set).
smoke_check() {  # smoke_check ROOT
  step "Smoke check: pycaffe from $1"
  PYTHONPATH="$1/python${PYTHONPATH:+:$PYTHONPATH}" \
    LD_LIBRARY_PATH="$1/.build_release/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    GLOG_minloglevel=2 "$PY" -c '
import pyirg, caffe
from pyirg.cli import version_line
assert "BatchEuclideanMap" in caffe.layer_type_list(), "IRG layers not registered"
print(version_line())' || die "pycaffe from $1 does not import with the IRG layers"
}

# --- 3a. a user's own tree --------------------------------------------------------
if [ -n "$USER_ROOT" ]; then
  step "Drop-in build in $USER_ROOT"
  [ -f "$USER_ROOT/src/caffe/proto/caffe.proto" ] || die "$USER_ROOT is not a Caffe source tree"
  protobuf_fix "$USER_ROOT"
  [ -f "$USER_ROOT/Makefile.config" ] || makefile_config > "$USER_ROOT/Makefile.config"
  build_dropin "$USER_ROOT" "user-$LAYERS_KEY"
  ln -sfn "$USER_ROOT" "$REPO/.caffe"
  smoke_check "$USER_ROOT"
  step "Done in $((SECONDS - START)) s. Caffe with the IRG layers: $USER_ROOT"
  echo "Use it from bash with:  source tools/env.sh"
  exit 0
fi

# --- 3b. Debian's caffe source package ----------------------------------------------
mkdir -p "$CACHE/src"
exec 9> "$CACHE/.lock"
flock 9 || die "cannot lock $CACHE"
SRC=$CACHE/src/caffe-${CAFFE_SRC_VERSION%-*}
step "Caffe source ($CAFFE_SRC_VERSION, Debian source package)"
if [ ! -f "$SRC/.irg-complete" ]; then
  if ! apt-cache showsrc caffe 2>/dev/null | grep -q "^Version: $CAFFE_SRC_VERSION$"; then
    "$REPO/tools/add_caffe_source.sh"
    $SUDO apt-get update -qq
  fi
  rm -rf "$SRC" "$CACHE/src/unpack"
  mkdir -p "$CACHE/src/unpack"
  (cd "$CACHE/src/unpack" && apt-get source -qq "caffe=$CAFFE_SRC_VERSION" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  mv "$CACHE/src/unpack/caffe-${CAFFE_SRC_VERSION%-*}" "$SRC" || die "apt-get source caffe did not unpack"
  rm -rf "$CACHE/src/unpack"
  touch "$SRC/.irg-complete"
  echo "unpacked into $SRC"
else
  echo "cached: $SRC"
fi

BASE_KEY=$( {
  echo "recipe $RECIPE source $CAFFE_SRC_VERSION numpy $NP_VERSION py 3.$PY_MINOR"
  makefile_config
  cat "$REPO/caffe_layers/proto/irg_param.proto" "$REPO/caffe_layers/proto/relation_param.proto"
  sha256sum < "$REPO/tools/install_layers.py"
} | sha256sum | cut -c1-16)
BUILD=$CACHE/build-$BASE_KEY
BASE=$BUILD/base
DROPIN=$BUILD/dropin

step "Base tree: stock Caffe + caffe.proto patch ($BASE)"
if [ "$(cat "$BASE/.irg-stamp-base" 2>/dev/null)" = "$BASE_KEY" ]; then
  echo "cached build is current (key $BASE_KEY)"
else
  rm -rf "$BUILD"
  mkdir -p "$BUILD"
  cp -a "$SRC" "$BASE"
  protobuf_fix "$BASE"
  makefile_config > "$BASE/Makefile.config"
  python3 "$REPO/tools/install_layers.py" --proto-only "$BASE"
  echo "building Caffe from scratch: about 6 minutes on 2 cores"
  run_make "$BASE" all pycaffe
  echo "$BASE_KEY" > "$BASE/.irg-stamp-base"
fi

step "Drop-in tree: base + IRG layers ($DROPIN)"
if [ ! -f "$DROPIN/.irg-stamp-base" ]; then
  rm -rf "$DROPIN"
  # A copy with mtimes kept: make then rebuilds only what our files touch.
  cp -a "$BASE" "$DROPIN"
fi
FULL_KEY=$BASE_KEY-$LAYERS_KEY
build_dropin "$DROPIN" "$FULL_KEY"

if [ "$WITH_CUDA" = 1 ]; then
  NVCC=$(command -v nvcc) || die "--cuda needs nvcc on PATH"
  # The toolkit's root as nvcc reports it (nvcc may be a wrapper script).
  CUDA_DIR=$(cd "$("$NVCC" --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')" && pwd)
  DEPS=$(bash "$REPO/tools/cuda_deps.sh" --libs)
  CUDA_TREE=$BUILD/cuda
  CUDA_ARCHS=""
  for sm in 75 80 86 89 90; do
    CUDA_ARCHS="$CUDA_ARCHS -gencode arch=compute_$sm,code=sm_$sm"
  done
  CUDA_ARCHS="${CUDA_ARCHS# } -gencode arch=compute_90,code=compute_90"
  cuda_config() {
    makefile_config | grep -v '^CPU_ONLY'
    echo "CUDA_DIR := $CUDA_DIR"
    echo "# Native code for every current architecture (Turing to Hopper), plus"
    echo "# compute_90 PTX that newer GPUs compile when they load it."
    echo "CUDA_ARCH := $CUDA_ARCHS"
    echo "# Multi-GPU training (caffe train -gpu all, pycaffe's caffe.NCCL)."
    echo "USE_NCCL := 1"
    echo "INCLUDE_DIRS += $DEPS/include"
    echo "LIBRARY_DIRS += $DEPS/lib"
  }
  # Bump when the CUDA tree's recipe changes (its key has no other view of it).
  CUDA_RECIPE=3
  CUDA_KEY=$( { echo "$FULL_KEY cuda-recipe $CUDA_RECIPE"; "$NVCC" --version | tail -n 2; cuda_config; } |
    sha256sum | cut -c1-16)
  step "CUDA tree: the drop-in build with CUDA, for the GPU gtests ($CUDA_TREE)"
  if [ "$(cat "$CUDA_TREE/.irg-stamp-cuda" 2>/dev/null)" = "$CUDA_KEY" ]; then
    echo "cached build is current (key $CUDA_KEY)"
  else
    if [ ! -f "$CUDA_TREE/Makefile.config" ] ||
       ! cuda_config | cmp -s - "$CUDA_TREE/Makefile.config"; then
      rm -rf "$CUDA_TREE"
      cp -a "$SRC" "$CUDA_TREE"
      protobuf_fix "$CUDA_TREE"
      # CUDA 13 dropped cudaDeviceProp fields that Caffe only prints (DeviceQuery
      # and the platform test): drop those statements.
      perl -0pi -e 's/\n\s*(LOG\(INFO\) << |printf\()"(Clock rate|Concurrent copy and execution|Kernel execution timeout):[^;]*;//g' \
        "$CUDA_TREE/src/caffe/common.cpp" "$CUDA_TREE/src/caffe/test/test_platform.cpp"
      # pycaffe's NCCL.new_uid() cuts the 128-byte NCCL id at its first NUL byte
      # (PyBytes_FromString), so the ranks would join different sessions: keep
      # all of it (upstream pull request 6661).
      sed -i 's/PyBytes_FromString(uid.c_str())/PyBytes_FromStringAndSize(uid.data(), uid.size())/' \
        "$CUDA_TREE/python/caffe/_caffe.cpp"
      cuda_config > "$CUDA_TREE/Makefile.config"
      echo "building Caffe with CUDA from scratch: about 15 minutes on 2 cores"
    fi
    python3 "$REPO/tools/install_layers.py" "$CUDA_TREE"
    # The CUDA tree's test binary holds our tests only: Caffe's own suite runs
    # in the drop-in tree, and compiling it again here would double the build.
    for t in "$CUDA_TREE"/src/caffe/test/test_*.c*; do
      case "$(basename "$t")" in
        test_caffe_main.cpp) ;;
        *) [ -f "$REPO/caffe_layers/src/caffe/test/$(basename "$t")" ] || rm -f "$t" ;;
      esac
    done
    # The library, the caffe tool (caffe train -gpu all), pycaffe and our tests: not
    # Caffe's other tools and examples, which the CPU tree already builds.
    run_make "$CUDA_TREE" lib .build_release/tools/caffe.bin pycaffe "$TEST_BIN"
    echo "$DEPS/lib" > "$CUDA_TREE/.irg-ld-library-path"
    echo "$CUDA_KEY" > "$CUDA_TREE/.irg-stamp-cuda"
  fi
  ln -sfn "$CUDA_TREE" "$REPO/.caffe-cuda"
fi

ln -sfn "$DROPIN" "$REPO/.caffe"
ln -sfn "$BASE" "$REPO/.caffe-base"
smoke_check "$DROPIN"
# Builds under other keys that no run has used for a week are stale. (Other
# checkouts may share this cache, so recent ones stay.)
touch "$BUILD/.irg-last-used"
find "$CACHE" -maxdepth 1 -name 'build-*' ! -path "$BUILD" -type d |
  while read -r old; do
    if [ -z "$(find "$old/.irg-last-used" -mtime -7 2>/dev/null)" ]; then
      echo "removing stale build $old"
      rm -rf "$old"
    fi
  done
step "Done in $((SECONDS - START)) s. Caffe with the IRG layers: $DROPIN"
echo "  caffe tool: $DROPIN/.build_release/tools/caffe"
echo "  pycaffe:    $DROPIN/python"
echo "Use it from bash with:  source tools/env.sh"
