"""The train step's arithmetic: gradient accumulation, the loss normalisation, EMA, and that it learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_utils
from pi0_jax.model import Pi0
from pi0_jax.train import optimizer, step

# eps 1e-2 (as in test_train_sharding): Adam's m / sqrt(v) would turn rounding noise in near-zero gradients into
# whole learning-rate steps, hiding what is compared.
OPT = dict(peak_lr=1e-3, warmup_steps=0, decay_steps=20, end_lr=1e-4, b1=0.9, b2=0.95, eps=1e-2, weight_decay=1e-4,
           clip_grad_norm=1.0)
BATCH = 8
_JITTED = {}


@pytest.fixture(scope="module")
def fixed():
  """A tiny model, its optimizer, initial params, and a batch with fixed flow-matching draws."""
  cfg = model_utils.tiny_config()
  model = Pi0(cfg)
  params = jax.device_get(model_utils.init_params(cfg)["params"])
  tx, schedule = optimizer.make_optimizer(OPT, params)
  rng = np.random.default_rng(0)
  pad = np.ones((BATCH, cfg.action_horizon), bool)
  pad[::3, -2:] = False  # Some padded steps, unevenly over the micro-batches.
  dim = np.ones((BATCH, cfg.action_dim), bool)
  dim[:, 5:] = False
  batch = {"observation": model_utils.random_observation(cfg, batch_size=BATCH, seed=1,
                                                         prompt_lengths=[6 - i % 4 for i in range(BATCH)]),
           "actions": jnp.asarray(rng.uniform(-1, 1, (BATCH, cfg.action_horizon, cfg.action_dim)), jnp.float32),
           "action_pad_mask": jnp.asarray(pad), "action_dim_mask": jnp.asarray(dim),
           "noise": jnp.asarray(rng.normal(size=(BATCH, cfg.action_horizon, cfg.action_dim)), jnp.float32),
           "time": jnp.asarray(rng.uniform(0.001, 1.0, BATCH), jnp.float32)}
  return model, tx, schedule, params, batch


def _steps(fixed, n: int, *, grad_accum_steps: int = 1, ema_decay: float | None = None):
  """n steps on the same batch; returns the states after each step (host copies) and the metrics."""
  model, tx, schedule, params, batch = fixed
  state = step.init_state(model, tx, jax.random.key(3), ema=ema_decay is not None, params=params)
  key = (grad_accum_steps, ema_decay)
  if key not in _JITTED:  # One compile per variant for the whole module.
    _JITTED[key] = jax.jit(step.make_train_step(model, tx, schedule, grad_accum_steps=grad_accum_steps,
                                                ema_decay=ema_decay))
  train_step = _JITTED[key]
  states, metrics = [jax.device_get(state)], []
  for _ in range(n):
    state, m = train_step(state, batch)
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return states, metrics


@pytest.fixture(scope="module")
def one_batch(fixed):
  return _steps(fixed, 1)


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_equals_one_batch(fixed, one_batch, k):
  (_, want), (m_want,) = one_batch
  (_, got), (m_got,) = _steps(fixed, 1, grad_accum_steps=k)
  for key in ("loss", "grad_norm", "update_norm", "valid_action_steps"):
    np.testing.assert_allclose(m_got[key], m_want[key], rtol=2e-5, err_msg=key)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got["params"]), jax.tree.leaves(want["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_loss_is_the_mean_over_real_action_steps(fixed, one_batch):
  model, _, _, params, batch = fixed
  _, (m,) = one_batch
  per_step = model.apply({"params": params}, batch["observation"], batch["actions"], method="compute_loss",
                         noise=batch["noise"], time=batch["time"], action_pad_mask=batch["action_pad_mask"],
                         action_dim_mask=batch["action_dim_mask"])
  real = np.asarray(batch["action_pad_mask"])
  assert m["valid_action_steps"] == real.sum() < real.size
  np.testing.assert_allclose(m["loss"], np.asarray(per_step)[real].mean(), rtol=1e-6)


def test_loss_decreases_on_a_fixed_batch(fixed):
  _, metrics = _steps(fixed, 5)
  losses = [float(m["loss"]) for m in metrics]
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert losses[-1] < 0.9 * losses[0], losses


def test_ema_matches_numpy(fixed):
  decay = 0.8
  states, _ = _steps(fixed, 3, ema_decay=decay)
  flat = [jax.tree.leaves(s["params"]) for s in states]
  for i, leaf in enumerate(jax.tree.leaves(states[-1]["ema_params"])):
    want = np.asarray(flat[0][i], np.float64)  # EMA starts at the initial params ...
    for params in flat[1:]:  # ... and after each update moves towards the new params.
      want = decay * want + (1 - decay) * np.asarray(params[i], np.float64)
    np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-7)
  # And it lags: not yet the latest params.
  assert any(not np.allclose(e, p) for e, p in zip(jax.tree.leaves(states[-1]["ema_params"]), flat[-1]))


@pytest.fixture(scope="module")
def rtc_fixed(fixed):
  """The fixed batch, for the same tiny model trained with real-time chunking (rtc_max_delay = 2)."""
  model, tx, schedule, params, batch = fixed
  return Pi0(model.config.replace(rtc_max_delay=2)), tx, schedule, params, batch


@pytest.mark.parametrize("given", [True, False], ids=["fixed_delay", "drawn_delay"])
def test_rtc_loss_is_the_mean_over_steps_that_carry_loss(rtc_fixed, given):
  """The first d steps are fed clean and get no loss: the mean leaves them out (not only the padded ones)."""
  model, tx, schedule, params, batch = rtc_fixed
  state = step.init_state(model, tx, jax.random.key(3), ema=False, params=params)
  if given:
    delay = jnp.asarray([0, 1, 2, 2, 1, 0, 2, 1], jnp.int32)
    batch = {**batch, "delay": delay}
  else:  # Drawn in the step from its key, as the model would draw it.
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0)
    delay = jax.random.randint(jax.random.fold_in(step_rng, 2), (BATCH,), 0, 3)
  _, m = jax.jit(step.make_train_step(model, tx, schedule))(state, batch)
  per_step = model.apply({"params": params}, batch["observation"], batch["actions"], method="compute_loss",
                         noise=batch["noise"], time=batch["time"], action_pad_mask=batch["action_pad_mask"],
                         action_dim_mask=batch["action_dim_mask"], delay=delay)
  horizon = model.config.action_horizon
  live = np.asarray(batch["action_pad_mask"]) & (np.arange(horizon)[None, :] >= np.asarray(delay)[:, None])
  assert np.asarray(delay).any() and live.sum() < np.asarray(batch["action_pad_mask"]).sum()
  assert m["valid_action_steps"] == live.sum()
  np.testing.assert_allclose(m["loss"], np.asarray(per_step)[live].mean(), rtol=1e-6)
