#!/usr/bin/env bash
# System libraries for headless MuJoCo rendering (Meta-World demo datasets and evaluation): EGL through
# glvnd with Mesa's software driver (llvmpipe), so no GPU or display is needed (MUJOCO_GL=egl).
# Idempotent: installs with apt-get only what is missing; elsewhere it prints what to install and goes on.
# Usage: bash launch/system_deps.sh   (setup_venv.sh runs it)
set -euo pipefail

missing=()
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1"; }
have_lib 'libEGL\.so\.1 '      || missing+=(libegl1)
have_lib 'libOpenGL\.so\.0 '   || missing+=(libopengl0)
have_lib 'libGL\.so\.1 '       || missing+=(libgl1)
have_lib 'libEGL_mesa\.so\.0 ' || missing+=(libegl-mesa0)
# Mesa's software rasteriser, which EGL falls back to without a GPU.
compgen -G "/usr/lib/*/dri/swrast_dri.so" >/dev/null || compgen -G "/usr/lib*/dri/swrast_dri.so" >/dev/null \
  || missing+=(libgl1-mesa-dri)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps.sh: missing ${missing[*]} (Debian/Ubuntu names); install EGL + Mesa with your package" \
       "manager for headless MuJoCo rendering." >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "system_deps.sh: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
