"""Latency of pi0's `sample_actions`: KV-cached vs uncached, its parts, and real-time chunking's cost.

prefix_ms is one jitted prefix forward (images + prompt -> K/V cache) and suffix_ms one suffix-only forward,
each timed on its own call; they show where the time goes, not a bound (a separate call materialises the
cache that the sampler keeps in place). guided_ms is RTC's guided sampler (prefix K/V cache computed once,
then per step one suffix pass plus one VJP through it; d = H // 4, s = H // 2),
trained_ms the training-time RTC sampler (the first d steps fed as clean tokens;
the same work as plain sampling); their ratios to plain use the fastest of the
repeats. Every run rewrites the whole JSON (with the commit it ran on).

  python benchmarks/sampler.py --presets=tiny,small_100m --batch_sizes=1,8 --out=benchmarks/results/sampler.json
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_PRESETS = flags.DEFINE_list("presets", ["tiny", "small_100m"], "Pi0Config presets (pi0_jax.model.PRESETS).")
_BATCH = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
_STEPS = flags.DEFINE_integer("num_steps", 10, "Euler steps.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats after warm-up (median reported).")
_DTYPE = flags.DEFINE_string("dtype", None, "Override the preset's compute dtype (bfloat16 or float32).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/sampler.json", "JSON output ('' to skip).")
_NOTE = flags.DEFINE_string("note", "", "Written into the rows measured now (e.g. that the CPU was shared).")


def bench(preset: str, batch: int, num_steps: int, repeats: int, dtype: str | None) -> dict:
  import jax
  import jax.numpy as jnp
  from pi0_jax.model import Observation, Pi0, get_preset
  from pi0_jax.model.gemma import count_params
  import common

  cfg = get_preset(preset, **({"dtype": dtype} if dtype else {}))
  model = Pi0(cfg)
  params = jax.jit(model.init)(jax.random.key(0), Observation.fake(cfg, 1),
                               jnp.zeros((1, cfg.action_horizon, cfg.action_dim)))
  obs = Observation.fake(cfg, batch)
  obs = obs.replace(images={k: jax.random.uniform(jax.random.key(i), v.shape, minval=-1, maxval=1)
                            for i, (k, v) in enumerate(obs.images.items())})
  noise = jax.random.normal(jax.random.key(1), (batch, cfg.action_horizon, cfg.action_dim))
  time_ = jnp.ones((batch,))

  def sampler(use_cache):
    return jax.jit(lambda p, o, n: model.apply(p, o, method="sample_actions", noise=n, num_steps=num_steps,
                                               use_kv_cache=use_cache))

  prefix = jax.jit(lambda p, o: model.apply(p, o, method="prefix_kv_cache"))
  suffix = jax.jit(lambda p, o, kv, m, x, t: model.apply(p, o, kv, m, x, t, method="velocity_cached"))
  kv, mask = prefix(params, obs)
  row = {"preset": preset, "params_M": count_params(params) / 1e6, "dtype": cfg.dtype, "batch": batch,
         "steps": num_steps}
  row["cached_ms"] = common.time_fn(sampler(True), params, obs, noise, repeats=repeats)["median_ms"]
  row["uncached_ms"] = common.time_fn(sampler(False), params, obs, noise, repeats=repeats)["median_ms"]
  row["prefix_ms"] = common.time_fn(prefix, params, obs, repeats=repeats)["median_ms"]
  row["suffix_ms"] = common.time_fn(suffix, params, obs, kv, mask, noise, time_, repeats=repeats)["median_ms"]
  row["uncached_over_cached"] = row["uncached_ms"] / row["cached_ms"]
  row.update(bench_rtc(model, params, obs, noise, num_steps, repeats))
  return row


def bench_rtc(model, params, obs, noise, num_steps: int, repeats: int) -> dict:
  """Guided and training-time RTC sampling at the sizes of the plain row, against the cached plain sampler."""
  import jax
  from pi0_jax.model import Pi0
  import common

  horizon = model.config.action_horizon
  delay, s = max(1, horizon // 4), horizon // 2
  prev = jax.random.normal(jax.random.key(2), noise.shape)
  guided = jax.jit(lambda p, o, n, a: model.apply(p, o, method="sample_actions", noise=n, num_steps=num_steps,
                                                  prev_actions=a, inference_delay=delay, execution_horizon=s,
                                                  max_guidance_weight=5.0))
  trained_model = Pi0(model.config.replace(rtc_max_delay=delay))
  trained = jax.jit(lambda p, o, n, a: trained_model.apply(p, o, method="sample_actions", noise=n,
                                                          num_steps=num_steps, prev_actions=a, inference_delay=delay))
  plain = jax.jit(lambda p, o, n: model.apply(p, o, method="sample_actions", noise=n, num_steps=num_steps))
  row = {"rtc_delay": delay, "rtc_execution_horizon": s}
  # Re-timed here, next to the RTC samplers, and compared by their fastest runs (3x the repeats): on a shared
  # machine the minimum is the least disturbed by other load.
  for name, fn, args in (("plain", plain, ()), ("guided", guided, (prev,)), ("trained", trained, (prev,))):
    times = common.time_fn(fn, params, obs, noise, *args, repeats=3 * repeats)
    row[f"{name}_ms"], row[f"{name}_min_ms"] = times["median_ms"], times["min_ms"]
  row["guided_over_plain"] = row["guided_min_ms"] / row["plain_min_ms"]
  row["trained_over_plain"] = row["trained_min_ms"] / row["plain_min_ms"]
  return row


def main(argv):
  del argv
  import common
  rows = [bench(p, int(b), _STEPS.value, _REPEATS.value, _DTYPE.value) for p in _PRESETS.value for b in _BATCH.value]
  for row in rows:
    row["note"] = _NOTE.value
  common.print_table(rows, ["preset", "params_M", "dtype", "batch", "steps", "cached_ms", "uncached_ms", "prefix_ms",
                            "suffix_ms", "uncached_over_cached", "guided_ms",
                            "guided_over_plain", "trained_over_plain"])
  common.write_json(_OUT.value, {"benchmark": "sampler", "machine": common.machine(), "rows": rows})


if __name__ == "__main__":
  app.run(main)
