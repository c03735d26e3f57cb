"""Device mesh and parameter sharding by rules over '/'-joined parameter paths.

Mesh axes come from the config as (name, size) pairs; one size may be -1
(all remaining devices). The batch is split over every data-parallel axis
(`data_axes`); parameters and optimizer state are fully sharded (FSDP) over
`fsdp_axes`.

Rules are (regex, spec) pairs, first match wins; a spec is a tuple with one
entry per array dimension: None, a mesh axis name, a tuple of names, or the
string "auto" for the automatic FSDP choice below. The default rule `(".*", "auto")`
shards every parameter automatically: each FSDP axis (largest first) goes to
the largest dimension whose remaining size it divides. With a factored FSDP
mesh (e.g. fsdp=16 x fsdp2=16 on 256 chips), SigLIP's 1152 and 4304, which
256 does not divide, still end up split 16 x 16 across two dimensions. What
no axis divides stays replicated along that axis.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def parse_mesh(spec: str | Sequence) -> list[tuple[str, int]]:
  """'data:1,fsdp:-1' (the command-line form) or [[name, size], ...] -> [('data', 1), ('fsdp', -1)]."""
  if not isinstance(spec, str):
    return [(str(name), int(size)) for name, size in spec]
  out = []
  for item in (s.strip() for s in spec.split(",") if s.strip()):
    name, sep, size = item.partition(":")
    if not sep or not name or not re.fullmatch(r"-?\d+", size.strip()):
      raise ValueError(f"mesh {spec!r}: expected NAME:SIZE pairs separated by commas, e.g. data:1,fsdp:-1.")
    out.append((name.strip(), int(size)))
  return out


def resolve_mesh_axes(axes, num_devices: int, where: str = "") -> list[tuple[str, int]]:
  """Mesh axes (see parse_mesh) with a -1 size filled in; ValueError unless they multiply to `num_devices`.

  Needs no devices, so AOT compiles check a mesh before loading the TPU compiler. `where` ends the messages
  (e.g. " on v5e:16x16").
  """
  axes = parse_mesh(axes)
  names = [a for a, _ in axes]
  sizes = [s for _, s in axes]
  shown = dict(axes)
  if not axes or len(set(names)) != len(names):
    raise ValueError(f"mesh axes: need at least one axis and distinct names, got {names}{where}.")
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh axes: at most one size may be -1, got {shown}{where}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh axes: sizes must be positive or -1, got {shown}{where}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh axes {shown}: {num_devices} devices are not a multiple of {known}{where}.")
    sizes[sizes.index(-1)] = num_devices // known
  total = math.prod(sizes)
  if total > num_devices:
    raise ValueError(f"mesh axes {shown} need {total} devices, but only {num_devices} are available{where}.")
  if total < num_devices:
    raise ValueError(f"mesh axes {shown} use {total} of {num_devices} devices{where}; use -1 on one axis or make "
                     "the sizes multiply to the device count.")
  return list(zip(names, sizes))


SLICE_AXIS = "slice"  # The mesh axis that runs across TPU slices (over the data-centre network).


def num_slices(devices: Sequence[Any]) -> int:
  """How many TPU slices `devices` span (1 for CPUs, GPUs and single-slice TPUs)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(axes: Sequence[tuple[str, int]] | str, devices: Sequence[Any] | None = None) -> Mesh:
  """A Mesh with the named axes; one size may be -1. Errors name the offending sizes.

  An axis named SLICE_AXIS is laid across slices and every other axis inside each slice
  (`mesh_utils.create_hybrid_device_mesh`), so only that axis's collectives cross the data-centre network.
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = resolve_mesh_axes(axes, len(devices))
  names, sizes = [a for a, _ in axes], [s for _, s in axes]
  slices = num_slices(devices)
  if slices > 1 and dict(axes).get(SLICE_AXIS) != slices:
    raise ValueError(f"mesh axes {dict(axes)}: the devices span {slices} slices, so the mesh needs a "
                     f"{SLICE_AXIS!r} axis of size {slices} (data parallel across slices).")
  try:
    if SLICE_AXIS in names and slices > 1:
      i = names.index(SLICE_AXIS)
      ici = [1 if j == i else s for j, s in enumerate(sizes)]
      dcn = [s if j == i else 1 for j, s in enumerate(sizes)]
      grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
    else:
      grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
  except Exception:  # Topologies the helper does not know (e.g. simulated CPU devices): plain order.
    grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, tuple(names), axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def check_axes(mesh_shape: Mapping[str, int], data_axes: Sequence[str], fsdp_axes: Sequence[str] = ()) -> None:
  """ValueError unless every data/FSDP axis is an axis of the mesh."""
  for kind, names in (("data_axes", data_axes), ("fsdp_axes", fsdp_axes)):
    for name in names:
      if name not in mesh_shape:
        raise ValueError(f"{kind} names {name!r}, but the mesh axes are {tuple(mesh_shape)}.")


def check_batch(global_batch: int, mesh_shape: Mapping[str, int], data_axes: Sequence[str], *,
                grad_accum_steps: int = 1, process_count: int = 1) -> None:
  """The one check of a global batch against the mesh, the processes and gradient accumulation.

  Every process feeds global_batch / process_count rows; each of the grad_accum_steps micro-batches is split
  over the data-parallel axes. `mesh_shape` may be a Mesh's shape or resolved (name -> size) axes.
  """
  check_axes(mesh_shape, data_axes)
  batch, accum = int(global_batch), int(grad_accum_steps)
  dp = math.prod(mesh_shape[a] for a in data_axes)
  where = f"(mesh axes {tuple(data_axes)} of {dict(mesh_shape)})"
  if accum < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {accum}.")
  if batch < 1 or batch % dp:
    raise ValueError(f"global_batch={batch} is not divisible by the data-parallel size {dp} {where}.")
  if batch % process_count:
    raise ValueError(f"global_batch={batch} is not divisible by the process count {process_count}.")
  if batch % accum or (batch // accum) % dp:
    raise ValueError(f"global_batch={batch} must split into grad_accum_steps={accum} micro-batches that are each "
                     f"divisible by the data-parallel size {dp} {where}.")


def auto_fsdp_spec(shape: Sequence[int], mesh: Mesh, fsdp_axes: Sequence[str], min_size: int = 2**14) -> P:
  """Spreads `fsdp_axes` over the dimensions of `shape` (see the module docstring).

  Arrays with fewer than `min_size` elements stay replicated: sharding them saves nothing.
  """
  spec: list[list[str]] = [[] for _ in shape]
  if math.prod(shape) < min_size:
    return P()
  remaining = list(shape)
  for axis in sorted(fsdp_axes, key=lambda a: -mesh.shape[a]):
    n = mesh.shape[axis]
    if n == 1:
      continue
    candidates = [d for d in range(len(shape)) if remaining[d] % n == 0 and remaining[d] >= n]
    if not candidates:
      continue
    d = max(candidates, key=lambda d: (remaining[d], d))
    spec[d].append(axis)
    remaining[d] //= n
  if not any(spec):
    return P()
  return P(*[None if not s else s[0] if len(s) == 1 else tuple(s) for s in spec])


def _spec_from_rule(rule_spec, shape, mesh, fsdp_axes) -> P:
  if rule_spec == "auto":
    return auto_fsdp_spec(shape, mesh, fsdp_axes)
  if rule_spec in (None, (), "replicate"):
    return P()
  spec = tuple(rule_spec)
  if len(spec) != len(shape):
    raise ValueError(f"sharding rule spec {spec} has {len(spec)} entries for an array of shape {tuple(shape)}.")
  parts = []
  for entry, size in zip(spec, shape):
    if entry == "auto":
      raise ValueError("sharding rule: 'auto' stands for a whole spec, not one dimension.")
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    for a in axes:
      if a not in mesh.shape:
        raise ValueError(f"sharding rule names mesh axis {a!r}, the mesh has {tuple(mesh.shape)}.")
    if size % math.prod(mesh.shape[a] for a in axes):
      raise ValueError(f"sharding rule {spec}: dimension of size {size} is not divisible by axes {axes}.")
    parts.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*parts)


def param_specs(tree, mesh: Mesh, rules: Iterable[tuple[str, Any]], fsdp_axes: Sequence[str]):
  """PartitionSpecs for every leaf of `tree` (arrays or ShapeDtypeStructs), by the first matching rule."""
  rules = [(re.compile(pattern), spec) for pattern, spec in rules]
  flat = traverse_util.flatten_dict(tree, sep="/") if isinstance(tree, dict) else None
  if flat is None:
    raise TypeError("param_specs expects a nested dict of parameters.")
  out = {}
  for path, leaf in flat.items():
    for pattern, spec in rules:
      if pattern.fullmatch(path):
        out[path] = _spec_from_rule(spec, leaf.shape, mesh, fsdp_axes)
        break
    else:
      out[path] = P()
  return traverse_util.unflatten_dict(out, sep="/")


def tree_shardings(specs, mesh: Mesh):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, data_axes: Sequence[str]) -> NamedSharding:
  """Leading (batch) dimension split over all data-parallel axes."""
  check_axes(mesh.shape, data_axes)
  return NamedSharding(mesh, P(tuple(data_axes)))


def data_parallel_size(mesh: Mesh, data_axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[a] for a in data_axes)


def describe(specs) -> str:
  """One line per parameter: path and spec (for logs)."""
  flat = traverse_util.flatten_dict(specs, sep="/")
  return "\n".join(f"{k}: {v}" for k, v in sorted(flat.items()))


def state_shardings(abstract_state: dict, mesh: Mesh, rules, fsdp_axes: Sequence[str], tx) -> dict:
  """NamedShardings for a train state (see pi0_jax.train.step): optimizer moments follow their params."""
  import optax  # Local: keeps this module usable without the optimizer.

  p_specs = param_specs(abstract_state["params"], mesh, rules, fsdp_axes)
  replicated = P()
  # Frozen parameters (optimizer.frozen_mask) have no state: a MaskedNode stays one.
  opt_specs = optax.tree_map_params(tx, lambda x, spec: x if isinstance(x, optax.MaskedNode) else spec,
                                    abstract_state["opt_state"], p_specs, transform_non_params=lambda _: replicated,
                                    is_leaf=lambda x: isinstance(x, (P, optax.MaskedNode)))
  specs = {k: replicated for k in abstract_state if k not in ("params", "opt_state", "ema_params")}
  specs.update(params=p_specs, opt_state=opt_specs)
  if "ema_params" in abstract_state:
    specs["ema_params"] = p_specs
  return tree_shardings(specs, mesh)
