"""Model sizes and the pi0 configuration.

Everything here is plain, hashable data so that ml_collections configs can set
it and jit can treat it as static.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

PALIGEMMA_VOCAB_SIZE = 257_152  # Gemma's 256,000 + 1,024 <locNNNN> + 128 <segNNN>.
DEFAULT_IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Sizes of one Gemma expert, and its LoRA adapters (pi0_jax.model.lora) when `lora_rank` > 0."""

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  # LoRA on the attention and MLP projections (openpi's "attn" and "ffn"): rank 0 is off. The adapter output is
  # scaled by lora_alpha / lora_rank, or lora_alpha / sqrt(lora_rank) with lora_rslora (rank-stabilised LoRA).
  lora_rank: int = 0
  lora_alpha: float = 1.0
  lora_rslora: bool = False


GEMMA_VARIANTS: dict[str, GemmaConfig] = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    # Benchmark size: with a 16k vocabulary and the "vit_small" encoder a pi0 of ~100M parameters.
    "gemma_100m": GemmaConfig(width=768, depth=8, mlp_dim=3072, num_heads=8, num_kv_heads=1, head_dim=96),
    "gemma_100m_expert": GemmaConfig(width=384, depth=8, mlp_dim=1536, num_heads=8, num_kv_heads=1, head_dim=96),
    # The demo: small enough to pre-train on 2 CPU cores.
    "gemma_demo": GemmaConfig(width=256, depth=4, mlp_dim=1024, num_heads=4, num_kv_heads=1, head_dim=64),
    "gemma_demo_expert": GemmaConfig(width=128, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=1, head_dim=64),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
}
# openpi's LoRA variants (its gemma.get_config): the same sizes, rank = alpha (scale 1) on attention and MLP.
GEMMA_VARIANTS["gemma_2b_lora"] = dataclasses.replace(GEMMA_VARIANTS["gemma_2b"], lora_rank=16, lora_alpha=16.0)
GEMMA_VARIANTS["gemma_300m_lora"] = dataclasses.replace(GEMMA_VARIANTS["gemma_300m"], lora_rank=32, lora_alpha=32.0)


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  """Sizes of the SigLIP ViT image encoder."""

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int


SIGLIP_VARIANTS: dict[str, SiglipConfig] = {
    "So400m/14": SiglipConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14),
    "B/16": SiglipConfig(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16),
    "vit_small": SiglipConfig(width=384, depth=6, mlp_dim=1536, num_heads=6, patch_size=16),
    "vit_demo": SiglipConfig(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=16),
    "tiny": SiglipConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8),
}


def _resolve(value: Any, variants: Mapping[str, Any], cls: type, field: str):
  if isinstance(value, cls):
    return value
  if isinstance(value, str):
    if value not in variants:
      raise ValueError(f"Pi0Config.{field}: unknown variant {value!r}; expected one of {sorted(variants)} "
                       f"or explicit sizes {[f.name for f in dataclasses.fields(cls)]}.")
    return variants[value]
  if isinstance(value, Mapping):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = {n for n, f in fields.items() if f.default is dataclasses.MISSING}
    if not required <= set(value) <= set(fields):
      optional = f" plus any of {sorted(set(fields) - required)}" if set(fields) - required else ""
      raise ValueError(f"Pi0Config.{field}: explicit sizes need exactly the keys {sorted(required)}{optional}, "
                       f"got {sorted(value)}.")
    # Optional fields keep their default's type (float alpha, bool rslora); sizes are ints.
    cast = lambda n: int if n in required else type(fields[n].default)  # noqa: E731
    return cls(**{k: cast(k)(v) for k, v in value.items()})
  raise TypeError(f"Pi0Config.{field}: expected a variant name, a {cls.__name__} or a mapping, got {type(value)}.")


@dataclasses.dataclass(frozen=True)
class Pi0Config:
  """Configuration of the pi0 model.

  `paligemma_variant` and `action_expert_variant` name Gemma sizes (see
  GEMMA_VARIANTS) or give them explicitly; `siglip` likewise names a SigLIP size
  (SIGLIP_VARIANTS) or gives width, depth, mlp_dim, num_heads and patch_size.
  """

  paligemma_variant: Any = "gemma_2b"
  action_expert_variant: Any = "gemma_300m"
  siglip: Any = "So400m/14"
  image_resolution: int = 224
  image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
  action_dim: int = 32
  action_horizon: int = 50
  max_token_len: int = 48
  # Training-time real-time chunking (arXiv 2512.05964): > 0 makes the loss draw a delay d in 0..rtc_max_delay
  # per example and give the first d action tokens clean actions at flow time 0, outside the loss.
  rtc_max_delay: int = 0
  vocab_size: int = PALIGEMMA_VOCAB_SIZE
  # Compute dtype; parameters stay float32.
  dtype: str = "bfloat16"
  # A jax.checkpoint_policies name, or "none" to keep every activation.
  remat_policy: str = "nothing_saveable"
  # Mesh axes that the batch dimension of activations is constrained to (the trainer sets this to its
  # data-parallel axes and runs under `jax.set_mesh`); empty: no constraint.
  activation_batch_axes: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "image_keys", tuple(self.image_keys))
    object.__setattr__(self, "activation_batch_axes", tuple(self.activation_batch_axes))
    # Explicit sizes given as mappings become frozen dataclasses, so the config stays hashable (jit static).
    for name, variants, cls in (("paligemma_variant", GEMMA_VARIANTS, GemmaConfig),
                                ("action_expert_variant", GEMMA_VARIANTS, GemmaConfig),
                                ("siglip", SIGLIP_VARIANTS, SiglipConfig)):
      if isinstance(getattr(self, name), Mapping):
        object.__setattr__(self, name, _resolve(getattr(self, name), variants, cls, name))
    if self.dtype not in ("bfloat16", "float32"):
      raise ValueError(f"Pi0Config.dtype must be 'bfloat16' or 'float32', got {self.dtype!r}.")
    llm, expert = self.gemma_configs
    for name in ("depth", "num_heads", "num_kv_heads", "head_dim"):
      if getattr(llm, name) != getattr(expert, name):
        raise ValueError(f"Pi0Config: both experts must share {name} (their q/k/v meet in one attention), "
                         f"got {getattr(llm, name)} and {getattr(expert, name)}.")
    for name, cfg in (("paligemma_variant", llm), ("action_expert_variant", expert)):
      if cfg.lora_rank < 0 or (cfg.lora_rank and cfg.lora_alpha <= 0):
        raise ValueError(f"Pi0Config.{name}: lora_rank must be >= 0 and lora_alpha > 0, got {cfg.lora_rank} and "
                         f"{cfg.lora_alpha}.")
    if llm.num_heads % llm.num_kv_heads:
      raise ValueError(f"Pi0Config: num_heads {llm.num_heads} is not a multiple of num_kv_heads {llm.num_kv_heads}.")
    vit = self.siglip_config
    if self.image_resolution % vit.patch_size:
      raise ValueError(f"Pi0Config.image_resolution {self.image_resolution} is not a multiple of the "
                       f"SigLIP patch size {vit.patch_size}.")
    if vit.width % vit.num_heads:
      raise ValueError(f"Pi0Config.siglip: width {vit.width} is not a multiple of num_heads {vit.num_heads}.")
    if not self.image_keys:
      raise ValueError("Pi0Config.image_keys: at least one camera slot is needed.")
    for name in ("action_dim", "action_horizon", "max_token_len", "vocab_size", "image_resolution"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"Pi0Config.{name} must be positive, got {getattr(self, name)}.")
    if not 0 <= int(self.rtc_max_delay) < self.action_horizon:
      raise ValueError(f"Pi0Config.rtc_max_delay must be in [0, action_horizon={self.action_horizon}), "
                       f"got {self.rtc_max_delay}.")

  @property
  def gemma_configs(self) -> tuple[GemmaConfig, GemmaConfig]:
    return (_resolve(self.paligemma_variant, GEMMA_VARIANTS, GemmaConfig, "paligemma_variant"),
            _resolve(self.action_expert_variant, GEMMA_VARIANTS, GemmaConfig, "action_expert_variant"))

  @property
  def siglip_config(self) -> SiglipConfig:
    return _resolve(self.siglip, SIGLIP_VARIANTS, SiglipConfig, "siglip")

  @property
  def num_image_tokens(self) -> int:
    return (self.image_resolution // self.siglip_config.patch_size) ** 2

  @property
  def prefix_len(self) -> int:
    return len(self.image_keys) * self.num_image_tokens + self.max_token_len

  def replace(self, **changes) -> "Pi0Config":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Pi0Config":
    """Builds a config from a plain mapping (e.g. `ConfigDict.to_dict()`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"Pi0Config: unknown fields {sorted(unknown)}; known fields are {sorted(names)}.")
    d = dict(d)
    for key in ("paligemma_variant", "action_expert_variant", "siglip"):
      if isinstance(d.get(key), Mapping):
        d[key] = dict(d[key])
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able dict; `Pi0Config.from_dict(c.to_dict()) == c` for named or explicit sizes."""
    out = {}
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if dataclasses.is_dataclass(v):
        v = dataclasses.asdict(v)
      elif isinstance(v, tuple):
        v = list(v)
      out[f.name] = v
    return out


# Presets. "pi0" is the published model; the rest are for tests, the demo and benchmarks.
PRESETS: dict[str, Pi0Config] = {
    "pi0": Pi0Config(),
    "tiny": Pi0Config(paligemma_variant="dummy", action_expert_variant="dummy", siglip="tiny",
                      image_resolution=32, image_keys=("base_0_rgb", "left_wrist_0_rgb"),
                      action_dim=8, action_horizon=4, max_token_len=6, vocab_size=128, dtype="float32",
                      remat_policy="none"),
    "demo": Pi0Config(paligemma_variant="gemma_demo", action_expert_variant="gemma_demo_expert",
                      siglip="vit_demo", image_resolution=64, image_keys=("base_0_rgb", "left_wrist_0_rgb"),
                      action_dim=8, action_horizon=10, max_token_len=16, vocab_size=256,
                      dtype="bfloat16", remat_policy="none"),
    "small_100m": Pi0Config(paligemma_variant="gemma_100m", action_expert_variant="gemma_100m_expert",
                            siglip="vit_small", image_resolution=224, action_dim=32, action_horizon=50,
                            max_token_len=48, vocab_size=16_384, dtype="bfloat16"),
}


def get_preset(name: str, **overrides) -> Pi0Config:
  if name not in PRESETS:
    raise ValueError(f"Unknown Pi0Config preset {name!r}; expected one of {sorted(PRESETS)}.")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
