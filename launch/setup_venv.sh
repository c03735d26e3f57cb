#!/usr/bin/env bash
# Creates ./.venv (Python 3.11) and installs pi0-jax with the given extras into it.
# Re-running is cheap: the install is skipped while setup.cfg is unchanged.
# Usage: source launch/setup_venv.sh [extras]   (default extras: data,sim)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-data,sim}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ -f "$root/launch/system_deps.sh" ]; then bash "$root/launch/system_deps.sh"; fi
if [ ! -x "$root/.venv/bin/python" ]; then
  "$python" -m venv "$root/.venv"
fi
stamp="$root/.venv/.pi0_jax_installed"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$root/.venv/bin/python" -m pip install --quiet --upgrade pip
  "$root/.venv/bin/python" -m pip install --quiet -e "$root[$extras]"
  if [[ ",$extras," == *",test,"* && ",$extras," == *",serve,"* ]]; then
    # The serving tests' robot side is openpi's client; --no-deps: its numpy<2 pin is not ours (see setup.cfg).
    "$root/.venv/bin/python" -m pip install --quiet --no-deps openpi-client==0.1.2
  fi
  echo "$want" > "$stamp"
fi
