"""Checkpoint import and export: PaliGemma big_vision `.npz` and openpi's Orbax layout.

Both formats hold the published parameter tree (SPEC "Parameter tree"; see
pi0_jax.model). Every name and shape is checked against the model's abstract
tree (`jax.eval_shape`, no memory) before any array is read, and a single
`ParamTreeMismatchError` lists all missing, unexpected and mismatched keys.

A PaliGemma `.npz` holds SigLIP and Gemma expert 0 only (file key
`params/llm/...` or `llm/...` -> model path `PaliGemma/llm/...`); the action
expert and the pi0 heads are initialised. Real files are 5.9-11.7 GB, so arrays
are read, converted and placed one at a time and the file is never held twice.

LoRA factors (pi0_jax.model.lora) carry openpi's names, so an openpi LoRA params
tree loads as it is and `save_openpi_params` writes ours in its layout; a base
checkpoint loaded into a LoRA model may lack them (`init_missing`). `load_init`
picks what a training run starts from (`config.init`).

Validate a file without reading its arrays:

  python -m pi0_jax.weights --npz=paligemma-3b-pt-224.npz --config_preset=pi0 --check
  python -m pi0_jax.weights --openpi=pi0_base/params --config_preset=pi0 --check
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from pi0_jax import files
from pi0_jax.cli import UserError

__all__ = [
    "INIT_SOURCES", "ParamTreeMismatchError", "abstract_params", "check_openpi_params", "check_paligemma_npz",
    "check_tree", "flatten", "init_subset_fn", "is_paligemma_path", "latest_state_dir", "load_init",
    "load_openpi_params", "load_params", "load_paligemma_npz", "npz_array_headers",
    "npz_key_to_path", "openpi_param_shapes", "paligemma_npz_shapes", "save_openpi_params", "save_paligemma_npz",
    "unflatten",
]

PALIGEMMA_PREFIX = "PaliGemma/"
NPZ_PREFIX = "params/"
# Modules of expert i > 0 end in `_i`; expert 0 and SigLIP's automatic names
# (`LayerNorm_0`, ...) are told apart by living under `llm/` vs `img/`.
_EXPERT_SUFFIX = re.compile(r"_[1-9][0-9]*$")

Shape = tuple[int, ...]
ShardingSpec = Any  # None, one jax.sharding.Sharding, a tree of them, or a callable path -> Sharding.


class ParamTreeMismatchError(UserError, ValueError):
  """A checkpoint's names, shapes or dtypes do not fit the model's parameter tree.

  Attributes: `missing`, `unexpected` (sorted lists of paths), `mismatched`
  ({path: (expected shape, found shape)}), `bad_dtypes` ({path: dtype}).
  """

  def __init__(self, source: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
               mismatched: Mapping[str, tuple[Shape, Shape]] | None = None,
               bad_dtypes: Mapping[str, Any] | None = None, *, aliases: Mapping[str, str] | None = None,
               note: str = ""):
    self.source = source
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.mismatched = dict(sorted((mismatched or {}).items()))
    self.bad_dtypes = dict(sorted((bad_dtypes or {}).items()))
    aliases = aliases or {}
    # Show the checkpoint's own key beside the model path where they differ, so the user can find it in the file.
    name = lambda k: f"{k} (file key {aliases[k]!r})" if k in aliases and aliases[k] != k else k
    counts = [f"{len(v)} {what}" for v, what in ((self.mismatched, "shape mismatch(es)"), (self.missing, "missing"),
                                                 (self.unexpected, "unexpected"), (self.bad_dtypes, "bad dtype(s)"))
              if v]
    lines = [f"{source} does not fit the model's parameter tree: {', '.join(counts)}."]
    if note:
      lines.append(f"  ({note})")
    for k, (want, got) in self.mismatched.items():
      lines.append(f"  shape mismatch: {name(k)}: expected {tuple(want)}, found {tuple(got)}")
    lines += [f"  missing: {name(k)}" for k in self.missing]
    lines += [f"  unexpected: {name(k)}" for k in self.unexpected]
    lines += [f"  unsupported dtype: {name(k)}: {d} (expected floating point or bfloat16 as |V2)"
              for k, d in self.bad_dtypes.items()]
    super().__init__("\n".join(lines))


# --- trees ---------------------------------------------------------------------------------------------


def flatten(tree) -> dict[str, Any]:
  """{'a/b/c': leaf} from a nested dict."""
  return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict:
  """The inverse of `flatten`: plain nested dicts."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def _unwrap(params):
  # Accept `{"params": tree}` (what init returns) as well as the bare tree.
  if isinstance(params, Mapping) and set(params) == {"params"}:
    return params["params"]
  return params


def _init_args(config):
  from pi0_jax.model import Observation  # pylint: disable=g-import-not-at-top
  return Observation.fake(config, 1), jnp.zeros((1, config.action_horizon, config.action_dim), jnp.float32)


@functools.lru_cache(maxsize=8)
def _abstract_params_cached(config) -> dict:
  from pi0_jax.model import Pi0  # pylint: disable=g-import-not-at-top
  return jax.eval_shape(Pi0(config).init, jax.random.key(0), *_init_args(config))["params"]


def abstract_params(config) -> dict:
  """The pi0 parameter tree of `config` as jax.ShapeDtypeStructs (eval_shape: no memory, no compute)."""
  return jax.tree.map(lambda x: x, _abstract_params_cached(config))  # A fresh container, so callers may edit it.


def is_paligemma_path(path: str) -> bool:
  """True for SigLIP and Gemma expert 0 (what a PaliGemma checkpoint holds), False for the action expert, heads and
  LoRA factors."""
  from pi0_jax.model import lora  # pylint: disable=g-import-not-at-top
  if re.fullmatch(lora.PATH_REGEX, path):
    return False
  if path.startswith(PALIGEMMA_PREFIX + "img/"):
    return True
  if path.startswith(PALIGEMMA_PREFIX + "llm/"):
    return not any(_EXPERT_SUFFIX.search(part) for part in path.split("/"))
  return False


def _diff(found: Mapping[str, Shape], expected: Mapping[str, Shape]):
  missing = set(expected) - set(found)
  unexpected = set(found) - set(expected)
  mismatched = {k: (tuple(expected[k]), tuple(found[k]))
                for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k])}
  return missing, unexpected, mismatched


def check_tree(found: Mapping[str, Shape], expected: Mapping[str, Shape], source: str, *,
               aliases: Mapping[str, str] | None = None, note: str = "") -> None:
  """Raises ParamTreeMismatchError unless `found` has exactly the names and shapes of `expected`.

  Both map '/'-joined paths to shapes. `source` (a file name) heads the message; `aliases` maps a path to the
  checkpoint's own key for it, shown beside the path.
  """
  missing, unexpected, mismatched = _diff(found, expected)
  if missing or unexpected or mismatched:
    raise ParamTreeMismatchError(source, missing, unexpected, mismatched, aliases=aliases, note=note)


def _shapes(tree) -> dict[str, Shape]:
  return {k: tuple(v.shape) for k, v in flatten(tree).items()}


def _sharding_fn(shardings: ShardingSpec) -> Callable[[str], Any]:
  """path -> Sharding (or None: default device) from any of the accepted forms of `shardings`."""
  if shardings is None:
    return lambda path: None
  if isinstance(shardings, jax.sharding.Sharding):
    return lambda path: shardings
  if callable(shardings) and not isinstance(shardings, Mapping):
    return shardings
  flat = flatten(_unwrap(shardings))

  def lookup(path):
    if path not in flat:
      raise KeyError(f"`shardings` has no entry for {path!r}; it must be a tree matching the params.")
    return flat[path]

  return lookup


def _float_dtype(dtype):
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be a floating point type, got {dtype}.")
  return dtype


# --- PaliGemma .npz --------------------------------------------------------------------------------------


def npz_key_to_path(key: str) -> str:
  """big_vision key (`params/img/...` or `img/...`) -> model path (`PaliGemma/img/...`)."""
  return PALIGEMMA_PREFIX + (key[len(NPZ_PREFIX):] if key.startswith(NPZ_PREFIX) else key)


def paligemma_npz_shapes(params, *, prefix: str = NPZ_PREFIX) -> dict[str, Shape]:
  """{npz key: shape} that `save_paligemma_npz` writes for `params` (works on ShapeDtypeStructs too)."""
  return {prefix + path[len(PALIGEMMA_PREFIX):]: tuple(leaf.shape)
          for path, leaf in flatten(_unwrap(params)).items() if is_paligemma_path(path)}


def _read_npy_header(f) -> tuple[Shape, np.dtype]:
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
  elif version == (2, 0):
    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
  else:
    raise ValueError(f"unsupported .npy format version {version}")
  return tuple(shape), dtype


def npz_array_headers(path: str) -> dict[str, tuple[Shape, np.dtype] | None]:
  """{key: (shape, stored dtype)} of every member of an `.npz`, from the .npy headers only (no array data).

  Keys are the names `np.load(path).files` uses; a member that is not an .npy array maps to None.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"PaliGemma checkpoint not found: {path}")
  out = {}
  try:
    zf = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:  # Its message ("File is not a zip file") names no file.
    raise UserError(f"{path}: not a readable .npz (a zip archive of .npy arrays): {e}; an incomplete download?") from e
  with zf:
    for name in zf.namelist():
      if not name.endswith(".npy"):
        out[name] = None
        continue
      with zf.open(name) as f:
        try:
          out[name[:-len(".npy")]] = _read_npy_header(f)
        except ValueError as e:
          raise ValueError(f"{path}: member {name!r} is not a readable .npy array: {e}") from e
  return out


def _is_supported_dtype(dtype: np.dtype) -> bool:
  # big_vision writes bfloat16 as 2-byte void; anything else must be a real float type.
  return (dtype.kind == "V" and dtype.itemsize == 2 and dtype.fields is None) or dtype.kind == "f" or (
      dtype == ml_dtypes.bfloat16)


def check_paligemma_npz(path: str, config) -> dict[str, str]:
  """Checks a big_vision `.npz` against `config` from its headers alone; returns {model path: npz key}.

  Raises ParamTreeMismatchError listing every missing, unexpected (including duplicate, e.g. both `params/x`
  and `x`) and mismatched key, or an unsupported dtype.
  """
  headers = npz_array_headers(path)
  expected = {k: tuple(v.shape) for k, v in flatten(abstract_params(config)).items() if is_paligemma_path(k)}
  keys, found, unexpected, bad_dtypes, aliases = {}, {}, set(), {}, {}
  for key, header in headers.items():
    model_path = npz_key_to_path(key)
    if header is None or model_path in keys:
      unexpected.add(key)
      continue
    keys[model_path], found[model_path], aliases[model_path] = key, header[0], key
    if not _is_supported_dtype(header[1]):
      bad_dtypes[model_path] = header[1]
  missing, wrong_names, mismatched = _diff(found, expected)
  if missing or wrong_names or unexpected or mismatched or bad_dtypes:
    raise ParamTreeMismatchError(
        path, missing, {aliases[k] for k in wrong_names} | unexpected, mismatched, bad_dtypes, aliases=aliases,
        note="file keys map to model paths by dropping a leading 'params/' and adding 'PaliGemma/'; a PaliGemma "
        "file holds SigLIP and Gemma expert 0 only")
  return keys


def _as_numeric(x: np.ndarray) -> np.ndarray:
  if x.dtype.kind == "V" and x.dtype.itemsize == 2:
    return x.view(ml_dtypes.bfloat16)
  return x


@functools.lru_cache(maxsize=16)
def _init_subset_fn_cached(config, paths, dtype, out_shardings):
  from pi0_jax.model import Pi0  # pylint: disable=g-import-not-at-top
  model = Pi0(config)

  def init(rng):
    params = flatten(model.init(rng, *_init_args(config))["params"])
    return {k: params[k] if dtype is None else params[k].astype(dtype) for k in paths}

  shardings = None if out_shardings is None else dict(zip(paths, out_shardings))
  return jax.jit(init, out_shardings=shardings)


def init_subset_fn(config, paths: tuple[str, ...], dtype=None, out_shardings: tuple | None = None):
  """A jitted `rng -> {path: leaf}` giving the leaves `paths` exactly as `Pi0(config).init(rng, ...)` would.

  Only those leaves are outputs, so XLA prunes the rest of init and the forward pass init traces: for the full
  pi0, initialising the action expert and heads needs about 1.6 GB, not the 12.9 GB of the whole model.
  `out_shardings`: one Sharding per path, or None.
  """
  paths = tuple(paths)
  try:
    return _init_subset_fn_cached(config, paths, dtype, out_shardings)
  except TypeError:  # An unhashable config or sharding: build it afresh.
    return _init_subset_fn_cached.__wrapped__(config, paths, dtype, out_shardings)


def load_paligemma_npz(path: str, config, *, rng, shardings: ShardingSpec = None, dtype=None) -> dict:
  """Full pi0 params: SigLIP + Gemma expert 0 from a big_vision `.npz`, the rest initialised from `rng`.

  Args:
    path: the `.npz` (keys with or without the `params/` prefix; bfloat16 stored as `|V2` is understood).
    config: the Pi0Config whose tree the file must fit.
    rng: a jax PRNG key (or int seed). The action expert and pi0 heads get exactly the values
      `Pi0(config).init(rng, ...)` would give them.
    shardings: where arrays go: a tree of jax.sharding.Sharding matching the params, one Sharding for all,
      a callable path -> Sharding, or None (the default device).
    dtype: dtype of every leaf; default the model's parameter dtype (float32).

  Returns:
    The params tree (without the `{"params": ...}` wrapper).
  """
  # Everything is checked before a byte of array data is read or anything is initialised.
  npz_keys = check_paligemma_npz(path, config)
  expected = flatten(abstract_params(config))
  sharding_of = _sharding_fn(shardings)
  if isinstance(rng, (int, np.integer)):
    rng = jax.random.key(rng)

  rest = tuple(k for k in expected if k not in npz_keys)
  out_shardings = None
  if shardings is not None:
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out_shardings = tuple(sharding_of(k) or default for k in rest)
  init = init_subset_fn(config, rest, None if dtype is None else _float_dtype(dtype), out_shardings)
  flat = dict(init(rng))

  with np.load(path, allow_pickle=False) as npz:
    for model_path, key in npz_keys.items():
      target = expected[model_path].dtype if dtype is None else _float_dtype(dtype)
      array = _as_numeric(npz[key]).astype(target, copy=False)
      flat[model_path] = jax.device_put(array, sharding_of(model_path))
      del array  # Only the placed copy survives the loop iteration.
  return unflatten({k: flat[k] for k in expected})


def save_paligemma_npz(params, path: str, *, dtype: Any = "bfloat16", prefix: str = NPZ_PREFIX) -> list[str]:
  """Writes SigLIP + Gemma expert 0 of `params` as a big_vision `.npz`, one array at a time.

  Args:
    params: the pi0 params tree (or `{"params": tree}`); only the PaliGemma part is written.
    path: the output file; written to `path + '.tmp'` and renamed when complete.
    dtype: cast every array to it (None keeps each array's dtype). bfloat16 is stored as 2-byte void (`|V2`),
      as big_vision does, since numpy has no bfloat16 of its own.
    prefix: prepended to every key (big_vision uses `params/`).

  Returns:
    The keys written (as `np.load(path).files` lists them).
  """
  flat = flatten(_unwrap(params))
  names = paligemma_npz_shapes(params, prefix=prefix)
  path = os.fspath(path)
  tmp = path + ".tmp"
  try:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
      for key in names:
        array = np.asarray(jax.device_get(flat[PALIGEMMA_PREFIX + key[len(prefix):]]))
        if dtype is not None:
          array = array.astype(jnp.dtype(dtype), copy=False)
        if array.dtype == ml_dtypes.bfloat16:
          array = array.view(np.dtype("V2"))
        # force_zip64: a member over 2 GiB (the f32 embedding table) needs zip64 headers, known before writing.
        with zf.open(key + ".npy", "w", force_zip64=True) as f:
          np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
        del array
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return list(names)


# --- openpi Orbax layout -------------------------------------------------------------------------------------


def _resolve_openpi_dir(directory: str) -> str:
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.exists(directory):
    raise FileNotFoundError(f"openpi params not found: {directory}")
  # openpi keeps params in `<step>/params`; accept the step directory too.
  inner = os.path.join(directory, "params")
  if not os.path.exists(os.path.join(directory, "_METADATA")) and os.path.exists(os.path.join(inner, "_METADATA")):
    return inner
  return directory


def _openpi_metadata(directory: str, key: str | None = "params") -> tuple[dict[str, Any], bool]:
  """({stored leaf path: ArrayMetadata}, whether paths carry a trailing `value`) from metadata only.

  `key`: the subtree holding the params (openpi and train states: "params"), or None for a bare tree.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(directory).item_metadata
  tree = getattr(tree, "tree", tree)
  if tree is None or (key is not None and key not in tree):
    top = [] if tree is None else sorted(tree.keys())
    note = "openpi params are saved as {'params': tree}" if key == "params" else f"expected a {key!r} subtree"
    raise ParamTreeMismatchError(directory, [key or "params"], top, note=note)
  flat = flatten(dict(tree if key is None else tree[key]))
  # openpi's nnx.State saves wrap every leaf in {'value': ...}.
  strip = bool(flat) and all(k.rsplit("/", 1)[-1] == "value" for k in flat)
  return flat, strip


def _strip_value(key: str, strip: bool) -> str:
  return key.rsplit("/", 1)[0] if strip else key


def openpi_param_shapes(directory: str) -> dict[str, Shape]:
  """{model path: shape} of an openpi params checkpoint (trailing `value` stripped), from metadata only."""
  flat, strip = _openpi_metadata(_resolve_openpi_dir(directory))
  return {_strip_value(k, strip): tuple(v.shape) for k, v in flat.items()}


def check_openpi_params(directory: str, config) -> dict[str, Shape]:
  """Checks an openpi params checkpoint against `config` without reading arrays; returns its shapes."""
  shapes = openpi_param_shapes(directory)
  check_tree(shapes, _shapes(abstract_params(config)), _resolve_openpi_dir(directory))
  return shapes


def save_openpi_params(params, directory: str, *, force: bool = False) -> None:
  """Writes `{"params": tree}` as an Orbax PyTree checkpoint, the layout openpi's `restore_params` reads.

  `params`: the tree or `{"params": tree}`; jax arrays (sharded or not) or numpy arrays. `force` overwrites.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(files.absolute(directory), args=ocp.args.PyTreeSave({"params": _unwrap(params)}),
               force=force)


def load_openpi_params(directory: str, config=None, *, shardings: ShardingSpec = None, dtype=None,
                       init_missing: str | None = None, rng=None) -> dict:
  """Restores openpi params (an Orbax PyTree checkpoint of `{"params": tree}`) as the bare tree.

  A trailing `value` path component (openpi's nnx.State saves) is stripped when every leaf has one. With
  `config`, names and shapes are checked against `abstract_params(config)` before anything is read.
  `shardings` (a tree matching the params, one Sharding, or a callable path -> Sharding) places arrays as
  jax arrays; without it they come back as numpy arrays. `dtype` casts every leaf. `init_missing` (with
  `config` and `rng`): a regex of model paths the checkpoint may lack, initialised as `Pi0(config).init(rng)`
  would, e.g. lora.PATH_REGEX to start LoRA fine-tuning from base weights.
  """
  return load_params(_resolve_openpi_dir(directory), config, key="params", shardings=shardings, dtype=dtype,
                     init_missing=init_missing, rng=rng)


def load_params(directory: str, config=None, *, key: str | None = "params", shardings: ShardingSpec = None,
                dtype=None, init_missing: str | None = None, rng=None, source: str | None = None) -> dict:
  """The params tree stored under `key` of an Orbax PyTree checkpoint (a partial restore: nothing else is read).

  `key` None: the checkpoint is the bare tree (an export's params/); "params" / "ema_params": a subtree (openpi's
  layout, a train state). The other arguments are load_openpi_params's; `source` heads error messages.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.exists(directory):
    raise FileNotFoundError(f"{source or 'params'}: {directory} does not exist.")
  flat_meta, strip = _openpi_metadata(directory, key)
  init_paths = ()
  if config is not None:
    found = {_strip_value(k, strip): tuple(v.shape) for k, v in flat_meta.items()}
    expected = _shapes(abstract_params(config))
    init_paths = tuple(k for k in expected if k not in found and init_missing and re.fullmatch(init_missing, k))
    check_tree(found, {k: v for k, v in expected.items() if k not in init_paths}, source or directory,
               note=f"paths matching {init_missing!r} may be missing (they are initialised)" if init_missing else "")
    if init_paths and rng is None:
      raise ValueError(f"{source or directory}: {len(init_paths)} parameters ({init_paths[0]}, ...) must be "
                       "initialised: pass rng.")
  sharding_of = _sharding_fn(shardings)
  extra = {} if dtype is None else {"dtype": _float_dtype(dtype)}

  def restore_args(stored):
    if shardings is None:
      return ocp.RestoreArgs(restore_type=np.ndarray, **extra)
    sharding = sharding_of(_strip_value(stored, strip)) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return ocp.ArrayRestoreArgs(sharding=sharding, **extra)

  item, args = unflatten(flat_meta), unflatten({k: restore_args(k) for k in flat_meta})
  if key is not None:
    item, args = {key: item}, {key: args}
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(directory, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                                   partial_restore=key is not None))
  flat = {_strip_value(k, strip): v for k, v in flatten(restored if key is None else restored[key]).items()}
  if init_paths:
    out_shardings = None if shardings is None else tuple(
        sharding_of(k) or jax.sharding.SingleDeviceSharding(jax.devices()[0]) for k in init_paths)
    rng = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
    init = init_subset_fn(config, init_paths, None if dtype is None else _float_dtype(dtype), out_shardings)
    flat.update(jax.device_get(init(rng)) if shardings is None else init(rng))
  return unflatten(flat)


# --- where training starts ----------------------------------------------------------------------------------

# The sources `config.init` may name (set at most one); `init.ema` picks a workdir's EMA params.
INIT_SOURCES = ("paligemma_npz", "openpi_params", "export", "workdir")


def latest_state_dir(workdir: str) -> str:
  """`<workdir>/checkpoints/<step>/state` of the newest complete checkpoint (Orbax renames a step's directory to
  its bare number only once the save is complete)."""
  directory = os.path.join(os.path.abspath(os.fspath(workdir)), "checkpoints")
  steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(f"config.init.workdir: no complete checkpoint under {directory}.")
  return os.path.join(directory, str(steps[-1]), "state")


def load_init(init: Mapping[str, Any], config, *, rng, shardings: ShardingSpec = None) -> dict | None:
  """The params a run starts from per `config.init`, or None (a fresh init) when it names no source.

  Sources: `paligemma_npz` (SigLIP + expert 0; the rest initialised), `openpi_params` (an openpi params
  directory), `export` (a pi0_jax.export directory), `workdir` (the latest checkpoint of a training run; with
  `ema` its EMA params). The last three must fit the model's tree, except that LoRA factors the source lacks
  (a base checkpoint fine-tuned with LoRA) are initialised from `rng`. Everything is checked before any array is
  read; arrays go straight to `shardings`.
  """
  from pi0_jax.model import lora  # pylint: disable=g-import-not-at-top
  init = dict(init or {})
  unknown = set(init) - set(INIT_SOURCES) - {"ema"}
  given = {k: init[k] for k in INIT_SOURCES if init.get(k)}
  if unknown or len(given) > 1:
    raise ValueError(f"config.init: set at most one of {list(INIT_SOURCES)} (plus `ema` with `workdir`); got "
                     f"{sorted(given)}" + (f" and unknown keys {sorted(unknown)}" if unknown else "") + ".")
  if not given:
    return None
  (kind, path), = given.items()
  if init.get("ema") and kind != "workdir":
    raise ValueError(f"config.init.ema applies to config.init.workdir only, not to config.init.{kind}.")
  path = os.fspath(path)
  if kind == "paligemma_npz":
    return load_paligemma_npz(path, config, rng=rng, shardings=shardings)
  if kind == "openpi_params":
    directory, key = _resolve_openpi_dir(path), "params"
  elif kind == "export":
    directory, key = os.path.join(path, "params"), None
  else:
    directory, key = latest_state_dir(path), ("ema_params" if init.get("ema") else "params")
  return load_params(directory, config, key=key, shardings=shardings, init_missing=lora.PATH_REGEX, rng=rng,
                     source=f"config.init.{kind} {directory}" + (f" [{key}]" if kind == "workdir" else ""))


# --- command line ----------------------------------------------------------------------------------------------


def _count(shapes: Iterable[Shape]) -> int:
  return sum(int(np.prod(s, dtype=np.int64)) for s in shapes)


def check_main(*, npz: str | None, openpi: str | None, config_preset: str) -> str:
  """What `--check` does: validate headers / metadata against a preset, return a summary (raises on mismatch)."""
  from pi0_jax.model import get_preset  # pylint: disable=g-import-not-at-top
  config = get_preset(config_preset)
  expected = _shapes(abstract_params(config))
  lines = []
  if npz:
    keys = check_paligemma_npz(npz, config)
    headers = npz_array_headers(npz)
    dtypes = sorted({str(_as_numeric(np.empty(0, headers[k][1])).dtype) for k in keys.values()})
    rest = [s for k, s in expected.items() if k not in keys]
    loaded = _count(headers[k][0] for k in keys.values())
    lines.append(f"{npz}: fits preset {config_preset!r}: {len(keys)} arrays, {loaded:,} "
                 f"parameters ({', '.join(dtypes)}); {len(rest)} arrays, {_count(rest):,} parameters "
                 "(action expert, pi0 heads) would be initialised.")
  if openpi:
    shapes = check_openpi_params(openpi, config)
    lines.append(f"{openpi}: fits preset {config_preset!r}: {len(shapes)} arrays, {_count(shapes.values()):,} "
                 "parameters.")
  return "\n".join(lines)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("npz", None, "A PaliGemma big_vision .npz to check.")
  flags.DEFINE_string("openpi", None, "An openpi params directory (Orbax PyTree checkpoint) to check.")
  flags.DEFINE_string("config_preset", "pi0", "The Pi0Config preset to check against (pi0_jax.model.PRESETS).")
  flags.DEFINE_bool("check", False, "Validate names, shapes and dtypes against the preset (headers only, no "
                    "array data is read) and print counts.")


def _main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f.check:
    raise app.UsageError("Nothing to do: pass --check (the only action so far).")
  if not (f.npz or f.openpi):
    raise app.UsageError("Pass --npz=FILE and/or --openpi=DIR.")
  print(check_main(npz=f.npz, openpi=f.openpi, config_preset=f.config_preset))


def cli():
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.weights`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(_main, _define_flags, __name__)


if __name__ == "__main__":
  cli()
