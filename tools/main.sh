#!/usr/bin/env bash
# The main job, from nothing: set up (tools/build_caffe.sh: Debian packages, .venv,
# Caffe with the IRG layers; cached), then distill on scikit-learn's digits
# (no download): teacher ResNet-20, students baseline / IRG / IRG-t / MTK over
# 24 paired seeds, trainings in parallel (one per core), a table with paired
# confidence intervals, plots and weights in out/digits.
#
#   bash tools/main.sh [pyirg main options, e.g. --out DIR --seeds 0 1 2 3]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
bash tools/build_caffe.sh
# shellcheck disable=SC1091
source tools/env.sh
export GLOG_minloglevel=${GLOG_minloglevel:-2}
export MPLBACKEND=Agg
python -m pyirg main "$@"
