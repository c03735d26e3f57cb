"""Real-time chunking in the model: guided inpainting (arXiv 2506.07339) and training-time delays (2512.05964)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_jax.data import normalize
from pi0_jax.model import Pi0
from pi0_jax.model.pi0 import prefix_weights
from pi0_jax.policy import Policy

import model_utils

CFG = model_utils.tiny_config()
TRAINED = CFG.replace(rtc_max_delay=2)
B, H, A = 2, CFG.action_horizon, CFG.action_dim


@functools.partial(jax.jit, static_argnames=("config", "num_steps", "mode", "schedule", "guided", "beta"))
def sample(params, obs, noise, prev, delay, beta, *, config=CFG, num_steps=4, mode=None, schedule="exp",
           guided=True):
  kwargs = dict(prev_actions=prev, inference_delay=delay, mode=mode) if guided else {}
  if guided and (mode or ("trained" if config.rtc_max_delay else "guided")) == "guided":
    kwargs.update(execution_horizon=2, schedule=schedule, max_guidance_weight=beta)
  return Pi0(config).apply(params, obs, method="sample_actions", noise=noise, num_steps=num_steps, **kwargs)


@functools.partial(jax.jit, static_argnames=("config",))
def velocity(params, obs, x, time, config=CFG):
  return Pi0(config).apply(params, obs, x, time)


@pytest.fixture(scope="module")
def setup():
  obs = model_utils.random_observation(CFG, batch_size=B, prompt_lengths=[6, 3])
  noise = jax.random.normal(jax.random.key(7), (B, H, A))
  prev = jax.random.normal(jax.random.key(8), (B, H, A))
  return model_utils.init_params(CFG), obs, noise, prev


def ref_weights(start, end, total, schedule):
  """The prefix weights from their definition, one step at a time."""
  start = min(start, end)
  out = []
  for i in range(total):
    if i >= end:
      w = 0.0
    elif schedule == "ones" or i < start:
      w = 1.0
    elif schedule == "zeros":
      w = 0.0
    else:  # linear from 1 (at start - 1) down to 0 (at end)
      w = (end - i) / (end - start + 1)
      w = w * math.expm1(w) / (math.e - 1) if schedule == "exp" else w
    out.append(w)
  return np.array(out)


@pytest.mark.parametrize("schedule", ["exp", "linear", "ones", "zeros"])
def test_prefix_weights_follow_the_definition(schedule):
  for start, end, total in [(2, 6, 10), (0, 4, 4), (3, 3, 8), (5, 2, 8), (1, 0, 4)]:
    np.testing.assert_allclose(np.asarray(prefix_weights(start, end, total, schedule)),
                               ref_weights(start, end, total, schedule), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(prefix_weights(2, 6, 10, "linear")), [1, 1, .8, .6, .4, .2, 0, 0, 0, 0],
                             atol=1e-6)
  batched = prefix_weights(jnp.array([1, 2]), jnp.array([3, 2]), 4, schedule)
  np.testing.assert_allclose(np.asarray(batched), [ref_weights(1, 3, 4, schedule), ref_weights(2, 2, 4, schedule)],
                             rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="schedule 'cosine'"):
    prefix_weights(1, 3, 4, "cosine")


def reference_guided(params, obs, noise, prev, delays, s, beta, num_steps, schedule="exp"):
  """The guided Euler sampler written from the formulas: full (uncached) passes, a VJP per step."""
  model = Pi0(CFG)
  weights = jnp.asarray(np.stack([ref_weights(d, H - s, H, schedule) for d in delays])[..., None], jnp.float32)
  dt = np.float32(-1.0 / num_steps)

  @jax.jit
  def euler_step(x, t, w):
    velocity = lambda y: model.apply(params, obs, y, jnp.full((B,), t))
    a_hat, vjp = jax.vjp(lambda y: y - t * velocity(y), x)
    (g,) = vjp(weights * (prev - a_hat))
    return x + dt * (velocity(x) - w * g)

  x, t = noise, np.float32(1.0)
  for _ in range(num_steps):
    w = beta if t == 1 else min(beta, t / (1 - t) * (t**2 + (1 - t)**2) / t**2)
    x = euler_step(x, t, np.float32(w))
    t = t + dt
  return np.asarray(x)


def test_guided_sampler_matches_reference(setup):
  params, obs, noise, prev = setup
  delays = [1, 2]
  got = np.asarray(sample(params, obs, noise, prev, jnp.array(delays), 5.0))
  want = reference_guided(params, obs, noise, prev, delays, 2, 5.0, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  assert np.abs(got - np.asarray(sample(params, obs, noise, prev, 0, 0.0, guided=False))).max() > 1e-2


def test_guidance_pins_the_executed_prefix(setup):
  params, obs, noise, prev = setup
  delays = jnp.array([2, 1])
  guided = np.asarray(sample(params, obs, noise, prev, delays, 5.0, num_steps=10))
  plain = np.asarray(sample(params, obs, noise, prev, delays, 0.0, num_steps=10, guided=False))
  prev = np.asarray(prev)
  for b, d in enumerate([2, 1]):
    guided_err = np.abs(guided[b, :d] - prev[b, :d]).mean()
    plain_err = np.abs(plain[b, :d] - prev[b, :d]).mean()
    assert guided_err < 0.2 * plain_err, (b, guided_err, plain_err)
  # The steps past H - s have weight 0 but still move: the flow keeps them consistent with the pinned prefix.
  assert np.abs(guided[:, 2:] - plain[:, 2:]).max() > 1e-3


def test_zero_guidance_is_the_plain_sampler(setup):
  params, obs, noise, prev = setup
  plain = np.asarray(sample(params, obs, noise, prev, 0, 0.0, guided=False))
  np.testing.assert_array_equal(np.asarray(sample(params, obs, noise, prev, jnp.array([1, 2]), 0.0)), plain)
  # A traced beta = 0 runs the VJP, multiplies it by 0, and lands on the same actions up to float rounding.
  traced = np.asarray(jax.jit(lambda p, o, n, pr, beta: Pi0(CFG).apply(
      p, o, method="sample_actions", noise=n, num_steps=4, prev_actions=pr, inference_delay=1, execution_horizon=2,
      max_guidance_weight=beta))(params, obs, noise, prev, jnp.float32(0.0)))
  np.testing.assert_allclose(traced, plain, rtol=1e-6, atol=1e-6)


def test_trained_mode_feeds_prev_as_clean_tokens(setup):
  params, obs, noise, prev = setup
  delays = np.array([2, 1])
  got = np.asarray(sample(params, obs, noise, prev, jnp.asarray(delays), 0.0, config=TRAINED))
  frozen = (np.arange(H)[None, :] < delays[:, None])
  # Reference: per-token time 0 on the first d steps, which stay prev; Euler on the rest.
  x, t = np.where(frozen[..., None], prev, noise), np.float32(1.0)
  for _ in range(4):
    v = np.asarray(velocity(params, obs, jnp.asarray(x), jnp.asarray(np.where(frozen, 0.0, t), jnp.float32),
                            config=TRAINED))
    x = np.where(frozen[..., None], prev, x + np.float32(-0.25) * v)
    t = t + np.float32(-0.25)
  np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5 * np.abs(x).max())
  np.testing.assert_array_equal(got[frozen], np.asarray(prev)[frozen])


def test_per_token_time_equal_to_the_scalar_is_the_scalar_path(setup):
  params, obs, noise, _ = setup
  time = jnp.array([0.3, 0.8])
  scalar = np.asarray(velocity(params, obs, noise, time))
  per_token = np.asarray(velocity(params, obs, noise, jnp.broadcast_to(time[:, None], (B, H))))
  np.testing.assert_allclose(per_token, scalar, rtol=1e-6, atol=1e-7)
  # ... and the per-token time acts per token.
  mixed = np.asarray(velocity(params, obs, noise, jnp.array([[0.3, 0.0, 0.3, 0.3], [0.8] * 4])))
  assert np.abs(mixed - scalar)[0].max() > 1e-4
  np.testing.assert_allclose(mixed[1], scalar[1], rtol=1e-6, atol=1e-7)


def loss(params, obs, actions, config, **kw):
  return np.asarray(jax.jit(lambda p: Pi0(config).apply(p, obs, actions, method="compute_loss", **kw))(params))


def test_loss_without_rtc_is_unchanged_bit_for_bit(setup):
  params, obs, noise, _ = setup
  actions = jax.random.uniform(jax.random.key(3), (B, H, A), minval=-1, maxval=1)
  rng = jax.random.key(11)
  got = loss(params, obs, actions, CFG, rng=rng)

  def old_path(p):  # the loss as written before per-token times: same draws, same ops
    noise_rng, time_rng = jax.random.split(rng)
    n = jax.random.normal(noise_rng, actions.shape, jnp.float32)
    time = jax.random.beta(time_rng, 1.5, 1.0, (B,)) * 0.999 + 0.001
    t = time[:, None, None]
    v = Pi0(CFG).apply(p, obs, t * n + (1 - t) * actions, time, method="_velocity_uncached")
    return jnp.mean(jnp.square(v - (n - actions)), axis=-1)

  np.testing.assert_array_equal(got, np.asarray(jax.jit(old_path)(params)))


def test_loss_with_delay_conditions_on_clean_prefix(setup):
  params, obs, noise, _ = setup
  actions = jax.random.uniform(jax.random.key(3), (B, H, A), minval=-1, maxval=1)
  time = jnp.array([0.4, 0.9])
  delay = jnp.array([1, 2])
  got = loss(params, obs, actions, TRAINED, noise=noise, time=time, delay=delay)
  frozen = np.arange(H)[None, :] < np.asarray(delay)[:, None]
  token_time = np.where(frozen, 0.0, np.asarray(time)[:, None]).astype(np.float32)
  x_t = np.where(frozen[..., None], actions, token_time[..., None] * noise + (1 - token_time[..., None]) * actions)
  v = np.asarray(velocity(params, obs, jnp.asarray(x_t), jnp.asarray(token_time), config=TRAINED))
  want = np.where(frozen, 0.0, np.mean((v - np.asarray(noise - actions))**2, -1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert (got[frozen] == 0).all() and (got[~frozen] > 0).all()
  # Drawn: delay ~ U{0..rtc_max_delay} from its own stream; noise and time are the draws of a model without RTC.
  rng = jax.random.key(4)
  noise_rng, time_rng = jax.random.split(rng)
  drawn = jax.random.randint(jax.random.fold_in(rng, 2), (B,), 0, TRAINED.rtc_max_delay + 1)
  np.testing.assert_allclose(loss(params, obs, actions, TRAINED, rng=rng), loss(
      params, obs, actions, TRAINED, noise=jax.random.normal(noise_rng, actions.shape),
      time=jax.random.beta(time_rng, 1.5, 1.0, (B,)) * 0.999 + 0.001, delay=drawn), rtol=1e-6, atol=1e-8)
  draws = np.asarray(jax.random.randint(jax.random.key(0), (3000,), 0, TRAINED.rtc_max_delay + 1))
  assert set(np.unique(draws)) == {0, 1, 2}


def test_bad_rtc_arguments_are_named(setup):
  params, obs, noise, prev = setup
  model = Pi0(CFG)
  run = lambda **kw: model.apply(params, obs, method="sample_actions", noise=noise, prev_actions=prev, **kw)
  with pytest.raises(ValueError, match=r"d=\[3, 3\], execution_horizon s=\[2, 2\]"):
    run(inference_delay=3, execution_horizon=2)
  with pytest.raises(ValueError, match="needs inference_delay and execution_horizon"):
    run(inference_delay=1)
  with pytest.raises(ValueError, match=r"prev_actions: shape \(2, 4, 7\)"):
    model.apply(params, obs, method="sample_actions", noise=noise, prev_actions=prev[..., :7], inference_delay=1,
                execution_horizon=2)
  with pytest.raises(ValueError, match="rtc_max_delay 2"):
    Pi0(TRAINED).apply(params, obs, method="sample_actions", noise=noise, prev_actions=prev, inference_delay=3)
  with pytest.raises(ValueError, match=r"rtc_max_delay must be in \[0, action_horizon=4\), got 4"):
    CFG.replace(rtc_max_delay=4)


def test_policy_passes_the_plan_through_normalised(setup):
  params, _, noise, _ = setup
  stats = {k: {"mean": [0.5] * 6, "std": [2.0] * 6, "q01": [-3.0] * 6, "q99": [3.0] * 6} for k in ("state", "actions")}
  policy = Policy(CFG, params["params"], tokenizer=lambda p: (np.arange(1, 7, dtype=np.int32), np.ones(6, bool)),
                  norm_stats=stats, camera_map={"base_0_rgb": "image", "left_wrist_0_rgb": None})
  raw = {"images": {"image": np.full((40, 30, 3), 90, np.uint8)}, "state": np.zeros(6), "prompt": "x"}
  plan = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)  # n = 2 planned actions: s = H - n = 2
  got = policy.infer(raw, noise=noise[0], num_steps=4, prev_actions=plan, inference_delay=1)["actions"]
  observation, _ = policy.prepare(raw)
  padded = np.zeros((1, H, A), np.float32)
  padded[0, :2, :6] = (plan - 0.5) / (2.0 + normalize.EPS)
  want = policy.unnormalize_actions(sample(params, jax.tree.map(jnp.asarray, observation), noise[:1], padded,
                                           jnp.array([1]), 5.0))[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  plain = policy.infer(raw, noise=noise[0], num_steps=4)["actions"]
  assert np.abs(got[:1] - plan[:1]).max() < 0.5 * np.abs(plain[:1] - plan[:1]).max()
  with pytest.raises(ValueError, match="inference_delay 3: expected 0 <= d <= 2 for 2 planned actions"):
    policy.infer(raw, noise=noise[0], prev_actions=plan, inference_delay=3)
