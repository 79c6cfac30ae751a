#!/usr/bin/env bash
# Pretrain on several TPU slices at once (multi-slice) on GKE, with xpk.
#
#   launch/xpk_multislice.sh [--dry-run] cluster|run|delete|delete-cluster [-- MAIN_FLAGS...]
#
#   cluster         create the GKE cluster with NUM_SLICES slices (SPOT=1: spot)
#   run             submit the workload: xpk builds an image from this working
#                   tree (as git sees it) on a python:3.11 base, and runs the same command on
#                   every host of every slice; MAIN_FLAGS after -- are passed on
#   delete          delete the workload
#   delete-cluster  delete the cluster
#
# The mesh's `data` axis spans the slices (mae_jax.core.sharding.make_mesh builds
# the hybrid mesh), so only gradient all-reduces cross the data-centre
# network; e.g. 2 x v5p-128: -- --config.mesh.data=2 --config.mesh.fsdp=-1
# Check the plan first: python -m mae_jax.aot --topology=v5p:4x4x4 --num_slices=2 ...
#
# Variables (environment):
#   PROJECT           Google Cloud project id
#   ZONE              zone of the cluster, e.g. us-east5-a
#   CLUSTER           GKE cluster name, e.g. mae-multislice
#   ACCELERATOR_TYPE  TPU type of one slice, e.g. v5p-128, v5litepod-256, tpu7x-128
#                     (Ironwood: TensorCores, 2 per chip; plan it first with
#                     python -m mae_jax.aot --topology=tpu7x:4x4x4)
#   NUM_SLICES        number of slices, e.g. 2
#   BUCKET            gs://BUCKET: runs go to BUCKET/mae/RUN_NAME, data is read
#                     from BUCKET/tensorflow_datasets (run)
#   CONFIG            default configs/pretrain.py:vit_huge
#   RUN_NAME          workload name, default mae-CLUSTER
#   SPOT=1            spot capacity for the cluster
#
# Every command is printed before it runs; --dry-run only prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
source launch/common.sh
parse_args "$@"

need PROJECT "Google Cloud project id"
need ZONE "zone of the cluster, e.g. us-east5-a"
need CLUSTER "GKE cluster name, e.g. mae-multislice"
case "$COMMAND" in
  cluster)
    need ACCELERATOR_TYPE "TPU type of one slice, e.g. v5p-128"
    need NUM_SLICES "number of slices, e.g. 2"
    ;;
  run)
    need ACCELERATOR_TYPE "TPU type of one slice, e.g. v5p-128"
    need NUM_SLICES "number of slices, e.g. 2"
    need BUCKET "gs://BUCKET holding tensorflow_datasets/ and the runs"
    ;;
  delete | delete-cluster) ;;
  *) usage 2 ;;
esac
check_needed
if [[ "$COMMAND" == run && "$BUCKET" != gs://* ]]; then
  die "BUCKET=$BUCKET: expected gs://NAME (every host must reach the same workdir)."
fi

CONFIG=${CONFIG:-configs/pretrain.py:vit_huge}
RUN_NAME=${RUN_NAME:-mae-$CLUSTER}
where=(--cluster="$CLUSTER" --project="$PROJECT" --zone="$ZONE")

case "$COMMAND" in
  cluster)
    spot=()
    [[ "${SPOT:-0}" == 1 ]] && spot=(--spot)
    run xpk cluster create "${where[@]}" --tpu-type="$ACCELERATOR_TYPE" \
      --num-slices="$NUM_SLICES" "${spot[@]}"
    ;;
  run)
    flags=(--config="$CONFIG" --workdir="$BUCKET/mae/$RUN_NAME"
      --config.data.data_dir="$BUCKET/tensorflow_datasets" --distributed=on "${MAIN_FLAGS[@]}")
    printf -v quoted ' %q' "${flags[@]}"
    # The image gets the working tree as git sees it, not .venv or runs/.
    staging=${TMPDIR:-/tmp}/mae_jax-$RUN_NAME
    run rm -rf "$staging"
    run mkdir -p "$staging"
    printf '+ git ls-files -z -co --exclude-standard | tar --null -cf - -T - | tar -xf - -C %s\n' \
      "$(quote "$staging")"
    if ((!DRY_RUN)); then
      git ls-files -z -co --exclude-standard | tar --null -cf - -T - | tar -xf - -C "$staging"
    fi
    run xpk workload create "${where[@]}" --workload="$RUN_NAME" \
      --tpu-type="$ACCELERATOR_TYPE" --num-slices="$NUM_SLICES" \
      --base-docker-image=python:3.11 --script-dir="$staging" \
      --command="pip install -q -r requirements.txt 'jax[tpu]==0.10.2' && pip install -q --no-deps -e . && python -m mae_jax.main$quoted"
    ;;
  delete)
    run xpk workload delete "${where[@]}" --workload="$RUN_NAME"
    ;;
  delete-cluster)
    run xpk cluster delete "${where[@]}"
    ;;
esac
