"""The pi0 model: SigLIP + two-expert Gemma + flow-matching action head."""

from pi0_jax.model import lora
from pi0_jax.model.config import (DEFAULT_IMAGE_KEYS, GEMMA_VARIANTS, PALIGEMMA_VOCAB_SIZE, PRESETS, SIGLIP_VARIANTS,
                                  GemmaConfig, Pi0Config, SiglipConfig, get_preset)
from pi0_jax.model.observation import Observation
from pi0_jax.model.pi0 import Pi0, make_attn_mask, posemb_sincos

__all__ = [
    "DEFAULT_IMAGE_KEYS", "GEMMA_VARIANTS", "PALIGEMMA_VOCAB_SIZE", "PRESETS", "SIGLIP_VARIANTS", "GemmaConfig",
    "Observation", "Pi0", "Pi0Config", "SiglipConfig", "get_preset", "lora", "make_attn_mask", "posemb_sincos",
]
