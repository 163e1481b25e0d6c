# Source from bash once tools/build_caffe.sh has run:   source tools/env.sh
# Puts the Caffe build with the IRG layers (the `caffe` tool, libcaffe, pycaffe)
# and the project's virtual environment on this shell's paths, so that
# `python -c "import caffe, pyirg"` and `caffe --version` work.
# CAFFE_ROOT may point at another Caffe tree built with the layers.
_irg_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_irg_root=${CAFFE_ROOT:-$(readlink -f "$_irg_repo/.caffe" 2>/dev/null || true)}
if [ -z "$_irg_root" ] || [ ! -f "$_irg_root/python/caffe/_caffe.so" ]; then
  echo "tools/env.sh: no Caffe build found; run: bash tools/build_caffe.sh" >&2
  unset _irg_repo _irg_root _irg_export
  return 1 2>/dev/null || exit 1
fi
export CAFFE_ROOT=$_irg_root
_irg_prepend() {  # _irg_prepend VAR DIR: put DIR first in VAR, once
  case ":${!1:-}:" in *":$2:"*) ;; *) export "$1=$2${!1:+:${!1}}" ;; esac
}
_irg_prepend PYTHONPATH "$CAFFE_ROOT/python"
_irg_prepend LD_LIBRARY_PATH "$CAFFE_ROOT/.build_release/lib"
_irg_prepend PATH "$CAFFE_ROOT/.build_release/tools"
if [ -f "$_irg_repo/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  VIRTUAL_ENV_DISABLE_PROMPT=1 . "$_irg_repo/.venv/bin/activate"
fi
# Caffe's OpenBLAS on the best kernel this CPU supports (pyirg/blas.py); a value already
# set in the environment is left alone.
if ! _irg_export=$(python3 -c 'import pyirg.blas as b; print(b.export_line())' 2>&1); then
  echo "tools/env.sh: cannot choose the BLAS kernel (pyirg not importable): $_irg_export" >&2
  _irg_export=
fi
eval "$_irg_export"
unset -f _irg_prepend
unset _irg_repo _irg_root _irg_export
