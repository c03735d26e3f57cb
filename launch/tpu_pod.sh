#!/usr/bin/env bash
# Train on Cloud TPU VMs: one slice (a pod), or several slices joined over the data-centre network (multi-slice,
# one Cloud TPU queued resource). Every worker of every slice runs the same command (jax.distributed finds its peers).
#
#   export TPU_NAME=pi0-pod ZONE=us-west4-a ACCELERATOR=v5litepod-256 RUNTIME=v2-alpha-tpuv5-lite
#   export NUM_SLICES=2                           # multi-slice: 2 x ACCELERATOR (unset or 1: one slice)
#   bash launch/tpu_pod.sh create                 # create the slice(s) (add SPOT=1 for spot capacity)
#   bash launch/tpu_pod.sh install                # copy this checkout to every worker, pip install [data,tpu]
#   bash launch/tpu_pod.sh train --config=configs/pi0_oxe_pretrain.py:data_dir=gs://b/rlds --workdir=gs://b/runs/pi0
#   bash launch/tpu_pod.sh logs                   # tail worker 0's log (slice 0)
#   bash launch/tpu_pod.sh stop                   # SIGTERM the trainers (they checkpoint and exit)
#   bash launch/tpu_pod.sh delete
#   DRY_RUN=1 bash launch/tpu_pod.sh <command>    # print the gcloud commands instead of running them
#
# Multi-slice (NUM_SLICES > 1): `create` requests queued resource TPU_NAME with --node-count=NUM_SLICES; its
# slices are the TPU VMs TPU_NAME-0 .. TPU_NAME-<NUM_SLICES-1>, whose runtime sets MEGASCALE_NUM_SLICES,
# MEGASCALE_SLICE_ID and MEGASCALE_COORDINATOR_ADDRESS. From those jax.distributed numbers the processes across
# slices and each device gets its slice_index; the trainer counts the slices (pi0_jax.train.sharding.num_slices)
# and puts a `slice` axis of that size in front of the config's mesh: data parallel across slices, FSDP inside
# each (pi0_jax.train.setup.with_slices). A --config.mesh passed to `train` may leave `slice` out (it is added)
# or name slice:NUM_SLICES; `train` refuses any other slice size before starting a worker.
# Check first that the step fits: python -m pi0_jax.aot --config=configs/pi0_oxe_pretrain.py --topology=v5e:16x16
# (with --num_slices=NUM_SLICES for several slices).
set -euo pipefail
usage() { sed -n '2,23p' "$0"; }
cmd="${1:-}"; shift || true
case "$cmd" in -h|--help|help) usage; exit 0;; esac
NUM_SLICES="${NUM_SLICES:-1}"
if ! [[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]]; then
  echo "NUM_SLICES=$NUM_SLICES: expected a positive integer (the number of TPU slices)." >&2; exit 2
fi
case "$cmd" in create|install|train|logs|stop|delete) : "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}";; esac

run() { if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi; }
nodes() {  # The TPU VMs: one per slice.
  if (( NUM_SLICES > 1 )); then
    for ((i = 0; i < NUM_SLICES; i++)); do echo "$TPU_NAME-$i"; done
  else
    echo "$TPU_NAME"
  fi
}
ssh_all() {
  for node in $(nodes); do run gcloud compute tpus tpu-vm ssh "$node" --zone="$ZONE" --worker=all --command="$1"; done
}

check_mesh() {  # The slice axis of a --config.mesh override must match NUM_SLICES (or be left to the trainer).
  local prev="" arg mesh flag="--config.mesh"
  for arg in "$@"; do
    mesh=""
    [[ "$arg" == "$flag="* ]] && mesh="${arg#"$flag="}"
    [[ "$prev" == "$flag" ]] && mesh="$arg"
    prev="$arg"
    [[ -z "$mesh" ]] && continue
    if [[ ",${mesh// /}," =~ ,slice:(-?[0-9]+), ]] && [[ "${BASH_REMATCH[1]}" != "$NUM_SLICES" ]]; then
      echo "$flag=$mesh: the slice axis has size ${BASH_REMATCH[1]}, but NUM_SLICES=$NUM_SLICES slices" \
        "train; write slice:$NUM_SLICES or leave the slice axis out (the trainer adds it)." >&2
      exit 2
    fi
  done
}

case "$cmd" in
  create)
    : "${ACCELERATOR:?set ACCELERATOR, e.g. v5litepod-256}" "${RUNTIME:?set RUNTIME, e.g. v2-alpha-tpuv5-lite}"
    if (( NUM_SLICES > 1 )); then
      run gcloud compute tpus queued-resources create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
        --runtime-version="$RUNTIME" --node-count="$NUM_SLICES" --node-prefix="$TPU_NAME" ${SPOT:+--spot}
    else
      run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
        --version="$RUNTIME" ${SPOT:+--spot}
    fi ;;
  install)
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    run tar -C "$root" --exclude=.venv --exclude=.git --exclude=runs --exclude=data -czf /tmp/pi0_jax.tgz .
    for node in $(nodes); do
      run gcloud compute tpus tpu-vm scp /tmp/pi0_jax.tgz "$node":~/ --zone="$ZONE" --worker=all
    done
    ssh_all "mkdir -p ~/pi0_jax && tar -C ~/pi0_jax -xzf ~/pi0_jax.tgz && cd ~/pi0_jax &&
      bash launch/setup_venv.sh data,tpu" ;;
  train)
    check_mesh "$@"
    args="$(printf '%q ' "$@")"
    ssh_all "cd ~/pi0_jax && nohup .venv/bin/python -m pi0_jax.train --distributed $args > ~/train.log 2>&1 &" ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$(nodes | head -n 1)" --zone="$ZONE" --worker=0 \
      --command="tail -n 100 -f ~/train.log" ;;
  stop)
    ssh_all "pkill -TERM -f 'pi0_jax.train' || true" ;;
  delete)
    if (( NUM_SLICES > 1 )); then
      run gcloud compute tpus queued-resources delete "$TPU_NAME" --zone="$ZONE" --force --quiet  # --force: its VMs too
    else
      run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    fi ;;
  *)
    usage; exit 2 ;;
esac
