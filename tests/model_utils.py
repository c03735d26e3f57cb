"""Shared helpers for the model tests: tiny configs, random observations, a numpy reference."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from pi0_jax.model import Observation, Pi0, get_preset


def tiny_config(**overrides):
  return get_preset("tiny", **overrides)


@functools.lru_cache(maxsize=None)
def init_params(config, seed=0):
  """Randomly initialised params; RMSNorm scales made non-zero so the test sees them act."""
  model = Pi0(config)
  params = jax.jit(model.init)(jax.random.key(seed), Observation.fake(config, 1),
                               jnp.zeros((1, config.action_horizon, config.action_dim)))
  flat = traverse_util.flatten_dict(params, sep="/")
  rng = np.random.default_rng(seed)
  for k, v in flat.items():
    if k.endswith("scale") and "llm" in k:
      flat[k] = jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


def random_observation(config, batch_size=2, seed=0, prompt_lengths=None):
  rng = np.random.default_rng(seed)
  r, length = config.image_resolution, config.max_token_len
  prompt_lengths = prompt_lengths or [max(1, length - i) for i in range(batch_size)]
  tokens = np.zeros((batch_size, length), np.int32)
  mask = np.zeros((batch_size, length), bool)
  for i, n in enumerate(prompt_lengths):
    tokens[i, :n] = rng.integers(1, config.vocab_size, n)
    mask[i, :n] = True
  return Observation(
      images={k: jnp.asarray(rng.uniform(-1, 1, (batch_size, r, r, 3)), jnp.float32) for k in config.image_keys},
      image_masks={k: jnp.ones((batch_size,), bool) for k in config.image_keys},
      state=jnp.asarray(rng.normal(size=(batch_size, config.action_dim)), jnp.float32),
      tokenized_prompt=jnp.asarray(tokens),
      tokenized_prompt_mask=jnp.asarray(mask),
  )


# --- a plain numpy reference of the pi0 forward pass (float64), written from the SPEC ---------------


def _layer_norm(x, scale, bias):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def np_siglip(p, image, patch):
  b, r, _, _ = image.shape
  g = r // patch
  patches = image.reshape(b, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
  kernel = p["embedding"]["kernel"]
  x = patches @ kernel.reshape(-1, kernel.shape[-1]) + p["embedding"]["bias"]
  x = x + p["pos_embedding"][0]
  blk = p["Transformer"]["encoderblock"]
  depth = blk["LayerNorm_0"]["scale"].shape[0]
  for l in range(depth):
    at = {n: {k: v[l] for k, v in blk["MultiHeadDotProductAttention_0"][n].items()} for n in ("query", "key", "value", "out")}
    y = _layer_norm(x, blk["LayerNorm_0"]["scale"][l], blk["LayerNorm_0"]["bias"][l])
    q, k, v = (np.einsum("btd,dnh->btnh", y, at[n]["kernel"]) + at[n]["bias"] for n in ("query", "key", "value"))
    logits = np.einsum("btnh,bsnh->bnts", q / math.sqrt(q.shape[-1]), k)
    o = np.einsum("bnts,bsnh->btnh", _softmax(logits), v)
    x = x + np.einsum("btnh,nhd->btd", o, at["out"]["kernel"]) + at["out"]["bias"]
    y = _layer_norm(x, blk["LayerNorm_1"]["scale"][l], blk["LayerNorm_1"]["bias"][l])
    mlp = blk["MlpBlock_0"]
    y = _gelu_tanh(y @ mlp["Dense_0"]["kernel"][l] + mlp["Dense_0"]["bias"][l])
    x = x + y @ mlp["Dense_1"]["kernel"][l] + mlp["Dense_1"]["bias"][l]
  x = _layer_norm(x, p["Transformer"]["encoder_norm"]["scale"], p["Transformer"]["encoder_norm"]["bias"])
  return x @ p["head"]["kernel"] + p["head"]["bias"]


def _rms_norm(x, scale):
  return x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * (1 + scale)


def _rope(x, pos):
  h = x.shape[-1]
  freq = 10_000.0**(2 * np.arange(h // 2) / h)
  ang = pos[:, :, None, None] / freq
  x1, x2 = x[..., :h // 2], x[..., h // 2:]
  return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1)


def np_gemma(p, xs, mask, pos):
  """xs: list of per-expert token arrays; mask [B, T, T] bool; pos [B, T]. Returns per-expert outputs."""
  lay = p["layers"]
  sfx = lambda name, i: name if i == 0 else f"{name}_{i}"
  depth = lay["pre_attention_norm"]["scale"].shape[0]
  lengths = [x.shape[1] for x in xs]
  for l in range(depth):
    qs, ks, vs = [], [], []
    for i, x in enumerate(xs):
      y = _rms_norm(x, lay[sfx("pre_attention_norm", i)]["scale"][l])
      qs.append(np.einsum("btd,ndh->btnh", y, lay["attn"][sfx("q_einsum", i)]["w"][l]))
      kv = lay["attn"][sfx("kv_einsum", i)]["w"][l]
      ks.append(np.einsum("btd,kdh->btkh", y, kv[0]))
      vs.append(np.einsum("btd,kdh->btkh", y, kv[1]))
    q, k, v = (np.concatenate(a, 1) for a in (qs, ks, vs))
    q = _rope(q, pos) * q.shape[-1]**-0.5
    k = _rope(k, pos)
    n, kh = q.shape[2], k.shape[2]
    out = np.zeros_like(q)
    for head in range(n):
      kv_head = head // (n // kh)  # query heads grouped per kv head
      logits = np.einsum("bth,bsh->bts", q[:, :, head], k[:, :, kv_head])
      logits = np.where(mask, logits, -np.inf)
      probs = _softmax(np.where(mask.any(-1, keepdims=True), logits, 0.0))
      out[:, :, head] = np.einsum("bts,bsh->bth", probs, v[:, :, kv_head])
    start, new = 0, []
    for i, x in enumerate(xs):
      enc = out[:, start:start + lengths[i]]
      start += lengths[i]
      h = x + np.einsum("btnh,nhd->btd", enc, lay["attn"][sfx("attn_vec_einsum", i)]["w"][l])
      y = _rms_norm(h, lay[sfx("pre_ffw_norm", i)]["scale"][l])
      mlp = lay[sfx("mlp", i)]
      y = _gelu_tanh(y @ mlp["gating_einsum"][l, 0]) * (y @ mlp["gating_einsum"][l, 1])
      new.append(h + y @ mlp["linear"][l])
    xs = new
  return [_rms_norm(x, p[sfx("final_norm", i)]["scale"]) for i, x in enumerate(xs)]


def np_velocity(params, config, obs, x_t, time):
  """Reference pi0 velocity [B, H, A], float64 numpy, following the SPEC."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  pg = p["PaliGemma"]
  dense = lambda name, x: x @ p[name]["kernel"] + p[name]["bias"]
  tokens, valid = [], []
  for key in config.image_keys:
    img = np_siglip(pg["img"], np.asarray(obs.images[key], np.float64), config.siglip_config.patch_size)
    tokens.append(img)
    valid.append(np.repeat(np.asarray(obs.image_masks[key])[:, None], img.shape[1], 1))
  table = pg["llm"]["embedder"]["input_embedding"]
  tokens.append(table[np.asarray(obs.tokenized_prompt)] * math.sqrt(table.shape[1]))
  valid.append(np.asarray(obs.tokenized_prompt_mask))
  prefix, prefix_valid = np.concatenate(tokens, 1), np.concatenate(valid, 1)
  b, horizon = x_t.shape[:2]
  width = p["action_in_proj"]["kernel"].shape[1]
  frac = np.linspace(0, 1, width // 2)
  period = 4e-3 * (4.0 / 4e-3)**frac
  ang = np.asarray(time, np.float64)[:, None] * 2 * np.pi / period
  temb = np.concatenate([np.sin(ang), np.cos(ang)], -1)
  act = dense("action_in_proj", np.asarray(x_t, np.float64))
  h = dense("action_time_mlp_in", np.concatenate([act, np.repeat(temb[:, None], horizon, 1)], -1))
  h = dense("action_time_mlp_out", h / (1 + np.exp(-h)))
  suffix = np.concatenate([dense("state_proj", np.asarray(obs.state, np.float64))[:, None], h], 1)
  n_p, n_s = prefix.shape[1], suffix.shape[1]
  # Explicit rule: prefix bidirectional over valid prefix; state sees prefix + itself; actions see all valid.
  mask = np.zeros((b, n_p + n_s, n_p + n_s), bool)
  block = np.array([0] * n_p + [1] + [2] * horizon)
  valid_all = np.concatenate([prefix_valid, np.ones((b, n_s), bool)], 1)
  for q in range(n_p + n_s):
    for k in range(n_p + n_s):
      mask[:, q, k] = (block[k] <= block[q]) & valid_all[:, q] & valid_all[:, k]
  pos = np.cumsum(valid_all, 1) - 1
  _, suffix_out = np_gemma(pg["llm"], [prefix, suffix], mask, pos)
  return dense("action_out_proj", suffix_out[:, -horizon:])
