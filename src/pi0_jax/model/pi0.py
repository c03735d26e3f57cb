"""pi0: PaliGemma (SigLIP + Gemma) plus an action expert, trained by flow matching.

Prefix tokens (images of every camera slot, then the prompt) go through expert 0;
suffix tokens (one state token, then H noisy action tokens carrying the flow
time) go through expert 1. Flow convention (as in openpi): t = 1 is noise,
t = 0 is data, x_t = t * noise + (1 - t) * actions, and the model predicts the
velocity u_t = noise - actions. Sampling integrates from t = 1 to t = 0 with
Euler steps, computing the prefix once and reusing its K/V cache.

Real-time chunking (RTC): while the robot executes a chunk, the next one is
sampled so that it continues the actions still to come. Two ways, both in
`sample_actions(..., prev_actions=...)`: guided inpainting (Black et al. 2025,
arXiv 2506.07339) of any model, and, for a model trained with
`Pi0Config.rtc_max_delay > 0` (arXiv 2512.05964), feeding the first d actions of
the previous plan as clean action tokens at flow time 0.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pi0_jax.model.config import Pi0Config
from pi0_jax.model.gemma import Gemma
from pi0_jax.model.observation import Observation
from pi0_jax.model.siglip import Siglip


def make_attn_mask(input_mask, ar_mask):
  """Block-causal mask from validity and autoregressive flags.

  input_mask bool [B, N]; ar_mask bool/int [N] or [B, N]. With c = cumsum(ar),
  query q may attend key k iff c[k] <= c[q] and both tokens are valid.
  Returns bool [B, N (queries), N (keys)].
  """
  ar_mask = jnp.broadcast_to(ar_mask, input_mask.shape)
  cumsum = jnp.cumsum(ar_mask.astype(jnp.int32), axis=1)
  causal = cumsum[:, None, :] <= cumsum[:, :, None]
  valid = input_mask[:, None, :] & input_mask[:, :, None]
  return causal & valid


def posemb_sincos(pos, embedding_dim: int, min_period: float, max_period: float):
  """Sine-cosine embedding of scalars pos [...] -> [..., embedding_dim] (sin half first)."""
  if embedding_dim % 2:
    raise ValueError(f"posemb_sincos: embedding_dim must be even, got {embedding_dim}.")
  fraction = jnp.linspace(0.0, 1.0, embedding_dim // 2)
  period = min_period * (max_period / min_period)**fraction
  angle = pos[..., None].astype(jnp.float32) * (1.0 / period * 2 * jnp.pi)
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


PREFIX_SCHEDULES = ("exp", "linear", "ones", "zeros")


def prefix_weights(start, end, total: int, schedule: str = "exp"):
  """RTC's soft mask over a chunk's steps: [...] starts/ends -> [..., total] weights.

  1 for steps i < start (the actions executed while inference runs), decaying to 0 at i = end (the last step the
  previous plan covers), 0 from there on; `end` wins over `start`. "linear" decays linearly, "exp" maps the linear
  weight w to w * expm1(w) / (e - 1), "ones" is 1 up to `end`, "zeros" is 1 only before `start`.
  """
  if schedule not in PREFIX_SCHEDULES:
    raise ValueError(f"schedule {schedule!r}: expected one of {PREFIX_SCHEDULES}.")
  end = jnp.asarray(end, jnp.float32)[..., None]
  start = jnp.minimum(jnp.asarray(start, jnp.float32)[..., None], end)
  i = jnp.arange(total, dtype=jnp.float32)
  if schedule == "ones":
    w = jnp.ones_like(i * start)
  elif schedule == "zeros":
    w = (i < start).astype(jnp.float32)
  else:
    w = jnp.clip((start - 1 - i) / (end - start + 1) + 1, 0.0, 1.0)
    if schedule == "exp":
      w = w * jnp.expm1(w) / (math.e - 1)
  return jnp.where(i >= end, 0.0, w)


def guidance_weight(time, max_guidance_weight):
  """RTC's guidance weight at flow time t (1 = noise): min(beta, t / (1 - t) * (t^2 + (1 - t)^2) / t^2).

  The reference's formula with its time reversed; beta at t = 1.
  """
  t = jnp.asarray(time, jnp.float32)
  safe = jnp.clip(t, 1e-6, 1 - 1e-6)
  w = safe / (1 - safe) * (safe**2 + (1 - safe)**2) / safe**2
  return jnp.where(t >= 1, max_guidance_weight, jnp.minimum(max_guidance_weight, w))


class PaliGemma(nn.Module):
  """Holds `img` and `llm` so the parameter tree reads PaliGemma/img, PaliGemma/llm."""

  config: Pi0Config

  def setup(self):
    cfg = self.config
    gemma_configs = cfg.gemma_configs
    self.llm = Gemma(configs=gemma_configs, vocab_size=cfg.vocab_size, dtype=cfg.dtype,
                     remat_policy=cfg.remat_policy, batch_axes=cfg.activation_batch_axes)
    self.img = Siglip(config=cfg.siglip_config, out_dim=gemma_configs[0].width, dtype_mm=cfg.dtype,
                      remat_policy=cfg.remat_policy, batch_axes=cfg.activation_batch_axes)


class Pi0(nn.Module):
  """The pi0 model. See the module docstring for the flow convention.

  Methods (call with `model.apply(variables, ..., method=...)`):
    __call__(obs, noisy_actions, time=None) -> velocity [B, H, A] (used by `init`)
    compute_loss(obs, actions, rng=..., noise=None, time=None, action_pad_mask=None, action_dim_mask=None)
        -> per-step loss [B, H]
    sample_actions(obs, rng=..., noise=None, num_steps=10, use_kv_cache=True) -> actions [B, H, A]
  """

  config: Pi0Config

  def setup(self):
    cfg = self.config
    width = cfg.gemma_configs[1].width
    self.PaliGemma = PaliGemma(cfg)
    self.state_proj = nn.Dense(width, name="state_proj")
    self.action_in_proj = nn.Dense(width, name="action_in_proj")
    self.action_time_mlp_in = nn.Dense(width, name="action_time_mlp_in")
    self.action_time_mlp_out = nn.Dense(width, name="action_time_mlp_out")
    self.action_out_proj = nn.Dense(cfg.action_dim, name="action_out_proj")

  # --- token sequences --------------------------------------------------------

  def embed_prefix(self, obs: Observation):
    """Image tokens of every camera slot, then prompt tokens.

    Returns tokens [B, P, W0], input_mask bool [B, P], ar_mask bool [P] (all False).
    """
    tokens, input_mask = [], []
    for key in self.config.image_keys:
      image_tokens = self.PaliGemma.img(obs.images[key])
      tokens.append(image_tokens)
      input_mask.append(jnp.broadcast_to(obs.image_masks[key][:, None], image_tokens.shape[:2]))
    tokens.append(self.PaliGemma.llm.embed(obs.tokenized_prompt))
    input_mask.append(obs.tokenized_prompt_mask)
    tokens = jnp.concatenate(tokens, axis=1)
    input_mask = jnp.concatenate(input_mask, axis=1).astype(jnp.bool_)
    return tokens, input_mask, jnp.zeros((tokens.shape[1],), jnp.bool_)

  def embed_suffix(self, obs: Observation, noisy_actions, time):
    """One state token, then H action tokens mixed with the time embedding.

    time [B], or [B, H] for a flow time per action token (training-time RTC gives clean tokens time 0).
    Returns tokens [B, 1 + H, W1], input_mask bool [B, 1 + H], ar_mask bool [1 + H].
    """
    horizon = self.config.action_horizon
    width = self.config.gemma_configs[1].width
    state_token = self.state_proj(obs.state)[:, None, :]
    action_tokens = self.action_in_proj(noisy_actions)
    time_emb = posemb_sincos(time, width, min_period=4e-3, max_period=4.0)
    if time_emb.ndim == 2:
      time_emb = jnp.broadcast_to(time_emb[:, None, :], (time_emb.shape[0], horizon, width))
    time_tokens = time_emb
    x = self.action_time_mlp_in(jnp.concatenate([action_tokens, time_tokens], axis=-1))
    x = self.action_time_mlp_out(nn.swish(x))
    tokens = jnp.concatenate([state_token, x], axis=1)
    input_mask = jnp.ones(tokens.shape[:2], jnp.bool_)
    # The state token starts a block, and the actions start another one.
    ar_mask = jnp.array([True, True] + [False] * (horizon - 1))
    return tokens, input_mask, ar_mask

  # --- forward passes ---------------------------------------------------------

  def _check(self, obs: Observation, actions=None, name="actions"):
    obs.validate(self.config)
    if actions is not None:
      want = (obs.batch_size, self.config.action_horizon, self.config.action_dim)
      if tuple(actions.shape) != want:
        raise ValueError(f"{name}: shape {tuple(actions.shape)}, expected {want} (batch, action_horizon, action_dim).")

  def __call__(self, obs: Observation, noisy_actions, time=None):
    """Velocity v(x_t, t) [B, H, A] from one joint pass over prefix and suffix; time [B] or [B, H]."""
    self._check(obs, noisy_actions, "noisy_actions")
    if time is None:
      time = jnp.ones((obs.batch_size,), jnp.float32)
    return self._velocity_uncached(obs, noisy_actions, time)

  def _velocity_uncached(self, obs, x_t, time):
    return self.joint_forward(obs, x_t, time)[1]

  def joint_forward(self, obs: Observation, x_t, time):
    """One pass over prefix + suffix. Returns (prefix outputs [B, P, W0], velocity [B, H, A])."""
    prefix_tokens, prefix_mask, prefix_ar = self.embed_prefix(obs)
    suffix_tokens, suffix_mask, suffix_ar = self.embed_suffix(obs, x_t, time)
    input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
    ar_mask = jnp.concatenate([prefix_ar, suffix_ar], axis=0)
    attn_mask = make_attn_mask(input_mask, ar_mask)
    positions = jnp.cumsum(input_mask, axis=1) - 1
    (prefix_out, suffix_out), _ = self.PaliGemma.llm([prefix_tokens, suffix_tokens], positions, attn_mask)
    return prefix_out, self.action_out_proj(suffix_out[:, -self.config.action_horizon:])

  def compute_loss(self, obs: Observation, actions, *, rng=None, noise=None, time=None, action_pad_mask=None,
                   action_dim_mask=None, delay=None):
    """Flow-matching loss per action step [B, H].

    noise [B, H, A] and time [B] override the random draws (time ~ Beta(1.5, 1) * 0.999 + 0.001).
    delay int [B] (drawn uniformly from 0..config.rtc_max_delay when that is > 0 and delay is None): the first
    delay[b] action tokens of example b carry the clean actions at flow time 0 and get exactly zero loss.
    action_pad_mask bool [B, H]: False on steps past the episode end; they get exactly zero loss.
    action_dim_mask bool [A] or [B, A]: False on padded action dimensions; the per-step loss is the
    mean over real dimensions only.
    """
    self._check(obs, actions)
    b = obs.batch_size
    draw_delay = delay is None and self.config.rtc_max_delay > 0
    if (noise is None or time is None or draw_delay) and rng is None:
      raise ValueError("compute_loss needs `rng` unless `noise`, `time` (and, with rtc_max_delay > 0, `delay`) "
                       "are given.")
    if rng is not None:
      noise_rng, time_rng = jax.random.split(rng)
    if noise is None:
      noise = jax.random.normal(noise_rng, actions.shape, jnp.float32)
    if time is None:
      time = jax.random.beta(time_rng, 1.5, 1.0, (b,)) * 0.999 + 0.001
    if tuple(noise.shape) != tuple(actions.shape):
      raise ValueError(f"noise: shape {tuple(noise.shape)}, expected {tuple(actions.shape)}.")
    if tuple(time.shape) != (b,):
      raise ValueError(f"time: shape {tuple(time.shape)}, expected ({b},).")
    if draw_delay:  # its own stream, so that the noise and time draws are those of a model without RTC
      delay = jax.random.randint(jax.random.fold_in(rng, 2), (b,), 0, self.config.rtc_max_delay + 1)
    frozen = None
    if delay is not None:
      if tuple(jnp.shape(delay)) != (b,):
        raise ValueError(f"delay: shape {tuple(jnp.shape(delay))}, expected ({b},).")
      frozen = jnp.arange(self.config.action_horizon)[None, :] < jnp.asarray(delay)[:, None]
      time = jnp.where(frozen, 0.0, time[:, None])  # [B, H]: time 0 makes x_t the clean actions exactly
    t = time[..., None] if frozen is not None else time[:, None, None]
    x_t = t * noise + (1 - t) * actions
    u_t = noise - actions
    v_t = self._velocity_uncached(obs, x_t, time)
    sq_err = jnp.square(v_t - u_t)
    if action_dim_mask is None:
      per_step = jnp.mean(sq_err, axis=-1)
    else:
      dim_mask = jnp.broadcast_to(jnp.asarray(action_dim_mask, jnp.bool_).reshape(
          (-1, 1, self.config.action_dim) if jnp.ndim(action_dim_mask) == 2 else (1, 1, -1)), sq_err.shape)
      num_dims = jnp.maximum(jnp.sum(dim_mask, axis=-1), 1)
      per_step = jnp.sum(jnp.where(dim_mask, sq_err, 0.0), axis=-1) / num_dims
    if action_pad_mask is not None:
      if tuple(action_pad_mask.shape) != (b, self.config.action_horizon):
        raise ValueError(f"action_pad_mask: shape {tuple(action_pad_mask.shape)}, "
                         f"expected {(b, self.config.action_horizon)}.")
      per_step = jnp.where(action_pad_mask, per_step, 0.0)
    if frozen is not None:
      per_step = jnp.where(frozen, 0.0, per_step)
    return per_step

  def prefix_kv_cache(self, obs: Observation):
    """Runs the prefix through expert 0 once. Returns (kv_cache, prefix_mask)."""
    prefix_tokens, prefix_mask, prefix_ar = self.embed_prefix(obs)
    attn_mask = make_attn_mask(prefix_mask, prefix_ar)
    positions = jnp.cumsum(prefix_mask, axis=1) - 1
    _, kv_cache = self.PaliGemma.llm([prefix_tokens, None], positions, attn_mask)
    return kv_cache, prefix_mask

  def velocity_cached(self, obs: Observation, kv_cache, prefix_mask, x_t, time):
    """Velocity from a suffix-only pass through expert 1 against the prefix K/V cache."""
    suffix_tokens, suffix_mask, suffix_ar = self.embed_suffix(obs, x_t, time)
    suffix_len = suffix_tokens.shape[1]
    to_prefix = jnp.broadcast_to(prefix_mask[:, None, :], (prefix_mask.shape[0], suffix_len, prefix_mask.shape[1]))
    attn_mask = jnp.concatenate([to_prefix, make_attn_mask(suffix_mask, suffix_ar)], axis=-1)
    positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
    (_, suffix_out), _ = self.PaliGemma.llm([None, suffix_tokens], positions, attn_mask, kv_cache=kv_cache)
    return self.action_out_proj(suffix_out[:, -self.config.action_horizon:])

  def sample_actions(self, obs: Observation, *, rng=None, noise=None, num_steps: int = 10,
                     use_kv_cache: bool = True, prev_actions=None, inference_delay=None, execution_horizon=None,
                     mode: str | None = None, schedule: str = "exp", max_guidance_weight=5.0):
    """Euler integration of the flow from noise (t = 1) to actions (t = 0): [B, H, A].

    Deterministic given `noise`. `use_kv_cache=False` recomputes prefix and suffix at every step
    (the reference the cached path is tested against).

    Real-time chunking, with prev_actions [B, H, A] (the previous chunk's unexecuted plan re-indexed to this
    chunk's steps, padded at the end, normalised) and inference_delay d (int or int [B]):
      mode "guided"  (default unless config.rtc_max_delay > 0) every step uses v - w * g, where
                     g = (d a_hat / d x_t)^T [W * (prev - a_hat)], a_hat = x_t - t v, W = prefix_weights(d,
                     H - execution_horizon, H, schedule) and w = guidance_weight(t, max_guidance_weight): one
                     suffix pass plus one VJP through it per step. max_guidance_weight 0 is the plain sampler.
      mode "trained" (a model trained with rtc_max_delay > 0): the first d steps are prev, fed as clean tokens at
                     flow time 0; the rest is integrated.
    """
    self._check(obs)
    b = obs.batch_size
    shape = (b, self.config.action_horizon, self.config.action_dim)
    if noise is None:
      if rng is None:
        raise ValueError("sample_actions needs `rng` or explicit `noise`.")
      noise = jax.random.normal(rng, shape, jnp.float32)
    if tuple(noise.shape) != shape:
      raise ValueError(f"noise: shape {tuple(noise.shape)}, expected {shape}.")
    if num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    dt = -1.0 / num_steps
    if prev_actions is not None:  # checked before any model work
      mode = mode or ("trained" if self.config.rtc_max_delay > 0 else "guided")
      rtc = self._rtc_args(obs, prev_actions, inference_delay, execution_horizon, mode)

    if use_kv_cache:
      kv_cache, prefix_mask = self.prefix_kv_cache(obs)
      velocity = lambda x, t: self.velocity_cached(obs, kv_cache, prefix_mask, x, t)
    else:
      velocity = lambda x, t: self._velocity_uncached(obs, x, t)
    if prev_actions is not None:
      velocity, noise = self._rtc_velocity(velocity, noise, prev_actions, *rtc, mode, schedule, max_guidance_weight)

    def cond(mdl, carry):
      del mdl
      return carry[2] < num_steps

    def step(mdl, carry):
      del mdl
      x_t, time, i = carry
      v_t = velocity(x_t, jnp.broadcast_to(time, (b,)))
      return x_t + dt * v_t, time + dt, i + 1

    # A lax loop (lifted for linen); `time` accumulates in float32 by repeated addition of dt.
    x_0, _, _ = nn.while_loop(cond, step, self, (noise, jnp.float32(1.0), jnp.int32(0)))
    return x_0

  def _rtc_velocity(self, velocity, noise, prev_actions, delay, end, mode, schedule, max_guidance_weight):
    """The RTC step velocity fn(x_t, t [B]) and starting point replacing the plain ones (see sample_actions)."""
    horizon = self.config.action_horizon
    prev = jnp.asarray(prev_actions, jnp.float32)
    if mode == "trained":
      frozen = (jnp.arange(horizon)[None, :] < delay[:, None])[..., None]  # [B, H, 1]

      def trained(x, t):
        v = velocity(x, jnp.where(frozen[..., 0], 0.0, t[:, None]))
        return jnp.where(frozen, 0.0, v)  # x + dt * 0 keeps the frozen steps exactly prev

      return trained, jnp.where(frozen, prev, noise)
    if isinstance(max_guidance_weight, (int, float)) and max_guidance_weight == 0:
      return velocity, noise  # no guidance: the plain sampler, without a VJP to pay for
    weights = prefix_weights(delay, end, horizon, schedule)[..., None]  # [B, H, 1]

    def guided(x, t):
      def denoised(y):  # a_hat(x_t): the clean actions the flow predicts from x_t; the velocity as aux
        v = velocity(y, t)
        return y - t[:, None, None] * v, v

      a_hat, vjp, v = jax.vjp(denoised, x, has_aux=True)
      (g,) = vjp(weights * (prev - a_hat))
      return v - guidance_weight(t[0], max_guidance_weight) * g

    return guided, noise

  def _rtc_args(self, obs, prev_actions, inference_delay, execution_horizon, mode):
    """Checked delay int [B] and end of the prefix weights H - execution_horizon int [B] (None in "trained")."""
    b, horizon = obs.batch_size, self.config.action_horizon
    if mode not in ("guided", "trained"):
      raise ValueError(f"mode {mode!r}: expected 'guided' or 'trained'.")
    self._check(obs, prev_actions, "prev_actions")
    if inference_delay is None or (mode == "guided" and execution_horizon is None):
      raise ValueError("sample_actions with prev_actions needs inference_delay"
                       + (" and execution_horizon" if mode == "guided" else "") + ".")
    delay = jnp.broadcast_to(jnp.asarray(inference_delay, jnp.int32), (b,))
    s = None if execution_horizon is None else jnp.broadcast_to(jnp.asarray(execution_horizon, jnp.int32), (b,))
    if not any(isinstance(x, jax.core.Tracer) for x in (delay, s)):  # checks on concrete values only
      d_np = np.asarray(delay)
      if mode == "trained" and not ((d_np >= 0) & (d_np <= self.config.rtc_max_delay)).all():
        raise ValueError(f"inference_delay {d_np.tolist()}: mode 'trained' needs 0 <= d <= the model's "
                         f"rtc_max_delay {self.config.rtc_max_delay}.")
      if mode == "guided" and not ((0 <= d_np) & (d_np <= np.asarray(s)) & (np.asarray(s) <= horizon - d_np)).all():
        raise ValueError(f"inference_delay d={d_np.tolist()}, execution_horizon s={np.asarray(s).tolist()}: "
                         f"RTC needs 0 <= d <= s <= H - d with H = {horizon}.")
    return delay, None if s is None else horizon - s
