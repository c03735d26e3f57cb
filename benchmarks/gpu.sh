#!/usr/bin/env bash
# One command for the GPU latency figures: installs pi0-jax with the cuda extra into .venv, then times the
# full-size pi0 sampler at batch 1 with 1, 2 and 3 cameras (bfloat16, 10 steps, prefix KV-cached) and writes
# benchmarks/results/gpu.json. Usage: bash benchmarks/gpu.sh [preset] [out.json] [more benchmarks/gpu.py flags]
# PI0_SKIP_SETUP=1 skips the install and PYTHON picks the interpreter (the tests run a small preset on CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
preset="${1:-pi0}"
out="${2:-$root/benchmarks/results/gpu.json}"
shift $(( $# < 2 ? $# : 2 ))
if [ "${PI0_SKIP_SETUP:-0}" != 1 ]; then
  bash "$root/launch/setup_venv.sh" cuda
fi
python="${PYTHON:-$root/.venv/bin/python}"
cd "$root"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$root/benchmarks/gpu.py" --preset="$preset" --out="$out" "$@"
