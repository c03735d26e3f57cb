#!/usr/bin/env bash
# Runs the multi-host training path for real on one machine: 2 processes on localhost,
# 4 simulated CPU devices each, a coordinator on 127.0.0.1, collectives over gloo.
# Usage: bash launch/multihost_local.sh --config=configs/pi0_demo.py --workdir=runs/mh [more train flags]
# Logs: <workdir>/process_<i>.log. Exits non-zero if either process fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
workdir=""
for arg in "$@"; do case "$arg" in --workdir=*) workdir="${arg#--workdir=}";; esac; done
[ -n "$workdir" ] || { echo "usage: $0 --config=... --workdir=DIR [flags]" >&2; exit 2; }
mkdir -p "$workdir"
port="${PI0_PORT:-$(( 20000 + RANDOM % 20000 ))}"
pids=()
for i in 0 1; do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=4" \
  PI0_COORDINATOR="127.0.0.1:$port" PI0_NUM_PROCESSES=2 PI0_PROCESS_ID=$i \
    "$python" -m pi0_jax.train --distributed "$@" > "$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
[ $status -eq 0 ] || { echo "a process failed (exit $status); see $workdir/process_*.log" >&2; tail -n 20 "$workdir"/process_*.log >&2; }
exit $status
