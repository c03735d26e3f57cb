"""bfloat16 against float32: the same params, a relative error bound derived from bfloat16's precision.

bfloat16 keeps 8 significant bits, so one rounding changes a value by a relative u = 2^-8 ≈ 0.0039 at most.
In the bfloat16 model the velocity passes through about N_ROUNDINGS roundings in sequence: per transformer
block the pre-norm, the q/k/v projection, the attention logits, the softmax, probs @ v, the output projection,
the residual add, the second pre-norm, the gate/up projection, the activation product, the down projection
and the second residual add (12); through the SigLIP blocks, then the Gemma blocks (the action tokens attend
to the prefix's keys of the same layer); plus the image projection, the action input projection, the time MLP
and the action output projection (4). The normalisations keep each error relative to its own activation
rather than amplifying it, and independent rounding errors add in quadrature, so the velocity's relative
error is expected below sqrt(N_ROUNDINGS) * u (N_ROUNDINGS * u = 0.30 would be the aligned worst case).
Measured on the tiny config (4 seeds, batch 8): 0.011-0.016 for the velocity, 0.008-0.011 for the sampler's
displacement; the bound is 0.034.

On CPU the float32 model runs in true float32 (relative error ~1e-7), so it is the reference; on TPU its
matmuls would default to bfloat16 passes, hence this file's figures are for CPU (as conftest sets).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_jax.model import Pi0

import model_utils

F32 = model_utils.tiny_config()
BF16 = model_utils.tiny_config(dtype="bfloat16")
U = 2.0**-8  # bfloat16's unit roundoff (8 significant bits).
ROUNDINGS_PER_BLOCK = 12
N_ROUNDINGS = ROUNDINGS_PER_BLOCK * (F32.siglip_config.depth + F32.gemma_configs[0].depth) + 4
VELOCITY_BOUND = math.sqrt(N_ROUNDINGS) * U
B = 8


def _rel(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.fixture(scope="module")
def inputs():
  params = model_utils.init_params(F32)
  obs = model_utils.random_observation(F32, batch_size=B, prompt_lengths=[6, 5, 4, 3, 6, 5, 4, 3])
  rng = np.random.default_rng(0)
  actions = jnp.asarray(rng.normal(size=(B, F32.action_horizon, F32.action_dim)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=actions.shape), jnp.float32)
  time = jnp.asarray(rng.uniform(0.001, 1.0, B), jnp.float32)
  return params, obs, actions, noise, time


def test_bound_is_the_one_stated():
  assert N_ROUNDINGS == 76 and round(VELOCITY_BOUND, 4) == 0.0341


def test_bf16_velocity_and_loss_against_float32(inputs):
  """Training's setting: float32 params, bfloat16 compute (Pi0Config.dtype="bfloat16").

  The summed loss L = |r|^2 / A with r = v - (noise - actions), so |dL| / L <= 2 |dv| / |r| (Cauchy-Schwarz)
  <= 2 * VELOCITY_BOUND * |v| / |r|, with |v| and |r| measured on the float32 model.
  """
  params, obs, actions, noise, time = inputs
  x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
  velocity = {cfg.dtype: jax.jit(lambda p, o, x, t, cfg=cfg: Pi0(cfg).apply(p, o, x, t))(params, obs, x_t, time)
              for cfg in (F32, BF16)}
  loss = {cfg.dtype: jax.jit(lambda p, o, a, n, t, cfg=cfg: Pi0(cfg).apply(
      p, o, a, method="compute_loss", noise=n, time=t))(params, obs, actions, noise, time) for cfg in (F32, BF16)}
  assert velocity["bfloat16"].dtype == jnp.float32 and loss["bfloat16"].dtype == jnp.float32

  v_err = _rel(velocity["bfloat16"], velocity["float32"])
  assert U / 4 < v_err < VELOCITY_BOUND, v_err  # Above U / 4: the bfloat16 path really rounds.

  v = np.asarray(velocity["float32"], np.float64)
  r = v - np.asarray(noise - actions, np.float64)
  np.testing.assert_allclose(np.asarray(loss["float32"]), (r**2).mean(-1), rtol=1e-5)  # The loss is |r|^2 / A.
  loss_bound = 2 * VELOCITY_BOUND * np.linalg.norm(v) / np.linalg.norm(r)
  loss_err = abs(float(np.sum(loss["bfloat16"])) / float(np.sum(loss["float32"])) - 1)
  assert loss_err < loss_bound, (loss_err, loss_bound)


def test_bf16_sampler_against_float32(inputs):
  """Serving's setting: params cast to bfloat16 (as a bfloat16 export stores them), bfloat16 compute.

  The chunk is noise - sum_k dt * v_k: its displacement from the noise averages the steps' velocities, so its
  relative error is below the velocity's bound (casting the params is one more rounding of each weight,
  which the bfloat16 matmuls make anyway).
  """
  params, obs, _, noise, _ = inputs
  params_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  chunk = {cfg.dtype: jax.jit(lambda p, o, n, cfg=cfg: Pi0(cfg).apply(
      p, o, method="sample_actions", noise=n, num_steps=10))(p, obs, noise)
           for cfg, p in ((F32, params), (BF16, params_bf16))}
  noise = np.asarray(noise, np.float64)
  displacement_err = _rel(np.asarray(chunk["bfloat16"]) - noise, np.asarray(chunk["float32"]) - noise)
  assert U / 4 < displacement_err < VELOCITY_BOUND, displacement_err
  assert np.all(np.isfinite(np.asarray(chunk["bfloat16"])))
