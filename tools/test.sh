#!/usr/bin/env bash
# The project's test command (README, .ci/run): builds everything it needs from
# nothing (Debian packages, the virtual environment, Caffe with the IRG layers
# and Caffe's test binary; cached after the first run), then runs every test:
# our gtests and Caffe's own CPU suite in the drop-in tree, the plugin build,
# the CUDA compile check, pycaffe, the PyTorch reference, the tools, ruff.
#
#   bash tools/test.sh [pytest arguments...]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# With nvcc, also the CUDA build, so that the GPU gtests are built (they run where a GPU is).
if command -v nvcc > /dev/null; then
  bash tools/build_caffe.sh --with-tests --cuda
else
  bash tools/build_caffe.sh --with-tests
fi
# shellcheck disable=SC1091
source tools/env.sh
export GLOG_minloglevel=${GLOG_minloglevel:-2}
export MPLBACKEND=Agg
echo
echo "==> pytest"
python -m pytest -ra "$@"
