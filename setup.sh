#!/usr/bin/env bash
# Creates .venv in the repository root and installs mae_jax into it.
#   bash setup.sh          runtime dependencies (pretraining, evaluation)
#   bash setup.sh --test   plus the test dependencies (torch CPU, transformers, pytest)
# Idempotent: a second run only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"

requirements=requirements.txt
if [[ "${1:-}" == "--test" ]]; then
  requirements=requirements-test.txt
elif [[ $# -gt 0 ]]; then
  echo "usage: bash setup.sh [--test]" >&2
  exit 2
fi

python=${PYTHON:-python3}
# A name that does not run (pyenv's shim for a version that is installed but
# not selected prints a page, then fails) is named as such, not as "too old".
if ! "$python" -c 'pass' >/dev/null 2>&1; then
  echo "PYTHON=$python does not run; set PYTHON to an interpreter's path (e.g. \$(pyenv prefix 3.12.1)/bin/python)" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "mae_jax needs Python >= 3.10; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
# Skip pip entirely when everything is already installed (fast re-runs).
stamp=".venv/.installed-$(cat "$requirements" requirements.txt requirements-tfds.txt requirements-tpu-aot.txt requirements-gpu-aot.txt pyproject.toml | cksum | cut -d' ' -f1)"
if [[ ! -f "$stamp" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$requirements"
  # setuptools announces every editable install with a multi-line warning
  # (whatever the strategy); it says nothing about this project: hush it.
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet --no-deps -e .
  if [[ "$requirements" == requirements-test.txt ]]; then
    # libtpu for the AOT tests, outside site-packages (see requirements-tpu-aot.txt).
    .venv/bin/python -m pip install --quiet --no-deps --upgrade --target .venv/libtpu-aot \
      -r requirements-tpu-aot.txt
    # The CUDA plugin for the GPU AOT tests, likewise (see requirements-gpu-aot.txt).
    .venv/bin/python -m pip install --quiet --no-deps --upgrade --target .venv/gpu-aot \
      -r requirements-gpu-aot.txt
  fi
  touch "$stamp"
fi
# The native JPEG crop decoder (mae_jax/data/crop_resize.c): optional, about
# 2x the input rate with the same pixels; without a C compiler or libjpeg's
# headers mae_jax falls back to simplejpeg + Pillow and says so.
if [[ ! -f mae_jax/data/_crop_resize.so || mae_jax/data/crop_resize.c -nt mae_jax/data/_crop_resize.so ]]; then
  .venv/bin/python -m mae_jax.build_native || true
fi
echo "mae_jax is installed in .venv ($requirements)."
