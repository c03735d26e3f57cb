"""The KV-cached Euler sampler and the causal structure of the prefix/suffix sequence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_jax.model import Pi0

import model_utils

CFG = model_utils.tiny_config()


@functools.partial(jax.jit, static_argnames=("config", "use_kv_cache", "num_steps"))
def sample(params, obs, noise, *, config=CFG, use_kv_cache=True, num_steps=10):
  return Pi0(config).apply(params, obs, method="sample_actions", noise=noise, use_kv_cache=use_kv_cache,
                           num_steps=num_steps)


@pytest.fixture(scope="module")
def setup():
  params = model_utils.init_params(CFG)
  obs = model_utils.random_observation(CFG, batch_size=3, prompt_lengths=[6, 2, 4])
  noise = jax.random.normal(jax.random.key(7), (3, CFG.action_horizon, CFG.action_dim))
  return params, obs, noise


def test_cached_sampler_equals_uncached_reference(setup):
  params, obs, noise = setup
  cached = np.asarray(sample(params, obs, noise))
  reference = np.asarray(sample(params, obs, noise, use_kv_cache=False))
  np.testing.assert_allclose(cached, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
  assert cached.shape == (3, CFG.action_horizon, CFG.action_dim)
  assert np.abs(cached - np.asarray(noise)).max() > 1e-2  # it did integrate


def test_sampler_is_euler_integration_of_the_velocity(setup):
  params, obs, noise = setup
  model = Pi0(CFG)
  x, t = np.asarray(noise), np.float32(1.0)
  for _ in range(3):
    v = model.apply(params, obs, jnp.asarray(x), jnp.full((3,), t), method="__call__")
    x, t = x + np.float32(-1 / 3) * np.asarray(v), t + np.float32(-1 / 3)
  got = sample(params, obs, noise, num_steps=3, use_kv_cache=False)
  np.testing.assert_allclose(np.asarray(got), x, rtol=1e-5, atol=1e-5)


def test_sampler_is_deterministic_and_batch_independent(setup):
  params, obs, noise = setup
  a = np.asarray(sample(params, obs, noise))
  np.testing.assert_array_equal(a, np.asarray(sample(params, obs, noise)))
  one = jax.tree.map(lambda x: x[1:2], obs)
  np.testing.assert_allclose(np.asarray(sample(params, one, noise[1:2]))[0], a[1], rtol=1e-5, atol=1e-6)
  rng_a = Pi0(CFG).apply(params, obs, method="sample_actions", rng=jax.random.key(1))
  rng_b = Pi0(CFG).apply(params, obs, method="sample_actions", rng=jax.random.key(2))
  assert np.abs(np.asarray(rng_a) - np.asarray(rng_b)).max() > 1e-3


def test_suffix_never_changes_prefix_activations(setup):
  params, obs, _ = setup
  model = Pi0(CFG)
  fwd = jax.jit(lambda p, o, x, t: model.apply(p, o, x, t, method="joint_forward"))
  x1 = jax.random.normal(jax.random.key(1), (3, CFG.action_horizon, CFG.action_dim))
  x2 = jax.random.normal(jax.random.key(2), x1.shape)
  prefix1, v1 = fwd(params, obs, x1, jnp.full((3,), 0.2))
  other_state = obs.replace(state=obs.state + 5.0)
  prefix2, v2 = fwd(params, other_state, x2, jnp.full((3,), 0.8))
  valid = np.concatenate([np.repeat(np.asarray(obs.image_masks[k])[:, None], CFG.num_image_tokens, 1)
                          for k in CFG.image_keys] + [np.asarray(obs.tokenized_prompt_mask)], 1)
  assert not valid.all()  # padding tokens attend to nothing valid; their outputs are meaningless
  np.testing.assert_array_equal(np.asarray(prefix1)[valid], np.asarray(prefix2)[valid])
  assert np.abs(np.asarray(v1) - np.asarray(v2)).max() > 1e-3


def test_prompt_and_images_change_actions(setup):
  params, obs, noise = setup
  base = np.asarray(sample(params, obs, noise))
  tokens = np.asarray(obs.tokenized_prompt).copy()
  tokens[:, 0] = (tokens[:, 0] % (CFG.vocab_size - 1)) + 1
  other_prompt = obs.replace(tokenized_prompt=jnp.asarray(tokens))
  assert np.abs(np.asarray(sample(params, other_prompt, noise)) - base).min(axis=(1, 2)).max() > 0
  assert (np.abs(np.asarray(sample(params, other_prompt, noise)) - base).max(axis=(1, 2)) > 1e-4).all()
  for key in CFG.image_keys:
    other_image = obs.replace(images={**obs.images, key: -obs.images[key]})
    assert (np.abs(np.asarray(sample(params, other_image, noise)) - base).max(axis=(1, 2)) > 1e-4).all(), key


def test_masked_camera_slot_has_no_effect(setup):
  params, obs, noise = setup
  wrist = "left_wrist_0_rgb"
  masked = obs.replace(image_masks={**obs.image_masks, wrist: jnp.zeros((3,), bool)})
  a = np.asarray(sample(params, masked, noise))
  b = np.asarray(sample(params, masked.replace(images={**obs.images, wrist: jnp.zeros_like(obs.images[wrist])}), noise))
  np.testing.assert_array_equal(a, b)
  # ... and equals a model without that camera slot at all: padding does not advance positions either.
  one_camera = CFG.replace(image_keys=("base_0_rgb",))
  only_base = masked.replace(images={"base_0_rgb": obs.images["base_0_rgb"]},
                             image_masks={"base_0_rgb": obs.image_masks["base_0_rgb"]})
  c = np.asarray(sample(params, only_base, noise, config=one_camera))
  np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_prompt_padding_is_invisible(setup):
  params, obs, noise = setup
  # Sample 1 has 2 real prompt tokens: a model with max_token_len 2 must give the same actions.
  short = CFG.replace(max_token_len=2)
  one = jax.tree.map(lambda x: x[1:2], obs)
  cut = one.replace(tokenized_prompt=one.tokenized_prompt[:, :2], tokenized_prompt_mask=one.tokenized_prompt_mask[:, :2])
  a = np.asarray(sample(params, one, noise[1:2]))
  b = np.asarray(sample(params, cut, noise[1:2], config=short))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_observation_names_the_field(setup):
  params, obs, noise = setup
  bad = obs.replace(state=obs.state[:, :3])
  with pytest.raises(ValueError, match=r"state: shape \(3, 3\), expected \(3, 8\)"):
    sample(params, bad, noise)
  missing = obs.replace(images={"base_0_rgb": obs.images["base_0_rgb"]})
  with pytest.raises(ValueError, match=r"missing \['left_wrist_0_rgb'\]"):
    sample(params, missing, noise)
  with pytest.raises(ValueError, match=r"noise: shape \(3, 4, 7\), expected \(3, 4, 8\)"):
    sample(params, obs, noise[..., :7])
