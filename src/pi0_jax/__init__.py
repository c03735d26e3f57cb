"""pi0-jax: the pi0 vision-language-action flow model in JAX/Flax.

Importing the package keeps JAX from probing for a TPU on a host that has none. With libtpu installed (the
test environment installs it for `pi0_jax.aot`'s compiles for TPU topologies) and JAX_PLATFORMS unset, JAX
tries the TPU backend first, and libtpu prints start-up errors ("Failed to find host bounds for accelerator
type", "unexpected worker hostname ... TPU_WORKER_HOSTNAMES") before JAX falls back to the CPU. So when
JAX_PLATFORMS and JAX_FORCE_TPU_INIT are unset and the host has no TPU (no TPU on the PCI bus, no
/dev/accel*, no /dev/vfio group) and no GPU (no /dev/nvidiactl, /dev/nvidia0, /dev/dxg, /dev/kfd),
JAX_PLATFORMS is set to "cpu": the backend JAX would end up with anyway (and so is jax.config's
jax_platforms when jax was imported first: it reads the variable at import). Compile-only TPU devices
(jax.experimental.topologies, used by pi0_jax.aot) load libtpu themselves and are unaffected. Set
JAX_PLATFORMS to choose otherwise.
"""

from __future__ import annotations

import glob as _glob
import os as _os
import sys as _sys

__version__ = "0.1.0"

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips (as in jax._src.hardware_utils).
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def _tpu_attached() -> bool:
  if _glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"):
    return True
  for vendor in _glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def _skip_tpu_probe_without_accelerators() -> None:
  if "JAX_PLATFORMS" in _os.environ or "JAX_FORCE_TPU_INIT" in _os.environ:
    return
  if any(_os.path.exists(p) for p in _GPU_DEVICE_FILES) or _tpu_attached():
    return
  _os.environ["JAX_PLATFORMS"] = "cpu"
  jax = _sys.modules.get("jax")
  if jax is not None and jax.config.jax_platforms is None:  # Imported already: it read the variable then.
    jax.config.update("jax_platforms", "cpu")


_skip_tpu_probe_without_accelerators()
