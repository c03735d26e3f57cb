"""Export a trained pi0 for inference: the params only, plus everything needed to turn raw robot
observations into actions (see pi0_jax.policy, which loads what this writes).

  python -m pi0_jax.export --workdir=runs/demo --out=exports/demo [--step=N] [--ema] [--dtype=bfloat16] [--openpi]

An export directory holds:

  params/             Orbax PyTree checkpoint of the bare params tree (no optimizer state, step or rng)
  model_config.json   Pi0Config.to_dict(), with activation_batch_axes cleared (inference needs no mesh)
  norm_stats.json     the run's assets/norm_stats.json, unchanged (per-dataset statistics and norm mode)
  tokenizer.model     the run's sentencepiece model
  metadata.json       step, ema, dtype, pi0_jax version and git commit, the checkpoint it came from, the
                      data mixture (dataset names, specs, camera keys, dims, weights) and the train config
  openpi/             with --openpi: params/ as `{"params": tree}` (the layout openpi's restore_params reads)
                      and assets/<dataset>/norm_stats.json in SPEC form, one per dataset

Only the `params` (or, with --ema, `ema_params`) subtree of the train state is read, by an Orbax partial
restore: the optimizer state (twice the params for AdamW) is never touched. Arrays are restored as host numpy
arrays, cast to --dtype while reading, so an export runs on any device count or platform, whatever mesh the run
trained on. The names and shapes are checked against the model config before a byte of array data is read.
The largest model (pi0, 3.3B parameters) needs its params once in host memory: 13 GB in float32.

Workdir and export may be local directories or bucket URLs (gs://...): every file goes through pi0_jax.files
(etils.epath) and the params through Orbax, which read and write both.

Reading back: `load_params(params_dir(export_dir), config, mesh=... | device=...)` is the one reader of params
checkpoints (pi0_jax.policy, the offline evaluation and this export use it), and `read_export_json` /
`norm_stats_entry` read the JSON files with one clear error each.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from typing import Any, Mapping, Sequence

import numpy as np

from pi0_jax import files

__all__ = ["DTYPES", "FORMAT", "export", "git_commit", "load_params", "load_train_config", "norm_stats_entry",
           "params_dir", "read_export_json", "read_export_metadata", "restore_params"]

FORMAT = 1  # Bump when the layout of an export directory changes; pi0_jax.policy checks it.
DTYPES = ("float32", "bfloat16")
PARAMS_KEYS = {False: "params", True: "ema_params"}
EXPORT_HINT = "is the directory an export written by pi0_jax.export?"
_EXPORT_FILES = {"metadata.json": "export metadata", "model_config.json": "model config",
                 "norm_stats.json": "norm statistics"}


def load_train_config(workdir: str) -> dict:
  """The run's config (`<workdir>/config.json`, written by the trainer) as a plain dict."""
  return files.read_json(os.path.join(workdir, "config.json"), "train config")


def read_export_metadata(export_dir: str) -> dict:
  """`metadata.json` of an export directory."""
  return read_export_json(export_dir, "metadata.json")


def git_commit(path: str | None = None) -> tuple[str | None, bool | None]:
  """(commit, dirty) of the git checkout holding `path` (default: this package), or (None, None) outside one."""
  path = path or os.path.dirname(os.path.abspath(__file__))

  def git(*args):
    return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, timeout=20, check=True).stdout

  try:
    commit = git("rev-parse", "HEAD").strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
  except (OSError, subprocess.SubprocessError):
    return None, None
  return commit or None, dirty


# --- Reading the run ----------------------------------------------------------------------------------


def _checkpoint_manager(directory: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  options = ocp.CheckpointManagerOptions(create=False, read_only=True)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def _pick_step(directory: str, step: int | None) -> tuple[int, dict]:
  """The checkpoint step to export (the latest complete one by default) and its JSON metadata."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not files.isdir(directory):
    raise FileNotFoundError(f"No checkpoints directory: {directory} does not exist (has the run saved a "
                            "checkpoint yet?).")
  manager = _checkpoint_manager(directory)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"No complete checkpoint under {directory}.")
    if step is None:
      step = steps[-1]
    elif int(step) not in steps:
      raise FileNotFoundError(f"No checkpoint for step {step} under {directory}; complete checkpoints: {steps}.")
    step = int(step)
    meta = {}
    if files.exists(os.path.join(directory, str(step), "meta")):
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {}
  finally:
    manager.close()
  return step, meta


def _tree_metadata(path: str) -> dict:
  """The tree of an Orbax PyTree checkpoint's metadata (names, shapes, dtypes): no array data is read."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not files.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint directory.")
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata
  if tree is None:
    raise ValueError(f"{path}: no Orbax tree metadata; expected a PyTree checkpoint written by pi0_jax.")
  return dict(tree.tree if hasattr(tree, "tree") else tree)


def load_params(path: str, model_config, *, subtree: str | None = None, dtype: str | None = None, mesh=None,
                rules: Sequence[Sequence[Any]] = ((".*", "auto"),), fsdp_axes: Sequence[str] = (), device=None,
                note: str = "the params do not fit the model config") -> dict:
  """The params tree in the Orbax checkpoint `path`, checked against `model_config` before any array is read.

  Placement: with `mesh`, sharded as the trainer shards them (pi0_jax.train.sharding.param_specs by `rules` and
  `fsdp_axes`; each process reads only its shards, on any host count); else with `device`, whole on that device;
  else host numpy arrays. `subtree` restores one top-level entry (a train state's "params") by a partial restore:
  nothing else is read. `dtype` ("float32", "bfloat16") casts while reading; None keeps the stored dtype.
  Every caller that reads params (export, Policy, offline evaluation) goes through here.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from pi0_jax import weights  # pylint: disable=g-import-not-at-top
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}.")
  tree = _tree_metadata(path)
  if subtree is not None:
    if subtree not in tree:
      raise ValueError(f"{path}: no {subtree!r} entry (it holds {sorted(tree)}).")
    tree = dict(tree[subtree])
  flat_meta = weights.flatten(tree)
  abstract = weights.abstract_params(model_config)
  weights.check_tree({k: tuple(v.shape) for k, v in flat_meta.items()},
                     {k: tuple(v.shape) for k, v in weights.flatten(abstract).items()},
                     f"{path} [{subtree}]" if subtree else path, note=note)
  target = None if dtype is None else np.dtype(jnp.dtype(dtype))
  if mesh is not None:
    from pi0_jax.train import sharding  # pylint: disable=g-import-not-at-top
    specs = weights.flatten(sharding.param_specs(abstract, mesh, [tuple(r) for r in rules], fsdp_axes))
    args = {k: ocp.ArrayRestoreArgs(sharding=jax.sharding.NamedSharding(mesh, specs[k]), dtype=target)
            for k in flat_meta}
  elif device is not None:
    args = {k: ocp.ArrayRestoreArgs(sharding=jax.sharding.SingleDeviceSharding(device), dtype=target)
            for k in flat_meta}
  else:
    args = {k: ocp.RestoreArgs(restore_type=np.ndarray, dtype=target) for k in flat_meta}
  item, restore_args = weights.unflatten(flat_meta), weights.unflatten(args)
  if subtree is not None:
    item, restore_args = {subtree: item}, {subtree: restore_args}
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                               partial_restore=subtree is not None))
  return restored[subtree] if subtree is not None else restored


def restore_params(state_dir: str, model_config, *, ema: bool = False, dtype: str = "float32") -> dict:
  """The params (or EMA params) subtree of a saved train state as host numpy arrays of `dtype` (`load_params`)."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}.")
  key = PARAMS_KEYS[ema]
  if ema and key not in _tree_metadata(state_dir):
    raise ValueError(f"--ema: the checkpoint {state_dir} has no EMA params (its state holds "
                     f"{sorted(_tree_metadata(state_dir))}); the run was trained without config.ema_decay. "
                     "Export without --ema.")
  return load_params(state_dir, model_config, subtree=key, dtype=dtype,
                     note="the checkpoint does not fit the model config in the run's config.json")


def norm_stats_entry(norm_stats: Mapping[str, Any], dataset: str | None, *,
                     metadata: Mapping[str, Any] | None = None, path: str = "norm_stats.json") -> tuple[str, dict]:
  """(dataset name, its entry) of an export's norm_stats.json; the entry holds norm_stats, norm_mode, dims.

  `dataset` None picks the only dataset; with several, naming one is required. A file in the single-dataset
  form ({"norm_stats": ...}) is named after the one dataset in `metadata`, else "default".
  """
  per_dataset = dict(norm_stats.get("datasets") or {})
  if not per_dataset:
    if "norm_stats" not in norm_stats:
      raise ValueError(f"{path}: expected {{'datasets': {{name: {{'norm_stats': ...}}}}}} or {{'norm_stats': ...}}, "
                       f"found keys {sorted(norm_stats)}.")
    names = [d.get("name") for d in (metadata or {}).get("datasets") or []]
    per_dataset = {(names[0] if len(names) == 1 and names[0] else "default"): dict(norm_stats)}
  if dataset is None:
    if len(per_dataset) != 1:
      raise ValueError(f"This export was trained on {len(per_dataset)} datasets; pass dataset= one of "
                       f"{sorted(per_dataset)} (--dataset) to pick whose norm stats and camera layout to use.")
    dataset = next(iter(per_dataset))
  if dataset not in per_dataset:
    raise ValueError(f"dataset {dataset!r}: {path} has no statistics for it; choices: {sorted(per_dataset)}.")
  entry = per_dataset[dataset]
  if "norm_stats" not in entry or not {"state", "actions"} <= set(entry["norm_stats"]):
    raise ValueError(f"{path}: dataset {dataset!r} needs 'norm_stats' with 'state' and 'actions'.")
  return dataset, dict(entry)


def params_dir(export_dir: str) -> str:
  """Where an export keeps its params checkpoint (pass it to `load_params`)."""
  return os.path.join(export_dir, "params")


def read_export_json(export_dir: str, name: str) -> Any:
  """One of an export's JSON files (metadata.json, model_config.json, norm_stats.json), with a clear error."""
  return files.read_json(os.path.join(export_dir, name), _EXPORT_FILES.get(name, name), EXPORT_HINT)


def _tokenizer_path(workdir: str, train_config: dict) -> str:
  asset = os.path.join(workdir, "assets", "tokenizer.model")
  if files.isfile(asset):
    return asset
  configured = (train_config.get("data") or {}).get("tokenizer")
  if configured and files.isfile(configured):
    return configured
  raise FileNotFoundError(f"No tokenizer: {asset} does not exist" + (
      f" and config.data.tokenizer {configured!r} is not a file" if configured else
      " and the run's config names none (config.data.tokenizer)") + ".")


def _dataset_entries(train_config: dict, norm_stats: dict) -> list[dict]:
  """What metadata.json records of the data mixture: names, specs, camera keys, dims and weights."""
  from pi0_jax.data import specs as specs_lib  # pylint: disable=g-import-not-at-top
  data = train_config.get("data") or {}
  sources = [dict(d) for d in data.get("datasets") or []]
  per_dataset = norm_stats.get("datasets") or {}
  entries = []
  for source in sources:
    name = source.get("name")
    spec_name = source.get("spec") or name
    entry: dict[str, Any] = {"name": name, "spec": spec_name, "explicit_weight": source.get("weight")}
    spec = specs_lib.DATASETS.get(spec_name)
    if spec is not None:
      entry.update(cameras=spec.camera_map, state_keys=list(spec.state_keys), state_dim=spec.state_dim,
                   action_dim=spec.action_dim, prompt=spec.prompt if spec.instruction_key is None else None)
    stats = (per_dataset.get(name) or {}).get("norm_stats") or {}
    entry["train_frames"] = (stats.get("actions") or {}).get("count")
    entries.append(entry)
  # Mixture weights as the trainer computes them (pi0_jax.data.mixture): explicit ones where given, else
  # frames ** weight_exponent. The frame counts here are the statistics' (the training split); the trainer's
  # own count also leaves out episodes shorter than the horizon, so count-based weights are estimates.
  exponent = float(data.get("weight_exponent") or 0.43)
  raw = [e["explicit_weight"] if e["explicit_weight"] is not None else
         (float(e["train_frames"]) ** exponent if e["train_frames"] else None) for e in entries]
  if entries and all(r is not None for r in raw) and sum(raw) > 0:
    for e, r in zip(entries, raw):
      e["weight"] = r / sum(raw)
      e["weight_source"] = "explicit" if e["explicit_weight"] is not None else f"train_frames ** {exponent} (estimate)"
  return entries


# --- Export ----------------------------------------------------------------------------------------------


def export(workdir: str, out: str, *, step: int | None = None, ema: bool = False, dtype: str = "float32",
           openpi_layout: bool = False, force: bool = False, merge_lora: bool = True) -> str:
  """Writes an inference export of a training run (layout in the module docstring); returns `out`.

  Args:
    workdir: the run's directory (config.json, checkpoints/, assets/ as pi0_jax.train writes them).
    out: the export directory to create.
    step: which checkpoint; default the latest complete one.
    ema: export the EMA params (a ValueError when the run kept none).
    dtype: "float32" or "bfloat16": the dtype of every exported leaf.
    openpi_layout: also write the params and norm stats in openpi's layout under `out/openpi`.
    force: overwrite an existing export in `out`.
    merge_lora: fold LoRA adapters into their weights (pi0_jax.model.lora.merge_params), so the export is the plain
      model and model_config.json has no LoRA; False keeps the factors.
  """
  from pi0_jax import __version__, weights  # pylint: disable=g-import-not-at-top
  from pi0_jax.model import Pi0Config, lora  # pylint: disable=g-import-not-at-top
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}.")
  workdir, out = files.absolute(workdir), files.absolute(out)
  if not files.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist.")
  train_config = load_train_config(workdir)
  if "model" not in train_config:
    raise ValueError(f"{os.path.join(workdir, 'config.json')}: no 'model' entry (the Pi0Config fields).")
  model_config = Pi0Config.from_dict(train_config["model"]).replace(activation_batch_axes=())
  norm_stats_path = os.path.join(workdir, "assets", "norm_stats.json")
  norm_stats = files.read_json(norm_stats_path, "norm statistics")
  tokenizer = _tokenizer_path(workdir, train_config)
  checkpoints = os.path.join(workdir, "checkpoints")
  step, meta = _pick_step(checkpoints, step)
  state_dir = os.path.join(checkpoints, str(step), "state")

  if files.exists(os.path.join(out, "params")) or files.exists(os.path.join(out, "metadata.json")):
    if not force:
      raise FileExistsError(f"{out} already holds an export; pass force=True (--force) to overwrite it.")
    for name in ("params", "openpi"):
      files.rmtree(os.path.join(out, name))
  files.makedirs(out)

  params = restore_params(state_dir, model_config, ema=ema, dtype=dtype)
  if merge_lora and lora.has_lora(model_config):
    params, model_config = lora.merge_params(params, model_config), lora.without_lora(model_config)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(params_dir(out), args=ocp.args.PyTreeSave(params), force=True)
  datasets = _dataset_entries(train_config, norm_stats)
  if openpi_layout:
    weights.save_openpi_params(params, os.path.join(out, "openpi", "params"), force=True)
    per_dataset = norm_stats.get("datasets") or {}
    if not per_dataset and "norm_stats" in norm_stats:
      per_dataset = {(datasets[0]["name"] if len(datasets) == 1 else "default"): norm_stats}
    for name, entry in per_dataset.items():
      asset_dir = os.path.join(out, "openpi", "assets", name)
      files.makedirs(asset_dir)
      spec_form = {key: {k: entry["norm_stats"][key][k] for k in ("mean", "std", "q01", "q99")}
                   for key in ("state", "actions")}
      files.write_json(os.path.join(asset_dir, "norm_stats.json"), {"norm_stats": spec_form})
  del params

  files.write_json(os.path.join(out, "model_config.json"), model_config.to_dict())
  files.copy(norm_stats_path, os.path.join(out, "norm_stats.json"))
  files.copy(tokenizer, os.path.join(out, "tokenizer.model"))
  commit, dirty = git_commit()
  files.write_json(os.path.join(out, "metadata.json"), {
      "format": FORMAT,
      "step": step,
      "ema": bool(ema),
      "dtype": dtype,
      "pi0_jax_version": __version__,
      "git_commit": commit,
      "git_dirty": dirty,
      "exported_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "workdir": workdir,
      "checkpoint": state_dir,
      "checkpoint_time": meta.get("time"),
      "datasets": datasets,
      "openpi_layout": bool(openpi_layout),
      "train_config": train_config,
  })
  return out


# --- Command line -----------------------------------------------------------------------------------------


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The training run's directory (config.json, checkpoints/, assets/).")
  flags.DEFINE_string("out", None, "The export directory to write (params/, model_config.json, norm_stats.json, "
                      "tokenizer.model, metadata.json).")
  flags.DEFINE_integer("step", None, "Checkpoint step to export; default: the latest complete checkpoint.")
  flags.DEFINE_bool("ema", False, "Export the EMA params (the run must have trained with config.ema_decay).")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "dtype of the exported params (bfloat16 halves the size).")
  flags.DEFINE_bool("openpi", False, "Also write the params and per-dataset norm stats in openpi's layout under "
                    "OUT/openpi (params/ as {'params': tree}, assets/<dataset>/norm_stats.json).")
  flags.DEFINE_bool("force", False, "Overwrite an existing export in --out.")
  flags.DEFINE_bool("merge_lora", True, "Fold LoRA adapters into the base weights (the export is the plain model).")


def _main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f.workdir or not f.out:
    raise app.UsageError("--workdir and --out are required.")
  out = export(f.workdir, f.out, step=f.step, ema=f.ema, dtype=f.dtype, openpi_layout=f.openpi, force=f.force,
               merge_lora=f.merge_lora)
  meta = read_export_metadata(out)
  print(f"Exported step {meta['step']}{' (EMA)' if meta['ema'] else ''} of {meta['workdir']} as {meta['dtype']} "
        f"to {out}")


def main():
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.export`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(_main, _define_flags, __name__)


if __name__ == "__main__":
  main()
