#!/usr/bin/env bash
# The test command: creates .venv, installs the project with its test extras, runs pytest.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k sampler -x`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup_venv.sh" "test,data,sim,tpu,serve"
cd "$root"
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3 MUJOCO_GL="${MUJOCO_GL:-egl}"
exec .venv/bin/python -m pytest tests -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
