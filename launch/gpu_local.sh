#!/usr/bin/env bash
# Pretrain on the NVIDIA GPUs of this machine: one process drives them all.
#
#   launch/gpu_local.sh [--dry-run] install|run [-- MAIN_FLAGS...]
#
#   install  create .venv with the pinned requirements and jax[cuda13] of
#            the same jax version (the project's one GPU path: CUDA 13)
#   run      pretrain; MAIN_FLAGS after -- are passed on,
#            e.g. -- --config.model.dtype=bfloat16 --config.mesh.fsdp=8
#
# Variables (environment):
#   WORKDIR    run directory (local path or gs://)
#   CONFIG     default configs/pretrain.py:vit_base
#   DATA_DIR   TFDS data_dir holding imagenet2012 (not needed for digits configs)
#   GPUS       which GPUs, e.g. 0 (one GPU) or 0,1,2,3; default: all
#   MAX_RERUNS reruns after a resumable exit 75 (launch/resumable.sh), default 3
#
# Every command is printed before it runs; --dry-run only prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
parse_args "$@"

CONFIG=${CONFIG:-configs/pretrain.py:vit_base}
case "$COMMAND" in
  install) ;;
  run)
    need WORKDIR "run directory, e.g. runs/vit_base or gs://BUCKET/mae/vit_base"
    if [[ "$CONFIG" != *digits* && "$CONFIG" != *runlocal* ]]; then
      need DATA_DIR "TFDS data_dir with imagenet2012, e.g. /data/tensorflow_datasets"
    fi
    ;;
  *) usage 2 ;;
esac
check_needed

case "$COMMAND" in
  install)
    run bash setup.sh
    # The CUDA 13 plugin of the very jax setup.sh pinned for this Python
    # (requirements.txt: 0.10.2 on Python 3.10-3.11, the newest on 3.12+,
    # the GPU path's Python).
    jax_version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("jax"))' \
      2>/dev/null || echo "<the jax of requirements.txt>")
    run .venv/bin/pip install -q "jax[cuda13]==$jax_version"
    ;;
  run)
    flags=(--config="$CONFIG" --workdir="$WORKDIR" "${MAIN_FLAGS[@]}")
    [[ -n "${DATA_DIR:-}" ]] && flags+=(--config.data.data_dir="$DATA_DIR")
    visible=()
    [[ -n "${GPUS:-}" ]] && visible=(env CUDA_VISIBLE_DEVICES="$GPUS")
    run launch/resumable.sh "${visible[@]}" .venv/bin/python -m mae_jax.main "${flags[@]}"
    ;;
esac
