"""The model against a float64 numpy reference written from the SPEC, and the mask/position rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_jax.model import Pi0, make_attn_mask, posemb_sincos
from pi0_jax.model.gemma import apply_rope

import model_utils


def test_velocity_matches_numpy_reference():
  cfg = model_utils.tiny_config()
  params = model_utils.init_params(cfg)
  obs = model_utils.random_observation(cfg, batch_size=2, prompt_lengths=[6, 3])
  obs = obs.replace(image_masks={**obs.image_masks, "left_wrist_0_rgb": jnp.array([True, False])})
  rng = np.random.default_rng(1)
  x_t = rng.normal(size=(2, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
  time = np.array([0.3, 0.9], np.float32)
  got = jax.jit(lambda p, o, x, t: Pi0(cfg).apply(p, o, x, t))(params, obs, x_t, time)
  want = model_utils.np_velocity(params, cfg, obs, x_t, time)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5)


def test_attention_mask_follows_block_causal_rule():
  # Prefix of 4 (last one padding), state token, 3 action tokens.
  input_mask = jnp.array([[True, True, True, False, True, True, True, True]])
  ar = jnp.array([0, 0, 0, 0, 1, 1, 0, 0], bool)
  got = np.asarray(make_attn_mask(input_mask, ar))[0]
  n_prefix = 4
  want = np.zeros((8, 8), bool)
  for q in range(8):
    for k in range(8):
      if not (input_mask[0, q] and input_mask[0, k]):
        continue
      if q < n_prefix:
        want[q, k] = k < n_prefix  # prefix: bidirectional, never sees the suffix
      elif q == n_prefix:
        want[q, k] = k <= n_prefix  # state: prefix + itself
      else:
        want[q, k] = True  # actions: everything valid
  np.testing.assert_array_equal(got, want)
  assert not got[3].any() and not got[:, 3].any()


def test_posemb_sincos_values():
  t = jnp.array([0.0, 0.25, 1.0])
  emb = np.asarray(posemb_sincos(t, 8, 4e-3, 4.0))
  period = 4e-3 * (4.0 / 4e-3)**np.linspace(0, 1, 4)
  ang = np.asarray(t)[:, None] * 2 * np.pi / period
  np.testing.assert_allclose(emb, np.concatenate([np.sin(ang), np.cos(ang)], -1), atol=2e-4)  # f32 angles up to ~1.6e3 rad
  np.testing.assert_array_equal(emb[0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_rope_rotates_split_halves():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 2, 8)), jnp.float32)
  pos = jnp.array([[0, 1, 5]])
  out = np.asarray(apply_rope(x, pos))
  np.testing.assert_allclose(out[0, 0], x[0, 0], rtol=1e-6)  # position 0 is the identity
  # Relative property: <rope(q, m), rope(k, n)> depends only on m - n.
  q, k = x[:, :1], x[:, 1:2]
  dot = lambda m, n: float(jnp.sum(apply_rope(q, jnp.array([[m]])) * apply_rope(k, jnp.array([[n]]))))
  assert dot(7, 3) == pytest.approx(dot(14, 10), rel=1e-4)
  freq = 10_000.0**(2 * np.arange(4) / 8)
  ang = 5 / freq
  x1, x2 = np.asarray(x[0, 2, 0, :4]), np.asarray(x[0, 2, 0, 4:])
  np.testing.assert_allclose(out[0, 2, 0], np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                                                           x2 * np.cos(ang) + x1 * np.sin(ang)]), rtol=1e-5)
