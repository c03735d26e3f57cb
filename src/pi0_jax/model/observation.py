"""The model's input: camera images, robot state and the tokenized prompt."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax.numpy as jnp
import numpy as np

from pi0_jax.model.config import Pi0Config


@flax.struct.dataclass
class Observation:
  """One batch of model inputs (a pytree).

  images:                {camera slot: float32 [B, R, R, 3] in [-1, 1]}
  image_masks:           {camera slot: bool [B]}; False marks an empty slot.
  state:                 float32 [B, action_dim], zero-padded robot state.
  tokenized_prompt:      int32 [B, L] token ids, right-padded with 0.
  tokenized_prompt_mask: bool [B, L], True on real tokens.
  """

  images: dict[str, Any]
  image_masks: dict[str, Any]
  state: Any
  tokenized_prompt: Any
  tokenized_prompt_mask: Any

  @property
  def batch_size(self) -> int:
    return int(self.state.shape[0])

  def validate(self, config: Pi0Config) -> None:
    """Raises ValueError naming the field when a shape or dtype does not fit `config`."""
    errors = []

    def check(name, x, shape, kinds):
      if x is None:
        errors.append(f"{name}: missing, expected shape {shape}")
        return
      got = tuple(x.shape)
      if got != tuple(shape):
        errors.append(f"{name}: shape {got}, expected {tuple(shape)}")
      if np.dtype(x.dtype).kind not in kinds:
        errors.append(f"{name}: dtype {x.dtype}, expected {'float' if 'f' in kinds else 'bool' if 'b' in kinds else 'int'}")

    if self.state is None or len(getattr(self.state, "shape", ())) != 2:
      raise ValueError(f"Observation.state: expected [batch, {config.action_dim}], "
                       f"got {None if self.state is None else tuple(self.state.shape)}")
    b = self.state.shape[0]
    check("state", self.state, (b, config.action_dim), "f")
    r = config.image_resolution
    want, got_img, got_mask = set(config.image_keys), set(self.images or {}), set(self.image_masks or {})
    if got_img != want:
      errors.append(f"images: camera slots {sorted(got_img)}, expected {sorted(want)} "
                    f"(missing {sorted(want - got_img)}, unexpected {sorted(got_img - want)})")
    if got_mask != want:
      errors.append(f"image_masks: camera slots {sorted(got_mask)}, expected {sorted(want)}")
    for key in config.image_keys:
      if key in got_img:
        check(f"images[{key!r}]", self.images[key], (b, r, r, 3), "f")
      if key in got_mask:
        check(f"image_masks[{key!r}]", self.image_masks[key], (b,), "b")
    check("tokenized_prompt", self.tokenized_prompt, (b, config.max_token_len), "iu")
    check("tokenized_prompt_mask", self.tokenized_prompt_mask, (b, config.max_token_len), "b")
    if errors:
      raise ValueError("Observation does not fit the model config:\n  " + "\n  ".join(errors))

  @classmethod
  def fake(cls, config: Pi0Config, batch_size: int = 1) -> "Observation":
    """Zeros of the right shapes (for init and eval_shape)."""
    r = config.image_resolution
    return cls(
        images={k: jnp.zeros((batch_size, r, r, 3), jnp.float32) for k in config.image_keys},
        image_masks={k: jnp.ones((batch_size,), jnp.bool_) for k in config.image_keys},
        state=jnp.zeros((batch_size, config.action_dim), jnp.float32),
        tokenized_prompt=jnp.zeros((batch_size, config.max_token_len), jnp.int32),
        tokenized_prompt_mask=jnp.ones((batch_size, config.max_token_len), jnp.bool_),
    )
