"""Gemma decoder with several experts sharing one self-attention per layer.

pi0 runs two experts: expert 0 (PaliGemma's Gemma) takes the prefix tokens,
expert 1 (the action expert) the suffix tokens. Each layer holds one weight set
per expert; their q/k/v are concatenated along the sequence, one attention runs
over all of them, and each expert's slice of the result goes through that
expert's own output projection, norms and MLP. Names of expert i > 0 end in
`_i`, which is the layout of published pi0 checkpoints. With `lora_rank` > 0 in an
expert's config its projections carry LoRA factors in openpi's layout (pi0_jax.model.lora).

Inputs are a list with one entry per expert, [B, T_i, width_i] or None where an
expert has no tokens (the sampler runs the suffix alone against a K/V cache of
the prefix).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from pi0_jax.model import lora
from pi0_jax.model.config import GemmaConfig

# Masked attention logits; the value Gemma uses (close to bfloat16's lowest).
BIG_NEG = -2.3819763e38
# The einsum of each projection by weight name (expert suffix dropped); LoRA merging reads the MLP's too.
PROJECTION_EQNS = {"q_einsum": "BTD,NDH->BTNH", "kv_einsum": "BSD,2KDH->2BSKH", "attn_vec_einsum": "BTNH,NHD->BTD",
                   "gating_einsum": "BTD,CDF->CBTF", "linear": "BTF,FD->BTD"}


def expert_name(name: str, i: int) -> str:
  return name if i == 0 else f"{name}_{i}"


def constrain_batch(x, batch_axes: tuple[str, ...]):
  """Keeps activations split over the data-parallel mesh axes (needs a `jax.set_mesh` context)."""
  if x is None or not batch_axes:
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(batch_axes))


class RMSNorm(nn.Module):

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    normed = x * jax.lax.rsqrt(var + 1e-6)  # float32 from here on
    return (normed * (1 + scale)).astype(x.dtype)


class Einsum(nn.Module):
  """A weight `w` of `shape` applied with an einsum, in the input's dtype; with `lora` (an expert config of
  lora_rank > 0) plus the adapter on factors `lora_a`, `lora_b`."""

  shape: tuple[int, ...]
  init_fn: nn.initializers.Initializer = nn.initializers.zeros_init()
  lora: GemmaConfig | None = None

  @nn.compact
  def __call__(self, eqn: str, x):
    w = self.param("w", self.init_fn, self.shape)
    y = jnp.einsum(eqn, x, w.astype(x.dtype))
    if self.lora is not None and self.lora.lora_rank:
      shape_a, shape_b = lora.factor_shapes(self.shape, self.lora.lora_rank)
      a, b = self.param("lora_a", lora.INIT, shape_a), self.param("lora_b", lora.INIT, shape_b)
      y = y + lora.apply(eqn, x, a, b, lora.scale(self.lora))
    return y


class FeedForward(nn.Module):
  """Gated GELU MLP. Its weights have no `/w` (the published layout); LoRA factors sit beside them as
  `gating_einsum_lora_a` [2, D, r], `gating_einsum_lora_b` [2, r, F], `linear_lora_a` [F, r], `linear_lora_b` [r, D]."""

  width: int
  hidden_dim: int
  lora: GemmaConfig | None = None

  @nn.compact
  def __call__(self, x):
    gating = self.param("gating_einsum", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)),
                        (2, self.width, self.hidden_dim)).astype(x.dtype)
    linear = self.param("linear", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1),
                        (self.hidden_dim, self.width)).astype(x.dtype)
    if self.lora is None or not self.lora.lora_rank:
      gate = nn.gelu(jnp.dot(x, gating[0]), approximate=True)
      return jnp.dot(gate * jnp.dot(x, gating[1]), linear)
    rank, factor = self.lora.lora_rank, lora.scale(self.lora)
    (ga_shape, gb_shape), (la_shape, lb_shape) = (lora.factor_shapes(w.shape, rank) for w in (gating, linear))
    ga, gb = (self.param(f"gating_einsum_lora_{n}", lora.INIT, s) for n, s in (("a", ga_shape), ("b", gb_shape)))
    la, lb = (self.param(f"linear_lora_{n}", lora.INIT, s) for n, s in (("a", la_shape), ("b", lb_shape)))
    proj = lambda i: jnp.dot(x, gating[i]) + lora.apply("BTD,DF->BTF", x, ga[i], gb[i], factor)  # noqa: E731
    hidden = nn.gelu(proj(0), approximate=True) * proj(1)
    return jnp.dot(hidden, linear) + lora.apply("BTF,FD->BTD", hidden, la, lb, factor)


def apply_rope(x, positions, max_wavelength: float = 10_000):
  """Rotary embedding, split-halves form. x [B, T, N, H], positions [B, T]."""
  half = x.shape[-1] // 2
  freq_exponents = (2.0 / x.shape[-1]) * jnp.arange(half, dtype=jnp.float32)
  timescale = max_wavelength**freq_exponents
  radians = positions[..., None] / timescale[None, None, :]
  radians = radians[..., None, :]  # [B, T, 1, H/2], broadcast over heads
  sin, cos = jnp.sin(radians), jnp.cos(radians)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  """One grouped-query attention over the tokens of all experts."""

  configs: Sequence[GemmaConfig]

  @nn.compact
  def __call__(self, xs, positions, attn_mask, kv_cache):
    cfg0 = self.configs[0]
    qkv = []
    for i, (x, cfg) in enumerate(zip(xs, self.configs)):
      if x is None:
        continue
      q = Einsum((cfg.num_heads, cfg.width, cfg.head_dim), name=expert_name("q_einsum", i),
                 init_fn=nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)), lora=cfg)(
                     PROJECTION_EQNS["q_einsum"], x)
      k, v = Einsum((2, cfg.num_kv_heads, cfg.width, cfg.head_dim), name=expert_name("kv_einsum", i),
                    init_fn=nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0, 1)), lora=cfg)(
                        PROJECTION_EQNS["kv_einsum"], x)
      qkv.append((q, k, v))
    q, k, v = (jnp.concatenate(parts, axis=1) for parts in zip(*qkv))

    q = apply_rope(q, positions)
    q *= cfg0.head_dim**-0.5
    k = apply_rope(k, positions)
    if kv_cache is not None:
      cache_k, cache_v = kv_cache
      k = jnp.concatenate([cache_k, k], axis=1)
      v = jnp.concatenate([cache_v, v], axis=1)

    b, t, n, h = q.shape
    kv_heads = cfg0.num_kv_heads
    # Query heads grouped per kv head: [B, T, K, G, H].
    q = q.reshape(b, t, kv_heads, n // kv_heads, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    if attn_mask.shape != (b, 1, t, k.shape[1]):
      raise ValueError(f"Attention mask has shape {attn_mask.shape}, expected {(b, 1, t, k.shape[1])} "
                       "(batch, 1, queries, keys incl. cached ones).")
    logits = jnp.where(attn_mask[:, :, None, :, :], logits, BIG_NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(k.dtype)
    encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)

    out, start = [], 0
    for i, (x, cfg) in enumerate(zip(xs, self.configs)):
      if x is None:
        out.append(None)
        continue
      end = start + x.shape[1]
      proj = Einsum((cfg.num_heads, cfg.head_dim, cfg.width), name=expert_name("attn_vec_einsum", i),
                    init_fn=nn.initializers.lecun_normal(in_axis=(-3, -2), out_axis=-1), lora=cfg)
      out.append(proj(PROJECTION_EQNS["attn_vec_einsum"], encoded[:, start:end]))
      start = end
    return out, (k, v)


class Block(nn.Module):
  """One layer: pre-norm attention shared by all experts, then per-expert MLPs."""

  configs: Sequence[GemmaConfig]
  batch_axes: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, xs, kv_cache, positions, attn_mask):
    xs = [constrain_batch(x, self.batch_axes) for x in xs]
    normed = [None if x is None else RMSNorm(name=expert_name("pre_attention_norm", i))(x) for i, x in enumerate(xs)]
    attn_out, kv = Attention(self.configs, name="attn")(normed, positions, attn_mask, kv_cache)
    xs = [None if x is None else x + y for x, y in zip(xs, attn_out)]
    out = []
    for i, (x, cfg) in enumerate(zip(xs, self.configs)):
      if x is None:
        out.append(None)
        continue
      y = RMSNorm(name=expert_name("pre_ffw_norm", i))(x)
      y = FeedForward(cfg.width, cfg.mlp_dim, lora=cfg, name=expert_name("mlp", i))(y)
      out.append(x + y)
    return out, kv


class Embedder(nn.Module):
  vocab_size: int
  width: int

  def setup(self):
    self.input_embedding = self.param("input_embedding", nn.initializers.normal(), (self.vocab_size, self.width))

  def encode(self, tokens):
    x = self.input_embedding[(tokens,)]
    return x * jnp.sqrt(self.width).astype(x.dtype)

  def decode(self, x):
    return jnp.dot(x, self.input_embedding.T.astype(x.dtype))


class Gemma(nn.Module):
  """The multi-expert decoder. Call `embed` for text tokens, `__call__` for the stack."""

  configs: tuple[GemmaConfig, ...]
  vocab_size: int
  dtype: str = "bfloat16"
  remat_policy: str = "nothing_saveable"
  batch_axes: tuple[str, ...] = ()

  def setup(self):
    depth = self.configs[0].depth
    self.embedder = Embedder(self.vocab_size, self.configs[0].width, name="embedder")
    block = Block
    if self.remat_policy != "none":
      block = nn.remat(block, prevent_cse=False, policy=getattr(jax.checkpoint_policies, self.remat_policy))
    self.layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=(0, nn.broadcast, nn.broadcast), length=depth)(
                              self.configs, self.batch_axes, name="layers")
    self.final_norms = [RMSNorm(name=expert_name("final_norm", i)) for i in range(len(self.configs))]

  def embed(self, tokens):
    return self.embedder.encode(tokens).astype(self.dtype)

  def __call__(self, embedded, positions, attn_mask, kv_cache=None):
    """embedded: per expert [B, T_i, width_i] or None; positions [B, T]; attn_mask bool [B, T, S].

    Returns (per-expert outputs after the final norm, (k, v) of every layer [L, B, S, K, H]).
    With `kv_cache`, S counts the cached tokens first.
    """
    embedded = [None if e is None else e.astype(self.dtype) for e in embedded]
    xs, kv_cache = self.layers(embedded, kv_cache, positions, attn_mask[:, None, :, :])
    return [None if x is None else norm(x) for norm, x in zip(self.final_norms, xs)], kv_cache


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
