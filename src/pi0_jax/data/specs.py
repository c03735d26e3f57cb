"""Per-dataset standardisation specs: how one RLDS dataset maps onto pi0's inputs.

Dataset specifics live here as data, keyed by dataset name, never as branches
in the pipeline. A spec says which observation key fills which camera slot
(None: the slot stays empty and masked), which observation keys are
concatenated into the robot state, where the action and the instruction are
(or a fixed prompt), an optional transform of the raw steps, and which state or
action dimensions are passed through unnormalised (e.g. a binary gripper).

Keys are '/'-joined paths: camera and state keys inside a step's
`observation`, the action and instruction keys inside the step itself (a key
that itself holds '/', like kuka's 'clip_function_input/...', is matched whole).

A dataset config names its spec in its `spec` field (see `resolve`), so adding
a dataset changes no file of this package:
  spec="bridge"                         an entry of DATASETS (Meta-World + pi0_jax.data.oxe.OXE)
  spec="my_pkg.robots:MY_SPEC"          a DatasetSpec (or a dict of its fields) importable as module:NAME
  spec=dict(cameras={...}, state_keys=[...], transform="my_pkg.robots:my_transform", ...)
                                        the fields inline; `transform` and `episode_filter` as module:function
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
  state_keys:       observation keys concatenated, in this order, into the state (each [D] or scalar per step);
                    () for a dataset without proprioception (the state is then all padding).
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
    if isinstance(self.state_keys, str):
      raise ValueError(f"DatasetSpec.state_keys: expected a list of observation keys, got the string "
                       f"{self.state_keys!r}.")
    object.__setattr__(self, "state_keys", tuple(self.state_keys))
    object.__setattr__(self, "unnormalized_state_dims", tuple(int(d) for d in self.unnormalized_state_dims))
    object.__setattr__(self, "unnormalized_action_dims", tuple(int(d) for d in self.unnormalized_action_dims))
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

_BUILTIN: dict[str, DatasetSpec] = {
    "metaworld_ml10_train": METAWORLD,
    "metaworld_ml10_test": METAWORLD,
}


class _Table(Mapping):
  """The built-in specs: Meta-World's here plus the Open X-Embodiment table, imported on first use."""

  def _all(self) -> dict[str, DatasetSpec]:
    from pi0_jax.data import oxe  # Late: oxe imports this module.
    return {**_BUILTIN, **oxe.OXE_SPECS}

  def __getitem__(self, name):
    if not isinstance(name, str):  # E.g. an inline dict spec looked up by name: not an entry.
      raise KeyError(name)
    return self._all()[name]

  def __iter__(self):
    return iter(self._all())

  def __len__(self):
    return len(self._all())


DATASETS: Mapping[str, DatasetSpec] = _Table()
_FIELDS = {f.name for f in dataclasses.fields(DatasetSpec)}


def get_spec(name: str, specs: Mapping[str, DatasetSpec] | None = None) -> DatasetSpec:
  """The spec of dataset `name` from `specs` (default: DATASETS)."""
  specs = DATASETS if specs is None else specs
  if name not in specs:
    raise ValueError(f"No standardisation spec for dataset {name!r}; known datasets: {sorted(specs)}. Add a "
                     f"DatasetSpec for it to the table you pass, or set the dataset config's `spec` to the name "
                     f"of an entry with the same layout, to 'module:NAME' of a DatasetSpec, or to a dict of its "
                     f"fields.")
  return specs[name]


def import_object(path: str, where: str):
  """`module:NAME` (or `module.NAME`) -> the object; errors name `where` (the config field)."""
  import importlib
  module, sep, attr = path.partition(":")
  if not sep:
    module, _, attr = path.rpartition(".")
  if not module or not attr:
    raise ValueError(f"{where}: {path!r} is not an import path; expected 'module:name'.")
  try:
    obj = importlib.import_module(module)
  except ImportError as e:
    raise ValueError(f"{where}: cannot import module {module!r} of {path!r} ({e}).") from None
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{where}: module {module!r} has no {attr!r} (from {path!r}).")
    obj = getattr(obj, part)
  return obj


def from_fields(fields: Mapping[str, Any], where: str) -> DatasetSpec:
  """A DatasetSpec from a dict of its fields (a config), callables given as 'module:function' strings."""
  fields = dict(fields)
  unknown = sorted(set(fields) - _FIELDS)
  if unknown:
    raise ValueError(f"{where}: unknown DatasetSpec fields {unknown}; fields are {sorted(_FIELDS)}.")
  for key in ("transform", "episode_filter"):
    value = fields.get(key)
    if isinstance(value, str):
      value = import_object(value, f"{where}.{key}")
    if value is not None and not callable(value):
      raise ValueError(f"{where}.{key}: expected a function (or 'module:function'), got {value!r}.")
    fields[key] = value
  for key in ("cameras",):
    if key in fields and not isinstance(fields[key], Mapping):
      raise ValueError(f"{where}.{key}: expected a dict of camera slot -> observation key, got {fields[key]!r}.")
  try:
    return DatasetSpec(**fields)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None


def resolve(spec: Any, *, name: str, specs: Mapping[str, DatasetSpec] | None = None,
            where: str | None = None) -> DatasetSpec:
  """The DatasetSpec a dataset config names: None (the dataset's own name), a table name, 'module:NAME'
  (a DatasetSpec or a dict of its fields), a dict of fields, or a DatasetSpec."""
  where = where or f"dataset {name!r}: spec"
  if spec is None:
    return get_spec(name, specs)
  if isinstance(spec, DatasetSpec):
    return spec
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  if isinstance(spec, Mapping):
    return from_fields(spec, where)
  if not isinstance(spec, str):
    raise ValueError(f"{where}: expected a spec name, 'module:NAME' or a dict of DatasetSpec fields, got {spec!r}.")
  table = DATASETS if specs is None else specs
  if spec in table or ":" not in spec:
    return get_spec(spec, table)
  obj = import_object(spec, where)
  if isinstance(obj, Mapping):
    return from_fields(obj, where)
  if not isinstance(obj, DatasetSpec):
    raise ValueError(f"{where}: {spec!r} is a {type(obj).__name__}, expected a DatasetSpec or a dict of its fields.")
  return obj
