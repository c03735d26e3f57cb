#!/usr/bin/env bash
# Train on a Cloud TPU VM pod: every worker runs the same command (jax.distributed finds its peers).
#
#   export TPU_NAME=pi0-pod ZONE=us-west4-a ACCELERATOR=v5litepod-256 RUNTIME=v2-alpha-tpuv5-lite
#   bash launch/tpu_pod.sh create                 # create the pod (add SPOT=1 for spot capacity)
#   bash launch/tpu_pod.sh install                # copy this checkout to every worker, pip install [data,tpu]
#   bash launch/tpu_pod.sh train --config=configs/pi0_oxe_pretrain.py:data_dir=gs://b/rlds --workdir=gs://b/runs/pi0
#   bash launch/tpu_pod.sh logs                   # tail worker 0's log
#   bash launch/tpu_pod.sh stop                   # SIGTERM the trainers (they checkpoint and exit)
#   bash launch/tpu_pod.sh delete
#
# Check first that the step fits: python -m pi0_jax.aot --config=configs/pi0_oxe_pretrain.py --topology=v5e:16x16
set -euo pipefail
cmd="${1:-}"; shift || true
case "$cmd" in create|install|train|logs|stop|delete) : "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}";; esac
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"; }
case "$cmd" in
  create)
    : "${ACCELERATOR:?set ACCELERATOR, e.g. v5litepod-256}" "${RUNTIME:?set RUNTIME, e.g. v2-alpha-tpuv5-lite}"
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" ${SPOT:+--spot} ;;
  install)
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tar -C "$root" --exclude=.venv --exclude=.git --exclude=runs --exclude=data -czf /tmp/pi0_jax.tgz .
    gcloud compute tpus tpu-vm scp /tmp/pi0_jax.tgz "$TPU_NAME":~/ --zone="$ZONE" --worker=all
    ssh_all "mkdir -p ~/pi0_jax && tar -C ~/pi0_jax -xzf ~/pi0_jax.tgz && cd ~/pi0_jax && bash launch/setup_venv.sh data,tpu" ;;
  train)
    args="$(printf '%q ' "$@")"
    ssh_all "cd ~/pi0_jax && nohup .venv/bin/python -m pi0_jax.train --distributed $args > ~/train.log 2>&1 &" ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=0 --command="tail -n 100 -f ~/train.log" ;;
  stop)
    ssh_all "pkill -TERM -f 'pi0_jax.train' || true" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  *)
    sed -n '2,14p' "$0"; exit 2 ;;
esac
