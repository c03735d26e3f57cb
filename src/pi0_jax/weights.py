"""Checkpoint import and export: PaliGemma big_vision `.npz` and openpi's Orbax layout.

Both formats use the published parameter tree (see pi0_jax.model). Every name
and shape is checked against the model's abstract tree (`jax.eval_shape`, no
memory) before any array is read, and one error lists all missing, unexpected
and mismatched keys. Arrays are read, converted and placed one at a time, so
loading never holds a second full copy of a multi-GB checkpoint.

  python -m pi0_jax.weights --npz=paligemma-3b-pt-224.npz --preset=pi0     # validate a file
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

PALIGEMMA_PREFIX = "PaliGemma/"
_EXPERT_SUFFIX = re.compile(r"_[1-9][0-9]*$")


class ParamTreeMismatchError(ValueError):
  """A checkpoint's names or shapes do not fit the model."""

  def __init__(self, source: str, missing: Iterable[str], unexpected: Iterable[str],
               mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]):
    self.missing, self.unexpected, self.mismatched = sorted(missing), sorted(unexpected), dict(mismatched)
    lines = [f"{source} does not fit the model's parameter tree:"]
    if self.mismatched:
      lines.append(f"  {len(self.mismatched)} mismatched shape(s):")
      lines += [f"    {k}: expected {want}, found {got}" for k, (want, got) in sorted(self.mismatched.items())]
    if self.missing:
      lines.append(f"  {len(self.missing)} missing key(s):")
      lines += [f"    {k}" for k in self.missing]
    if self.unexpected:
      lines.append(f"  {len(self.unexpected)} unexpected key(s):")
      lines += [f"    {k}" for k in self.unexpected]
    super().__init__("\n".join(lines))


def flatten(tree) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, Any]):
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def abstract_params(config) -> dict:
  """The pi0 parameter tree of `config` as ShapeDtypeStructs (no memory used)."""
  from pi0_jax.model import Observation, Pi0
  model = Pi0(config)
  obs = Observation.fake(config, 1)
  actions = jnp.zeros((1, config.action_horizon, config.action_dim))
  return jax.eval_shape(model.init, jax.random.key(0), obs, actions)["params"]


def is_paligemma_path(path: str) -> bool:
  """SigLIP and Gemma expert 0: what a PaliGemma checkpoint holds (no `_1` expert modules, no pi0 heads)."""
  if not path.startswith(PALIGEMMA_PREFIX):
    return False
  if path.startswith(PALIGEMMA_PREFIX + "img/"):
    return True
  return not any(_EXPERT_SUFFIX.search(part) for part in path.split("/"))


def check_tree(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], source: str) -> None:
  """Raises ParamTreeMismatchError unless `found` has exactly the names and shapes of `expected`."""
  missing = set(expected) - set(found)
  unexpected = set(found) - set(expected)
  mismatched = {k: (tuple(expected[k]), tuple(found[k])) for k in set(found) & set(expected)
                if tuple(found[k]) != tuple(expected[k])}
  if missing or unexpected or mismatched:
    raise ParamTreeMismatchError(source, missing, unexpected, mismatched)


# --- PaliGemma .npz ----------------------------------------------------------------------------------


def _npz_key_to_path(key: str) -> str:
  if key.startswith("params/"):
    key = key[len("params/"):]
  return PALIGEMMA_PREFIX + key


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype from an .npy member's header, without reading its data."""
  with zf.open(name) as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      shape, _, dtype = np.lib.format._read_array_header(f, version)  # pylint: disable=protected-access
  return tuple(shape), dtype


def npz_shapes(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{npz key: (shape, stored dtype)} read from the headers only."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"PaliGemma checkpoint not found: {path}")
  with zipfile.ZipFile(path) as zf:
    return {name[:-len(".npy")]: _npy_header(zf, name) for name in zf.namelist() if name.endswith(".npy")}


def _as_numeric(x: np.ndarray) -> np.ndarray:
  # big_vision stores bfloat16 as 2-byte void; numpy has no bfloat16 of its own.
  if x.dtype.kind == "V" and x.dtype.itemsize == 2:
    return x.view(ml_dtypes.bfloat16)
  return x


def load_paligemma_npz(path: str, config, *, rng, shardings=None, dtype=None) -> dict:
  """Full pi0 params: SigLIP + Gemma expert 0 from a big_vision `.npz`, the rest initialised from `rng`.

  `shardings`: a tree of jax Shardings matching the params, or a callable path -> Sharding, or None
  (default device). `dtype` overrides the model's parameter dtype (float32) for loaded arrays.
  """
  expected = {k: v for k, v in flatten(abstract_params(config)).items()}
  stored = npz_shapes(path)
  paths = {_npz_key_to_path(k): k for k in stored}
  check_tree({p: stored[k][0] for p, k in paths.items()},
             {k: v.shape for k, v in expected.items() if is_paligemma_path(k)}, source=path)

  if shardings is None:
    sharding_of = lambda p: None
  elif callable(shardings):
    sharding_of = shardings
  else:
    sharding_of = flatten(shardings).__getitem__

  # Initialise only what the file does not hold; XLA drops the rest of init.
  rest = [k for k in expected if k not in paths]
  from pi0_jax.model import Observation, Pi0
  model = Pi0(config)

  def init_rest(r):
    params = flatten(model.init(r, Observation.fake(config, 1),
                                jnp.zeros((1, config.action_horizon, config.action_dim)))["params"])
    return {k: params[k] for k in rest}

  out_sh = None if shardings is None else {k: sharding_of(k) for k in rest}
  flat = dict(jax.jit(init_rest, out_shardings=out_sh)(rng))

  with np.load(path, allow_pickle=False) as npz:
    for p, key in paths.items():
      target = jnp.dtype(dtype) if dtype is not None else expected[p].dtype
      array = _as_numeric(npz[key]).astype(target)
      sh = sharding_of(p)
      flat[p] = jax.device_put(array, sh) if sh is not None else jnp.asarray(array)
      del array
  return unflatten(flat)


def save_paligemma_npz(params, path: str, *, dtype: str | None = "bfloat16", prefix: str = "params/") -> list[str]:
  """Writes SigLIP + Gemma expert 0 in big_vision's `.npz` layout, one array at a time.

  bfloat16 arrays are stored as 2-byte void (`|V2`), as big_vision does. Returns the keys written.
  """
  flat = flatten(params.get("params", params) if isinstance(params, Mapping) else params)
  keys = []
  tmp = path + ".tmp"
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
    for p, value in flat.items():
      if not is_paligemma_path(p):
        continue
      array = np.asarray(jax.device_get(value))
      if dtype is not None:
        array = array.astype(jnp.dtype(dtype))
      if array.dtype == ml_dtypes.bfloat16:
        array = array.view(np.dtype("V2"))
      key = prefix + p[len(PALIGEMMA_PREFIX):]
      with zf.open(key + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
      keys.append(key)
  os.replace(tmp, path)
  return keys


# --- openpi Orbax layout -----------------------------------------------------------------------------


def save_openpi_params(params, directory: str) -> None:
  """Writes `{"params": tree}` as an Orbax PyTree checkpoint, the layout openpi restores from."""
  import orbax.checkpoint as ocp
  tree = params.get("params", params) if isinstance(params, Mapping) and set(params) == {"params"} else params
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), {"params": tree})


def load_openpi_params(directory: str, config=None, *, shardings=None, dtype=None) -> dict:
  """Reads openpi's Orbax params (trailing `value` path components stripped) and checks them against `config`.

  With `shardings` (a tree matching the params) arrays land sharded; otherwise as numpy arrays.
  """
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  if not os.path.exists(directory):
    raise FileNotFoundError(f"openpi params not found: {directory}")
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(directory)
    tree_meta = getattr(metadata, "item_metadata", metadata)
    tree_meta = getattr(tree_meta, "tree", tree_meta)
    if "params" not in tree_meta:
      raise ParamTreeMismatchError(directory, ["params"], list(tree_meta), {})
    item = {"params": tree_meta["params"]}
    flat_meta = flatten(item["params"])
    strip = bool(flat_meta) and all(k.split("/")[-1] == "value" for k in flat_meta)
    name_of = (lambda k: k.rsplit("/", 1)[0]) if strip else (lambda k: k)
    found = {name_of(k): tuple(v.shape) for k, v in flat_meta.items()}
    if config is not None:
      check_tree(found, {k: v.shape for k, v in flatten(abstract_params(config)).items()}, source=directory)
    flat_sh = flatten(shardings) if shardings is not None else None

    def restore_args(key, meta):
      kw = {"dtype": jnp.dtype(dtype)} if dtype is not None else {}
      if flat_sh is not None:
        return ocp.ArrayRestoreArgs(sharding=flat_sh[name_of(key)], **kw)
      return ocp.RestoreArgs(restore_type=np.ndarray, **kw)

    args = {"params": unflatten({k: restore_args(k, v) for k, v in flat_meta.items()})}
    restored = ckptr.restore(directory, ocp.args.PyTreeRestore(item=item, restore_args=args))["params"]
  return unflatten({name_of(k): v for k, v in flatten(restored).items()})


def main(argv):
  from absl import flags
  from pi0_jax.model import get_preset
  del argv
  f = flags.FLAGS
  config = get_preset(f.preset)
  expected = {k: v.shape for k, v in flatten(abstract_params(config)).items()}
  if f.npz:
    stored = npz_shapes(f.npz)
    found = {_npz_key_to_path(k): s for k, (s, _) in stored.items()}
    check_tree(found, {k: v for k, v in expected.items() if is_paligemma_path(k)}, source=f.npz)
    n = sum(int(np.prod(s)) for s in found.values())
    dtypes = sorted({str(_as_numeric(np.empty(0, d)).dtype) for _, d in stored.values()})
    print(f"{f.npz}: {len(found)} arrays, {n:,} parameters ({', '.join(dtypes)}), fits preset {f.preset!r}.")
  if f.openpi:
    params = load_openpi_params(f.openpi, config)
    print(f"{f.openpi}: {len(flatten(params))} arrays fit preset {f.preset!r}.")


if __name__ == "__main__":
  from absl import app, flags as _flags
  _flags.DEFINE_string("npz", None, "A PaliGemma big_vision .npz to check.")
  _flags.DEFINE_string("openpi", None, "An openpi params directory (Orbax) to check.")
  _flags.DEFINE_string("preset", "pi0", "Pi0Config preset to check against (pi0_jax.model.PRESETS).")
  app.run(main)
