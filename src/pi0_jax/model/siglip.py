"""SigLIP vision transformer, laid out like big_vision's ViT (scanned blocks).

Parameter names follow big_vision so PaliGemma checkpoints load as they are:
`embedding` (patch conv), `pos_embedding`, `Transformer/encoderblock/...`
(Flax's automatic names inside a block), `Transformer/encoder_norm`, `head`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from pi0_jax.model.config import SiglipConfig
from pi0_jax.model.gemma import constrain_batch


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype_mm: str

  @nn.compact
  def __call__(self, x):
    init = {"kernel_init": nn.initializers.xavier_uniform(), "bias_init": nn.initializers.normal(stddev=1e-6)}
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype_mm, **init)(x)
    x = nn.gelu(x, approximate=True)
    return nn.Dense(width, dtype=self.dtype_mm, **init)(x)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block; the (x, None) return fits nn.scan."""

  mlp_dim: int
  num_heads: int
  dtype_mm: str
  batch_axes: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, x, _):
    x = constrain_batch(x, self.batch_axes)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype_mm)(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
                                        deterministic=True, dtype=self.dtype_mm)(y, y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype_mm)(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dtype_mm=self.dtype_mm)(y)
    return x + y, None


class Encoder(nn.Module):
  depth: int
  mlp_dim: int
  num_heads: int
  dtype_mm: str
  remat_policy: str
  batch_axes: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, x):
    block = Encoder1DBlock
    if self.remat_policy != "none":
      block = nn.remat(block, prevent_cse=False, policy=getattr(jax.checkpoint_policies, self.remat_policy))
    x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                   length=self.depth)(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype_mm=self.dtype_mm,
                                      batch_axes=self.batch_axes, name="encoderblock")(x, None)
    return nn.LayerNorm(epsilon=1e-6, name="encoder_norm", dtype=self.dtype_mm)(x)


class Siglip(nn.Module):
  """Images float32 [B, R, R, 3] in [-1, 1] -> tokens [B, (R/patch)^2, out_dim] in `dtype_mm`."""

  config: SiglipConfig
  out_dim: int
  dtype_mm: str = "float32"
  remat_policy: str = "nothing_saveable"
  batch_axes: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, image):
    cfg = self.config
    image = jnp.asarray(image, jnp.float32)
    # The stem and the position embedding stay in float32, as in big_vision.
    x = nn.Conv(cfg.width, (cfg.patch_size, cfg.patch_size), strides=(cfg.patch_size, cfg.patch_size),
                padding="VALID", name="embedding", dtype=jnp.float32)(image)
    b, h, w, c = x.shape
    x = jnp.reshape(x, (b, h * w, c))
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(c)), (1, h * w, c), jnp.float32)
    x = x + pos
    x = x.astype(self.dtype_mm)
    x = Encoder(depth=cfg.depth, mlp_dim=cfg.mlp_dim, num_heads=cfg.num_heads, dtype_mm=self.dtype_mm,
                remat_policy=self.remat_policy, batch_axes=self.batch_axes, name="Transformer")(x)
    # The only image -> LLM projection, applied per token. (big_vision zero-initialises it; a random init lets
    # a model trained from scratch see its images from the first step.)
    return nn.Dense(self.out_dim, dtype=self.dtype_mm, name="head")(x)
