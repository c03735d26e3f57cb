"""Train state and the train step (pure functions; the trainer jits them with shardings).

The state is a plain dict, which is also what checkpoints hold:
  step        int32 []          optimizer updates done
  params      the pi0 tree      float32 master weights (frozen leaves may be kept in bf16: init_state)
  opt_state   optax state
  ema_params  the pi0 tree      only when EMA is on
  rng         uint32 [2]        base key; step s uses fold_in(rng, s)
  nonfinite_step  int32 []      0, or the first step whose loss or gradient was not finite: that update and
                                all later ones are refused on the device (the state stays the last good one),
                                so the host need not read the loss every step (see first_nonfinite_step)

A batch is the input pipeline's dict: observation (Observation), actions [B, H, A],
action_pad_mask bool [B, H], action_dim_mask bool [B, A]; optionally noise [B, H, A] and time [B], fixed
flow-matching draws that replace the ones from the step's key (for exact comparisons, e.g. of gradient
accumulation against one batch), and, for a model with rtc_max_delay > 0, delay int [B] likewise.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from pi0_jax.model import Observation, Pi0


def init_state(model: Pi0, tx: optax.GradientTransformation, rng, *, ema: bool, params=None, frozen=None,
               frozen_dtype=None) -> dict:
  """A fresh state; pass `params` to start from loaded weights (e.g. PaliGemma).

  frozen (a tree of bools like params, optimizer.frozen_mask) with frozen_dtype (e.g. "bfloat16"): the frozen
  leaves are stored in that dtype (they never change; a bf16 model computes in bf16 anyway), halving their memory
  as openpi does for LoRA fine-tuning.
  """
  cfg = model.config
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  init_rng, state_rng = jax.random.split(rng)
  if params is None:
    params = model.init(init_rng, Observation.fake(cfg, 1), jnp.zeros((1, cfg.action_horizon, cfg.action_dim)))["params"]
  if frozen is not None and frozen_dtype is not None:
    params = jax.tree.map(lambda f, p: p.astype(frozen_dtype) if f else p, frozen, params)
  # Raw key data, so checkpoints hold a plain uint32 array.
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
           "rng": jax.random.key_data(state_rng), "nonfinite_step": jnp.zeros((), jnp.int32)}
  if ema:
    state["ema_params"] = jax.tree.map(jnp.copy, params)  # its own buffers: the state is donated
  return state


def loss_sum(model: Pi0, params, batch: dict, rng) -> jax.Array:
  """Sum of the per-step flow loss over the real (unpadded) action steps of `batch`."""
  per_step = model.apply({"params": params}, batch["observation"], batch["actions"], method="compute_loss", rng=rng,
                         noise=batch.get("noise"), time=batch.get("time"), action_pad_mask=batch["action_pad_mask"],
                         action_dim_mask=batch["action_dim_mask"], delay=batch.get("delay"))
  return jnp.sum(per_step)


class _Split:
  """Splits a parameter tree into its trainable and frozen leaves (flat dicts) and joins them back."""

  def __init__(self, frozen):
    flat = traverse_util.flatten_dict(frozen) if frozen is not None else {}
    self.frozen_keys = frozenset(k for k, f in flat.items() if f)

  def __call__(self, tree) -> tuple[dict, dict]:
    flat = traverse_util.flatten_dict(tree)
    return ({k: v for k, v in flat.items() if k not in self.frozen_keys},
            {k: v for k, v in flat.items() if k in self.frozen_keys})

  @staticmethod
  def join(trainable: dict, fixed: dict):
    return traverse_util.unflatten_dict({**trainable, **fixed})


def with_rtc_delay(model: Pi0, batch: dict, rng) -> tuple[dict, jax.Array]:
  """(batch with its training-time RTC delay, the mask of the action steps that carry loss [B, H]).

  With rtc_max_delay > 0 the first delay[b] steps of example b are fed clean and get no loss, so they must not
  count in the mean either. The delay is batch["delay"] if given, else drawn as compute_loss would draw it from
  `rng` (so one batch without accumulation trains exactly as if the model drew it); without RTC the batch is
  returned as it is and every real step counts.
  """
  cfg = model.config
  if cfg.rtc_max_delay == 0:
    return batch, batch["action_pad_mask"]
  delay = batch.get("delay")
  if delay is None:
    delay = jax.random.randint(jax.random.fold_in(rng, 2), batch["action_pad_mask"].shape[:1], 0,
                               cfg.rtc_max_delay + 1)
  live = jnp.arange(cfg.action_horizon)[None, :] >= jnp.asarray(delay)[:, None]
  return {**batch, "delay": delay}, batch["action_pad_mask"] & live


def make_train_step(model: Pi0, tx: optax.GradientTransformation, schedule: Callable[[Any], Any], *,
                    grad_accum_steps: int = 1, ema_decay: float | None = None, frozen=None) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics).

  The loss is the mean over the action steps that carry loss (real, and with training-time RTC not fed clean:
  `with_rtc_delay`) of the whole (global) batch; with gradient
  accumulation the batch is cut into `grad_accum_steps` micro-batches whose gradient sums are
  added, so the update equals the one without accumulation (exactly so, up to float rounding, when the batch
  carries its noise and time; tests/test_train_step.py).

  frozen (a tree of bools like params; optimizer.frozen_mask): those leaves are constants of the backward pass,
  so no gradient of theirs is computed, accumulated or held: a LoRA or action-expert fine-tune of the full
  model carries gradient buffers for its trainable leaves only. grad_norm is then over the trainable leaves.
  """
  split = _Split(frozen)

  def train_step(state: dict, batch: dict):
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    params = state["params"]
    trainable, fixed = split(params)
    batch, counted = with_rtc_delay(model, batch, step_rng)
    num_valid = jnp.maximum(jnp.sum(counted.astype(jnp.float32)), 1.0)
    grad_fn = jax.value_and_grad(lambda p, b, r: loss_sum(model, split.join(p, fixed), b, r))

    if grad_accum_steps == 1:
      total, grads = grad_fn(trainable, batch, step_rng)
    else:
      # Micro-batch i takes rows i, i + k, i + 2k, ... (k = grad_accum_steps), so that every micro-batch
      # stays spread over all data shards instead of living on 1/k of them.
      micro = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1), batch)

      def body(carry, xs):
        i, mb = xs
        value, g = grad_fn(trainable, mb, jax.random.fold_in(step_rng, i))
        return jax.tree.map(jnp.add, carry, (value, g)), None

      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
      (total, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))

    loss = total / num_valid
    grads = jax.tree.map(lambda g: g / num_valid, grads)
    # The optimizer sees the whole tree; its frozen branch (optax.set_to_zero) ignores these zeros.
    full_grads = split.join(grads, jax.tree.map(jnp.zeros_like, fixed))
    updates, opt_state = tx.update(full_grads, state["opt_state"], params)
    new_params = split.join(optax.apply_updates(trainable, split(updates)[0]), fixed)
    new_state = {**state, "step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
    if ema_decay is not None:
      new_state["ema_params"] = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema_params"],
                                             new_params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),  # over the trainable leaves
        "param_norm": optax.tree.norm(new_params),
        "update_norm": optax.tree.norm(updates),
        "learning_rate": schedule(state["step"]),
        "valid_action_steps": num_valid,
    }
    return refuse_nonfinite(state, new_state, metrics["loss"], metrics["grad_norm"]), metrics

  return train_step


def refuse_nonfinite(state: dict, new_state: dict, loss, grad_norm) -> dict:
  """`new_state` if the loss and gradient are finite and no earlier step was refused; else the old state with
  the first refused step recorded in `nonfinite_step`. On the device: no host sync."""
  first = state["nonfinite_step"]
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (first == 0)
  kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  kept["nonfinite_step"] = jnp.where(ok | (first > 0), first, state["step"] + 1)
  return kept


def first_nonfinite_step(state: dict) -> int:
  """0, or the first step whose update was refused (reading it waits for the step to finish)."""
  return int(jax.device_get(state["nonfinite_step"]))
