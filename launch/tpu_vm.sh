#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM slice: one process per TPU host, same command on all.
#
#   launch/tpu_vm.sh [--dry-run] create|install|run|logs|stop|delete [-- MAIN_FLAGS...]
#
#   create   the slice (QUEUED=1: as a queued resource; SPOT=1: spot capacity)
#   install  copy this working tree to every worker, install Python 3.11, the
#            pinned requirements and jax[tpu] (repeatable: only changes are installed)
#   run      start pretraining on every worker (--worker=all) in the background;
#            the workdir and TFDS data live in the bucket; MAIN_FLAGS after --
#            are passed on, e.g. -- --config.mesh.fsdp=8. A resumable exit 75
#            (preempted, a host lost) is rerun up to MAX_RERUNS times (default 3)
#   logs     follow worker 0's log
#   stop     SIGTERM on every worker: the job saves a checkpoint and exits 75;
#            `run` again resumes from it
#   delete   delete the slice (or the queued resource and its slice)
#
# Variables (environment):
#   PROJECT           Google Cloud project id
#   ZONE              zone with capacity for the accelerator, e.g. us-east5-a
#   TPU_NAME          name of the slice, e.g. mae-vit-large
#   ACCELERATOR_TYPE  e.g. v5p-128, v5litepod-64, v4-128, v6e-64 (create)
#   BUCKET            gs://BUCKET: runs go to BUCKET/mae/RUN_NAME, data is read
#                     from BUCKET/tensorflow_datasets (run)
#   CONFIG            default configs/pretrain.py:vit_large
#   RUN_NAME          default TPU_NAME
#   RUNTIME_VERSION   default: the TPU software version for the accelerator
#   QUEUED=1, SPOT=1  see create
#   MAX_RERUNS        see run (launch/resumable.sh)
#
# Every command is printed before it runs; --dry-run only prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
parse_args "$@"

need PROJECT "Google Cloud project id"
need ZONE "zone of the slice, e.g. us-east5-a"
need TPU_NAME "name of the TPU slice, e.g. mae-vit-large"
case "$COMMAND" in
  create) need ACCELERATOR_TYPE "e.g. v5p-128, v5litepod-64, v4-128" ;;
  run) need BUCKET "gs://BUCKET holding tensorflow_datasets/ and the runs" ;;
  install | logs | stop | delete) ;;
  *) usage 2 ;;
esac
check_needed
if [[ "$COMMAND" == run && "$BUCKET" != gs://* ]]; then
  die "BUCKET=$BUCKET: expected gs://NAME (every worker must reach the same workdir)."
fi

CONFIG=${CONFIG:-configs/pretrain.py:vit_large}
RUN_NAME=${RUN_NAME:-$TPU_NAME}
where=(--zone="$ZONE" --project="$PROJECT")
log="\$HOME/mae_jax-$RUN_NAME.log"
pid="\$HOME/mae_jax-$RUN_NAME.pid"

# The TPU software version matching the accelerator (Cloud TPU's table).
runtime_version() {
  case "$ACCELERATOR_TYPE" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v4-* | v3-* | v2-*) echo tpu-ubuntu2204-base ;;
    # Ironwood is not served by the Cloud TPU API that this script drives.
    tpu7x-*) die "ACCELERATOR_TYPE=$ACCELERATOR_TYPE: TPU7x (Ironwood) VMs are not made through the Cloud TPU API; launch it on GKE with launch/xpk_multislice.sh (ACCELERATOR_TYPE=$ACCELERATOR_TYPE)." ;;
    *) die "ACCELERATOR_TYPE=$ACCELERATOR_TYPE: unknown; set RUNTIME_VERSION too." ;;
  esac
}

on_workers() {  # on_workers WORKER COMMAND: runs COMMAND over ssh on WORKER (all, 0, ...)
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker="$1" --command="$2"
}

case "$COMMAND" in
  create)
    version=${RUNTIME_VERSION:-$(runtime_version)}
    spot=()
    [[ "${SPOT:-0}" == 1 ]] && spot=(--spot)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
        "${where[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
        --runtime-version="$version" "${spot[@]}"
      echo "Queued. Watch it with: gcloud compute tpus queued-resources describe $TPU_NAME ${where[*]}"
    else
      run gcloud compute tpus tpu-vm create "$TPU_NAME" "${where[@]}" \
        --accelerator-type="$ACCELERATOR_TYPE" --version="$version" "${spot[@]}"
    fi
    ;;
  install)
    archive=${TMPDIR:-/tmp}/mae_jax-$TPU_NAME.tar.gz
    # The working tree as git sees it (tracked and new files, nothing ignored).
    printf '+ git ls-files -z -co --exclude-standard | tar --null -czf %s -T -\n' "$(quote "$archive")"
    if ((!DRY_RUN)); then
      git ls-files -z -co --exclude-standard | tar --null -czf "$archive" -T -
    fi
    run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":mae_jax.tar.gz "${where[@]}" --worker=all
    on_workers all "set -e; mkdir -p mae_jax; tar -xzf mae_jax.tar.gz -C mae_jax; cd mae_jax; \
sudo apt-get -qq update; sudo apt-get -qq install -y python3.11 python3.11-venv; \
PYTHON=python3.11 bash setup.sh; .venv/bin/pip install -q 'jax[tpu]==0.10.2'"
    ;;
  run)
    flags=(--config="$CONFIG" --workdir="$BUCKET/mae/$RUN_NAME"
      --config.data.data_dir="$BUCKET/tensorflow_datasets" --distributed=on "${MAIN_FLAGS[@]}")
    printf -v quoted ' %q' "${flags[@]}"
    reruns=$(quote "${MAX_RERUNS:-3}")
    on_workers all "cd mae_jax && MAX_RERUNS=$reruns nohup launch/resumable.sh \
.venv/bin/python -m mae_jax.main$quoted > $log 2>&1 & echo \$! > $pid"
    echo "Started on every worker. Follow it: $0 logs; stop it (checkpoint, exit 75): $0 stop"
    ;;
  logs)
    on_workers 0 "tail -n 100 -f $log"
    ;;
  stop)
    on_workers all "kill -TERM \$(cat $pid)"
    ;;
  delete)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      run gcloud compute tpus queued-resources delete "$TPU_NAME" "${where[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet
    fi
    ;;
esac
