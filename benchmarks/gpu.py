"""Latency of the full-size pi0 sampler at batch 1 with 1, 2 and 3 cameras: bfloat16, 10 steps, prefix KV-cached.

What a robot waits for per action chunk on one GPU (images already on the device, no network). The weights are
random (latency does not depend on them), bfloat16 as in a bfloat16 export; compute is bfloat16. A 1- or 2-camera
model is the same network with fewer camera slots: 256 fewer image tokens in the prefix per camera.

Published anchors (batch 1, 10 steps): 73 ms on an RTX 4090 with 3 cameras (pi0 paper, on-board inference), and
20 / 27 / 37 ms for 1 / 2 / 3 cameras from an implementation with custom kernels (as quoted in issue 13).

  bash benchmarks/gpu.sh                    # installs the cuda extra, then this script on the pi0 preset
  python benchmarks/gpu.py --preset=tiny --out=/tmp/gpu.json   # any preset, any backend (tests use tiny on CPU)
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_PRESET = flags.DEFINE_string("preset", "pi0", "Pi0Config preset (pi0_jax.model.PRESETS).")
_CAMERAS = flags.DEFINE_list("cameras", ["1", "2", "3"], "Numbers of cameras, one timing each.")
_STEPS = flags.DEFINE_integer("num_steps", 10, "Euler steps.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed repeats after warm-up (median reported).")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "bfloat16", ["bfloat16", "float32"], "dtype of the weights.")
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "Time the pi0 preset without a GPU (slow; for checks).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/gpu.json", "JSON output ('' to skip).")

ANCHORS_MS = {"pi0_paper_rtx4090_3_cameras": 73.0, "custom_kernels": {"1": 20.0, "2": 27.0, "3": 37.0}}


def bench(preset: str, cameras: list[int], num_steps: int, repeats: int, param_dtype: str) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from pi0_jax.model import DEFAULT_IMAGE_KEYS, Observation, Pi0, get_preset  # pylint: disable=g-import-not-at-top
  from pi0_jax.model.gemma import count_params  # pylint: disable=g-import-not-at-top

  base = get_preset(preset, dtype="bfloat16")
  if max(cameras) > len(DEFAULT_IMAGE_KEYS) or min(cameras) < 1:
    raise ValueError(f"--cameras {cameras}: between 1 and {len(DEFAULT_IMAGE_KEYS)}.")
  # The weights do not depend on the number of cameras (one SigLIP for all): initialised once, cast once.
  full = base.replace(image_keys=DEFAULT_IMAGE_KEYS)
  dtype = jnp.dtype(param_dtype)
  init = jax.jit(lambda key: jax.tree.map(lambda x: x.astype(dtype), Pi0(full).init(
      key, Observation.fake(full, 1), jnp.zeros((1, full.action_horizon, full.action_dim)))))
  params = init(jax.random.key(0))
  rows = []
  for n in cameras:
    cfg = full.replace(image_keys=DEFAULT_IMAGE_KEYS[:n])
    model = Pi0(cfg)
    obs = Observation.fake(cfg, 1)
    obs = obs.replace(images={k: jax.random.uniform(jax.random.key(i), v.shape, minval=-1, maxval=1)
                              for i, (k, v) in enumerate(obs.images.items())})
    noise = jax.random.normal(jax.random.key(1), (1, cfg.action_horizon, cfg.action_dim))
    sample = jax.jit(lambda p, o, x, m=model: m.apply(p, o, method="sample_actions", noise=x, num_steps=num_steps,
                                                      use_kv_cache=True))
    prefix = jax.jit(lambda p, o, m=model: m.apply(p, o, method="prefix_kv_cache"))
    timed = common.time_fn(sample, params, obs, noise, warmup=3, repeats=repeats)
    rows.append({"preset": preset, "cameras": n, "batch": 1, "steps": num_steps, "params_M": count_params(params) / 1e6,
                 "param_dtype": param_dtype, "compute_dtype": cfg.dtype, "prefix_tokens": cfg.prefix_len,
                 "sampler_ms": timed["median_ms"], "sampler_min_ms": timed["min_ms"],
                 "prefix_ms": common.time_fn(prefix, params, obs, warmup=2, repeats=repeats)["median_ms"],
                 "custom_kernels_anchor_ms": ANCHORS_MS["custom_kernels"].get(str(n))})
  return rows


def main(argv) -> None:
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  platform = jax.devices()[0].platform
  if _PRESET.value == "pi0" and platform != "gpu" and not _ALLOW_CPU.value:
    sys.exit(f"benchmarks/gpu.py: no GPU (jax.devices(): {jax.devices()}); install the cuda extra "
             "(bash benchmarks/gpu.sh does) or pass --allow_cpu.")
  rows = bench(_PRESET.value, [int(c) for c in _CAMERAS.value], _STEPS.value, _REPEATS.value, _PARAM_DTYPE.value)
  common.print_table(rows, ["preset", "cameras", "prefix_tokens", "sampler_ms", "prefix_ms",
                            "custom_kernels_anchor_ms"])
  common.write_json(_OUT.value, {"benchmark": "gpu_sampler", "machine": common.machine(), "anchors_ms": ANCHORS_MS,
                                 "rows": rows})


if __name__ == "__main__":
  app.run(main)
