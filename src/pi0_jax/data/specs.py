"""Per-dataset standardisation specs: how one RLDS dataset maps onto pi0's inputs.

Dataset specifics live here as data, keyed by dataset name, never as branches
in the pipeline. A spec says which observation key fills which camera slot
(None: the slot stays empty and masked), which observation keys are
concatenated into the robot state, where the action and the instruction are
(or a fixed prompt), an optional transform of the raw steps, and which state or
action dimensions are passed through unnormalised (e.g. a binary gripper).

Keys are '/'-joined paths: camera and state keys inside a step's
`observation`, the action and instruction keys inside the step itself.

To read a dataset that is not in `DATASETS`, pass your own table (a plain dict
of name -> DatasetSpec) to the pipeline, or name an existing entry with the
dataset config's `spec` field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How one RLDS dataset's steps become images, state, actions and a prompt.

  cameras:          camera slot -> observation key ('/'-path), or None for an empty slot. Slots the model has
                    but the spec does not name are empty too.
  state_keys:       observation keys concatenated, in this order, into the state (each [D] or scalar per step).
  action_key:       step key of the action ([D] or scalar per step).
  instruction_key:  step key of the language instruction (a string per step), or None.
  prompt:           fixed prompt for every step; used when `instruction_key` is None.
  transform:        optional fn(steps) -> steps on the whole trajectory (a dict of tensors with a leading time
                    axis, images still encoded), applied before the keys above are looked up. TF ops only.
  require_instruction:  drop episodes whose instruction is empty at every step.
  episode_filter:   optional fn(episode) -> tf.bool on the standardised episode (see pi0_jax.data.rlds); False
                    drops it. Filtered episodes count neither in the statistics nor in the mixture weights.
  state_dim, action_dim:  expected sizes after concatenation; None: whatever the dataset's features say.
  unnormalized_state_dims, unnormalized_action_dims:  dimensions passed through unnormalised.
  """

  cameras: Any
  state_keys: tuple[str, ...]
  action_key: str = "action"
  instruction_key: str | None = "language_instruction"
  prompt: str | None = None
  transform: Callable[[dict], dict] | None = None
  require_instruction: bool = False
  episode_filter: Callable[[dict], Any] | None = None
  state_dim: int | None = None
  action_dim: int | None = None
  unnormalized_state_dims: tuple[int, ...] = ()
  unnormalized_action_dims: tuple[int, ...] = ()

  def __post_init__(self):
    # Stored as sorted (slot, key) pairs so that the spec stays hashable and its fingerprint stable.
    cameras = dict(self.cameras)
    object.__setattr__(self, "cameras", tuple(sorted(cameras.items())))
    object.__setattr__(self, "state_keys", tuple(self.state_keys))
    object.__setattr__(self, "unnormalized_state_dims", tuple(int(d) for d in self.unnormalized_state_dims))
    object.__setattr__(self, "unnormalized_action_dims", tuple(int(d) for d in self.unnormalized_action_dims))
    if not self.state_keys:
      raise ValueError("DatasetSpec.state_keys: at least one observation key is needed.")
    if self.instruction_key is None and self.prompt is None:
      raise ValueError("DatasetSpec: give instruction_key or a fixed prompt.")

  @property
  def camera_map(self) -> dict[str, str | None]:
    return dict(self.cameras)

  def fingerprint(self) -> str:
    """A stable hash of everything that changes the standardised numbers (part of the stats cache key)."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    fields["transform"] = _callable_identity(self.transform)
    fields["episode_filter"] = _callable_identity(self.episode_filter)
    blob = json.dumps(fields, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _callable_identity(fn) -> str | None:
  # Name plus bytecode: editing a function's body changes the key, so stale statistics are not reused.
  if fn is None:
    return None
  code = getattr(fn, "__code__", None)
  body = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16] if code else ""
  return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}:{body}"


# Meta-World demonstrations written by pi0_jax.data.build_metaworld: a scene camera and a gripper-side
# camera, the hand position + gripper opening as state, 4-d actions in [-1, 1]. The gripper action is a
# continuous effort, so it is normalised like the rest.
METAWORLD = DatasetSpec(
    cameras={"base_0_rgb": "image", "left_wrist_0_rgb": "wrist_image", "right_wrist_0_rgb": None},
    state_keys=("state",),
    action_key="action",
    instruction_key="language_instruction",
    state_dim=4,
    action_dim=4,
)

DATASETS: Mapping[str, DatasetSpec] = {
    "metaworld_ml10_train": METAWORLD,
    "metaworld_ml10_test": METAWORLD,
}


def get_spec(name: str, specs: Mapping[str, DatasetSpec] | None = None) -> DatasetSpec:
  """The spec of dataset `name` from `specs` (default: DATASETS)."""
  specs = DATASETS if specs is None else specs
  if name not in specs:
    raise ValueError(f"No standardisation spec for dataset {name!r}; known datasets: {sorted(specs)}. Add a "
                     f"DatasetSpec for it to the table you pass, or set the dataset config's `spec` to the name "
                     f"of an entry with the same layout.")
  return specs[name]
