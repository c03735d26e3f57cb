#!/usr/bin/env bash
# The end-to-end demo, from a fresh clone: venv -> Meta-World ML10 demo datasets -> tokenizer -> norm statistics
# -> pre-train configs/pi0_demo.py -> export -> evaluate on held-out data and tasks (plus a mean-action baseline)
# -> report. About 25 minutes on 2 CPU cores with the defaults. A rerun reuses what exists: datasets built with the
# same options, cached statistics, and training resumes from its last checkpoint (or does nothing when done);
# export and evaluation run again on the latest checkpoint.
#
# Usage: bash launch/demo.sh
# Scale it with environment variables:
#   PI0_DEMO_DIR       where everything goes                       (default: runs/demo)
#   PI0_DATA_DIR       Meta-World datasets + tokenizer             (default: data/metaworld)
#   DEMO_EPISODES      demonstrations per task                     (default: 20)
#   DEMO_IMAGE_SIZE    camera frame size in pixels                 (default: 64, the demo model's resolution)
#   DEMO_STEPS         training steps                              (default: 1000)
#   DEMO_BATCH         global batch                                (default: 32)
#   DEMO_EVAL_EPISODES closed-loop episodes per task               (default: 2)
#   DEMO_MAX_STEPS     simulator steps per episode                 (default: 200)
#   DEMO_WORKERS       simulator/render processes for the build    (default: 2)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
demo="${PI0_DEMO_DIR:-runs/demo}"
data="${PI0_DATA_DIR:-data/metaworld}"
episodes="${DEMO_EPISODES:-20}"
image_size="${DEMO_IMAGE_SIZE:-64}"
steps="${DEMO_STEPS:-1000}"
batch="${DEMO_BATCH:-32}"
eval_episodes="${DEMO_EVAL_EPISODES:-2}"
max_steps="${DEMO_MAX_STEPS:-200}"
workers="${DEMO_WORKERS:-2}"

export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" TF_CPP_MIN_LOG_LEVEL=3 MUJOCO_GL="${MUJOCO_GL:-egl}"
export PI0_STATS_CACHE="${PI0_STATS_CACHE:-$data/stats}"
mkdir -p "$demo"
timings="$demo/timings.tsv"
: > "$timings"
stage() {  # stage NAME COMMAND...: runs and times one stage.
  local name="$1"; shift
  echo "==> [$name] $*"
  local t0; t0=$(date +%s)
  "$@"
  local dt=$(( $(date +%s) - t0 ))
  printf '%s\t%d\n' "$name" "$dt" >> "$timings"
  echo "==> [$name] done in ${dt}s"
}

stage venv bash launch/setup_venv.sh data,sim
py=.venv/bin/python

train_ds="$data/metaworld_ml10_train/1.0.0"
test_ds="$data/metaworld_ml10_test/1.0.0"
stage datasets "$py" -m pi0_jax.data.build_metaworld --out_dir="$data" --episodes_per_task="$episodes" \
  --image_size="$image_size" --num_workers="$workers"
stage tokenizer "$py" -m pi0_jax.data.tokenizer --out="$data/tokenizer.model" --dataset_dirs="$train_ds,$test_ds"
stage stats bash -c "'$py' -m pi0_jax.data.stats --dataset_dir='$train_ds' --out='$demo/norm_stats_train.json' > '$demo/stats.log' && tail -n 12 '$demo/stats.log'"
stage train "$py" -m pi0_jax.train --config="configs/pi0_demo.py:data_dir=$data,steps=$steps" \
  --config.global_batch="$batch" --workdir="$demo/train"
stage export "$py" -m pi0_jax.export --workdir="$demo/train" --out="$demo/export" --force
stage evaluate "$py" -m pi0_jax.evaluate --checkpoint="$demo/export" --out="$demo/report" --data_dir="$data" \
  --episodes_per_task="$eval_episodes" --max_steps="$max_steps" --baseline --gifs=2

echo
echo "Stage times (s):"
cat "$timings"
echo
echo "Report: $demo/report/report.md (JSON: $demo/report/report.json, plots: $demo/report/*.png)"
