"""Flow-matching loss: masks, gradients, and that a tiny model can learn."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from pi0_jax.model import Pi0

import model_utils

CFG = model_utils.tiny_config()
B, H, A = 2, CFG.action_horizon, CFG.action_dim


@functools.partial(jax.jit, static_argnames=("reduce",))
def loss_fn(params, obs, actions, noise, time, pad_mask=None, dim_mask=None, reduce=True):
  per_step = Pi0(CFG).apply(params, obs, actions, method="compute_loss", noise=noise, time=time,
                            action_pad_mask=pad_mask, action_dim_mask=dim_mask)
  return jnp.sum(per_step) if reduce else per_step


grad_fn = jax.jit(jax.grad(loss_fn))


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(3)
  obs = model_utils.random_observation(CFG, batch_size=B)
  actions = jnp.asarray(rng.uniform(-1, 1, (B, H, A)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(B, H, A)), jnp.float32)
  time = jnp.array([0.25, 0.75], jnp.float32)
  return model_utils.init_params(CFG), obs, actions, noise, time


def test_loss_is_flow_matching_mse(batch):
  params, obs, actions, noise, time = batch
  per_step = loss_fn(params, obs, actions, noise, time, reduce=False)
  t = time[:, None, None]
  v = Pi0(CFG).apply(params, obs, t * noise + (1 - t) * actions, time)
  np.testing.assert_allclose(np.asarray(per_step), np.mean((np.asarray(v) - np.asarray(noise - actions))**2, -1),
                             rtol=1e-5)


def test_random_draws_are_normal_noise_and_beta_time(batch):
  params, obs, actions, _, _ = batch
  rng = jax.random.key(5)
  got = Pi0(CFG).apply(params, obs, actions, method="compute_loss", rng=rng)
  noise_rng, time_rng = jax.random.split(rng)
  noise = jax.random.normal(noise_rng, actions.shape)
  time = jax.random.beta(time_rng, 1.5, 1.0, (B,)) * 0.999 + 0.001
  np.testing.assert_allclose(np.asarray(got), np.asarray(loss_fn(params, obs, actions, noise, time, reduce=False)),
                             rtol=1e-6)
  # Beta(1.5, 1) puts more weight on the noisy end: mean 0.6.
  draws = jax.random.beta(jax.random.key(0), 1.5, 1.0, (20000,)) * 0.999 + 0.001
  assert float(jnp.mean(draws)) == pytest.approx(0.6 * 0.999 + 0.001, abs=0.01)
  assert float(jnp.min(draws)) >= 0.001


def test_padded_steps_and_dims_give_zero_loss_and_zero_gradient(batch):
  params, obs, actions, noise, time = batch
  pad_mask = jnp.array([[True, True, True, False], [True, False, False, False]])
  dim_mask = jnp.array([True] * 5 + [False] * 3)
  per_step = np.asarray(loss_fn(params, obs, actions, noise, time, pad_mask, dim_mask, reduce=False))
  assert (per_step[~np.asarray(pad_mask)] == 0).all() and (per_step[np.asarray(pad_mask)] > 0).all()
  # Mean over the real dimensions only.
  t = time[:, None, None]
  v = np.asarray(Pi0(CFG).apply(params, obs, t * noise + (1 - t) * actions, time))
  want = np.mean((v - np.asarray(noise - actions))[..., :5]**2, -1) * np.asarray(pad_mask)
  np.testing.assert_allclose(per_step, want, rtol=1e-5)

  # Change the targets on padded entries while keeping the model input x_t bit-identical: with t = 1/2
  # and values on a 1/8 grid, a -> a + d, noise -> noise - d leaves x_t exactly alone and moves u_t by -2d.
  rng = np.random.default_rng(0)
  grid = lambda shape: (rng.integers(-16, 16, shape) / 8).astype(np.float32)
  actions, noise, time = grid(actions.shape), grid(noise.shape), jnp.full((B,), 0.5)
  padded = ~(np.asarray(pad_mask)[:, :, None] & np.asarray(dim_mask)[None, None, :])
  delta = np.where(padded, grid(actions.shape) + 1, 0).astype(np.float32)
  actions2, noise2 = actions + delta, noise - delta
  np.testing.assert_array_equal(0.5 * noise2 + 0.5 * actions2, 0.5 * noise + 0.5 * actions)
  loss_a = loss_fn(params, obs, actions, noise, time, pad_mask, dim_mask)
  loss_b = loss_fn(params, obs, actions2, noise2, time, pad_mask, dim_mask)
  assert float(loss_a) == float(loss_b)
  grads_a = grad_fn(params, obs, actions, noise, time, pad_mask, dim_mask)
  grads_b = grad_fn(params, obs, actions2, noise2, time, pad_mask, dim_mask)
  for (path, ga), gb in zip(jax.tree_util.tree_leaves_with_path(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_array_equal(np.asarray(ga), np.asarray(gb), err_msg=str(path))
  # Without the masks, the same change does move the loss.
  assert float(loss_fn(params, obs, actions, noise, time)) != pytest.approx(
      float(loss_fn(params, obs, actions2, noise2, time)), rel=1e-3)


def test_gradients_reach_every_parameter(batch):
  params, obs, actions, noise, time = batch
  grads = traverse_util.flatten_dict(grad_fn(params, obs, actions, noise, time), sep="/")
  zero = {k for k, g in grads.items() if not np.any(np.asarray(g) != 0)}
  # Structurally unused by the action loss: expert 0's final norm (prefix outputs are never read).
  assert zero == {"params/PaliGemma/llm/final_norm/scale"}
  depth = CFG.gemma_configs[0].depth
  # The last layer's expert-0 MLP only feeds prefix outputs; every earlier layer gets gradient.
  for name in ("PaliGemma/llm/layers/mlp/linear", "PaliGemma/llm/layers/pre_ffw_norm/scale"):
    g = np.asarray(grads["params/" + name])
    assert all(np.any(g[l] != 0) for l in range(depth - 1)) and not np.any(g[depth - 1] != 0), name
  for name in ("q_einsum_1/w", "kv_einsum_1/w", "attn_vec_einsum_1/w"):
    g = np.asarray(grads["params/PaliGemma/llm/layers/attn/" + name])
    assert all(np.any(g[l] != 0) for l in range(depth)), name
  # Only the prompt's tokens get embedding gradient.
  emb = np.asarray(grads["params/PaliGemma/llm/embedder/input_embedding"])
  used = set(np.asarray(obs.tokenized_prompt)[np.asarray(obs.tokenized_prompt_mask)].tolist())
  assert {i for i in range(CFG.vocab_size) if np.any(emb[i] != 0)} == used


def test_tiny_model_overfits_one_batch(batch):
  params, obs, actions, noise, time = batch
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params, obs, actions, noise, time)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(200):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
