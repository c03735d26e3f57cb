"""Held-out evaluation of an exported pi0: closed loop in Meta-World, offline metrics, and a report.

  python -m pi0_jax.evaluate --checkpoint=exports/demo --out=eval/demo [--episodes_per_task=10 --baseline ...]

or, from Python (behind an `if __name__ == "__main__":` guard: rollouts run in spawned processes),

  from pi0_jax.evaluate import evaluate
  report_md = evaluate("exports/demo", "eval/demo", episodes_per_task=10, baseline=True)

Stages, each optional:
  closed loop  (rollout.py) the policy drives Meta-World on the ML10 train classes (task variants the demos
               never showed: a different variant seed) and the 5 held-out test classes; success per task with
               Wilson 95% intervals, optional GIFs; optionally the mean-action baseline on the same episodes.
               With --delays, the policy's episodes run once per method (sync, naive, rtc, rtc_trained) and
               simulated inference delay instead: success, steps to success and the action jump at chunk switches.
               Runs first, in spawned worker processes that never import TensorFlow (MuJoCo's EGL rendering
               segfaults next to it) and before this process touches an accelerator.
  offline      (offline.py) validation splits of the training datasets and the held-out datasets: flow loss
               by t bin, MSE / L1 of sampled chunks per task and action dim, the mean-action baseline beside.
  report       (report.py) report.json, report.md and PNG plots in the output directory.

Camera settings for the rollouts (image size, cameras, multisampling) come from the training dataset's
build_report.json (written by pi0_jax.data.build_metaworld), so the frames look exactly like the training
data; the variant seed must differ from the seeds the demo datasets were built with.

Importing this package imports nothing heavy (no JAX, no TensorFlow): the rollout workers import it too.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

DEFAULT_ENV_SEED = 1000


def _version_dir(directory: str) -> str | None:
  """A TFDS dataset directory: `directory` itself when it holds dataset_info.json, else its newest version."""
  from pi0_jax import files  # pylint: disable=g-import-not-at-top
  if files.isfile(os.path.join(directory, "dataset_info.json")):
    return directory
  if not files.isdir(directory):
    return None

  def key(v):
    try:
      return tuple(int(p) for p in v.split("."))
    except ValueError:
      return (-1,)

  versions = [v for v in files.listdir(directory) if files.isfile(os.path.join(directory, v, "dataset_info.json"))]
  return os.path.join(directory, max(versions, key=key)) if versions else None


def find_build_reports(train_data: dict, *, data_dir: str | None, heldout: Sequence[str] | None) -> dict[str, dict]:
  """{dataset name: its build_report.json} for the training datasets and held-out datasets that have one."""
  from pi0_jax.data import build_metaworld as bm  # pylint: disable=g-import-not-at-top
  from pi0_jax.evaluate import offline  # pylint: disable=g-import-not-at-top
  root = data_dir or offline.default_data_dir(train_data)
  places = []
  for source in train_data.get("datasets") or []:
    if data_dir:
      places.append((source["name"], os.path.join(data_dir, source["name"]), source.get("version")))
    elif source.get("dir"):
      places.append((source["name"], source["dir"], source.get("version")))
    elif source.get("data_dir"):
      places.append((source["name"], os.path.join(source["data_dir"], source["name"]), source.get("version")))
  for name in (heldout if heldout is not None else ["metaworld_ml10_test"]):
    if root:
      places.append((name, os.path.join(root, name), None))
  reports = {}
  for name, directory, version in places:
    found = _version_dir(os.path.join(directory, version) if version else directory)
    report = bm.read_build_report(found) if found else None
    if report is not None:
      reports[name] = report
  return reports


def _rollout_rendering(train_data: dict, data_dir: str | None, heldout: Sequence[str] | None, env_seed: int):
  """(camera settings, the dataset they come from, the demo build seeds) for the rollouts, checked.

  The cameras must be those of every dataset's build report, and env_seed none of their build seeds.
  """
  from pi0_jax.envs import metaworld as mw  # pylint: disable=g-import-not-at-top
  reports = find_build_reports(train_data, data_dir=data_dir, heldout=heldout)
  train_names = [s["name"] for s in train_data["datasets"]]
  render_from = next((n for n in train_names if n in reports), None)
  if render_from is None:
    raise FileNotFoundError(
        f"closed loop: no build_report.json (pi0_jax.data.build_metaworld) found for the training datasets "
        f"{train_names}; it fixes the cameras and image size the rollouts must render with. Point --data_dir at "
        "the folder holding the Meta-World datasets, or pass --skip_closed_loop.")
  render = mw.RenderOptions.from_build_options(reports[render_from]["options"])
  for name, r in reports.items():
    other = mw.RenderOptions.from_build_options(r["options"])
    if other != render:
      raise ValueError(f"closed loop: dataset {name!r} was rendered with {other}, but {render_from!r} with "
                       f"{render}; the rollouts can match only one")
  demo_seeds = sorted({int(r["options"]["seed"]) for r in reports.values()})
  if env_seed in demo_seeds:
    raise ValueError(f"env_seed {env_seed}: the demo datasets were built with variant seeds {demo_seeds}; "
                     "evaluate on other variants (another --env_seed)")
  return render, render_from, demo_seeds


def evaluate(checkpoint: str, out: str, *, offline_batches: int = 50, offline_batch_size: int | None = None,
             t_bins: int = 10, examples: int = 4, episodes_per_task: int = 10, tasks: Sequence[str] | None = None,
             replan_every: int = 5, max_steps: int = 500, num_steps: int = 10, gifs: int = 0,
             baseline: bool = False, skip_offline: bool = False, skip_closed_loop: bool = False,
             data_dir: str | None = None, heldout_datasets: Sequence[str] | None = None,
             dataset: str | None = None, env_seed: int = DEFAULT_ENV_SEED, seed: int = 0, num_workers: int = 1,
             rollout_platform: str | None = None, mesh: Sequence[Sequence[Any]] | None = None,
             stats_dir: str | None = None, distributed: bool = False, progress: bool = True,
             delays: Sequence[int] | None = None, methods: Sequence[str] | None = None,
             record_actions: bool = False) -> str:
  """Evaluates the export in `checkpoint` and writes the report into `out`; returns the path of report.md.

  With `delays`, the policy's closed loop runs once per method (default sync, naive, rtc) and simulated inference
  delay instead of once (pi0_jax.evaluate.rollout.run_episode); the report gains the delay sweep.
  See `python -m pi0_jax.evaluate --help` for what each argument means.
  """
  from pi0_jax import export as export_lib, files  # pylint: disable=g-import-not-at-top
  from pi0_jax.envs import metaworld as mw  # pylint: disable=g-import-not-at-top
  from pi0_jax.evaluate import offline, report as report_lib, rollout  # pylint: disable=g-import-not-at-top

  if skip_offline and skip_closed_loop:
    raise ValueError("nothing to do: both the offline and the closed-loop stage are skipped")
  if methods and not delays:
    raise ValueError(f"methods {list(methods)}: they need delays (e.g. --delays=0,1,2)")
  delays = tuple(delays or ())
  methods = tuple(methods or (("sync", "naive", "rtc") if delays else ()))
  checkpoint, out = files.absolute(checkpoint), files.absolute(out)
  metadata = export_lib.read_export_metadata(checkpoint)
  train_config = metadata.get("train_config") or {}
  train_data = dict(train_config.get("data") or {})
  if not train_data.get("datasets"):
    raise ValueError(f"{checkpoint}/metadata.json: the train config has no data.datasets; expected an export "
                     "made by pi0_jax.export from a pi0_jax.train run")
  if data_dir:
    data_dir = files.absolute(data_dir)
  # Several rollout workers, or the rollouts then this process, may share one accelerator.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  is_main = True
  if distributed:
    import jax  # pylint: disable=g-import-not-at-top
    from pi0_jax.train.loop import initialize_distributed  # pylint: disable=g-import-not-at-top
    initialize_distributed()
    is_main = jax.process_index() == 0
  files.makedirs(out)
  seconds: dict[str, float] = {}
  result: dict[str, Any] = {
      "export": {"dir": checkpoint, **{k: metadata.get(k) for k in ("step", "ema", "dtype", "git_commit", "git_dirty",
                                                                      "exported_at", "workdir")},
                 "datasets": [d.get("name") for d in metadata.get("datasets") or train_data["datasets"]]},
  }

  # --- Closed loop (first: its workers may need the accelerator this process has not touched yet) ---------
  if not skip_closed_loop and is_main:
    start = time.time()
    render, render_from, demo_seeds = _rollout_rendering(train_data, data_dir, heldout_datasets, env_seed)
    chosen = tuple(tasks) if tasks else mw.ML10_TRAIN_TASKS + mw.ML10_TEST_TASKS
    settings = rollout.RolloutSettings(
        export_dir=checkpoint, tasks=chosen, episodes_per_task=episodes_per_task, replan_every=replan_every,
        max_steps=max_steps, num_steps=num_steps, seed=env_seed, noise_seed=seed, render=render, gifs=gifs,
        gif_dir=os.path.join(out, "gifs") if gifs else None, dataset=dataset, platform=rollout_platform or None,
        methods=methods, delays=delays, record_actions=record_actions)
    kinds = (rollout.POLICY, rollout.BASELINE) if baseline else (rollout.POLICY,)
    episodes = rollout.run_closed_loop(settings, kinds, num_workers=num_workers, progress=progress)
    for e in episodes:
      if e.get("gif"):
        e["gif"] = files.relative(e["gif"], out)
    result["closed_loop"] = {"settings": dataclasses.asdict(settings), "demo_seeds": demo_seeds,
                             "render_from": render_from, "summary": rollout.summarize(episodes, chosen),
                             "episodes": episodes}
    if delays:
      result["closed_loop"]["delay_sweep"] = rollout.summarize_delays(episodes)
    seconds["closed_loop"] = time.time() - start

  # --- Offline --------------------------------------------------------------------------------------------------
  if not skip_offline:
    start = time.time()
    norm_stats = export_lib.read_export_json(checkpoint, "norm_stats.json")
    groups = offline.eval_groups(train_data, norm_stats, policy_dataset=dataset, data_dir=data_dir,
                                 heldout=heldout_datasets)
    settings = offline.OfflineSettings(batches=offline_batches, batch_size=offline_batch_size, num_bins=t_bins,
                                       num_steps=num_steps, seed=seed, examples=examples, stats_dir=stats_dir)
    result["offline"] = offline.run_offline(checkpoint, groups, settings, train_config=train_config, mesh_axes=mesh,
                                            progress=progress)
    seconds["offline"] = time.time() - start

  result["seconds"] = seconds
  path = os.path.join(out, report_lib.REPORT_MD)
  if is_main:
    report_lib.write_report(out, result)
  return path


__all__ = ["DEFAULT_ENV_SEED", "evaluate", "find_build_reports"]
