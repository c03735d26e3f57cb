"""Real-time chunking under inference delay: Meta-World closed-loop success of sync, naive, rtc and rtc_trained.

Stages (each skipped when its output exists, so an interrupted sweep resumes; training resumes from its latest
checkpoint):
  train     fine-tunes the demo export with training-time RTC (model.rtc_max_delay = the largest delay) for
            --train_steps steps on the demo's datasets, with the export's norm stats: `python -m pi0_jax.train`
            with --train_config (configs/pi0_demo.py) and --config.init.export, in --workdir/rtc_train
  export    exports that run to --workdir/rtc_export
  sweep     `pi0_jax.evaluate` with simulated inference delays on the 10 ML10 train classes (task variants the
            demos never showed): sync, naive and rtc with the demo export, rtc_trained with the fine-tuned one, the
            same episodes (variants, noise) for every method and delay; reports in --workdir/eval_*
Then writes --out (JSON: per method and delay, success rate with its Wilson 95% interval, mean steps to success,
the switch jump |a_new - a_old|_2 mean and max; the settings, the stage times and the commit), the plot beside it
(rtc_sweep.png: success and switch jump vs delay) and prints the table. What the methods do and how the jump is
measured: pi0_jax.evaluate.rollout.run_episode.

  python benchmarks/rtc_sweep.py --export=runs/demo/export --data_dir=data/metaworld --num_workers=2

The defaults satisfy d <= s <= H - d for the demo model (H = action_horizon = 10, s = replan_every = 5, d <= 4);
they make 300 fine-tuning steps and 400 episodes of at most 200 steps (4 methods x 5 delays x 10 tasks x 2).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_METHODS, TRAINED_METHOD = ("sync", "naive", "rtc"), "rtc_trained"

_EXPORT = flags.DEFINE_string("export", "runs/demo/export", "The demo's export (python -m pi0_jax.export).")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/metaworld", "Folder of the Meta-World datasets and tokenizer.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/rtc_sweep", "The fine-tuning run, its export and the reports.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 300, "Fine-tuning steps with training-time RTC.")
_TRAIN_LR = flags.DEFINE_float("train_lr", 1e-4, "Peak learning rate of the fine-tuning (warm-up 10%, then cosine "
                               "to a tenth).")
_TRAIN_CONFIG = flags.DEFINE_string("train_config", "configs/pi0_demo.py:data_dir={data_dir}",
                                    "The training config the demo used ({data_dir} is filled in).")
_TRAIN_FLAGS = flags.DEFINE_list("train_flags", [], "More --config.* overrides for the fine-tuning run.")
_DELAYS = flags.DEFINE_list("delays", ["0", "1", "2", "3", "4"], "Simulated inference delays d (control ticks).")
_EPISODES = flags.DEFINE_integer("episodes_per_task", 2, "Episodes per task, method and delay.")
_TASKS = flags.DEFINE_list("tasks", None, "Task classes (default: the 10 ML10 train classes).")
_REPLAN = flags.DEFINE_integer("replan_every", 5, "s: actions of a chunk executed before the next is asked for.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 200, "Steps before an episode counts as failed.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "Euler steps of the flow sampler.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Rollout processes.")
_STATS_DIR = flags.DEFINE_string("stats_dir", None, "Cache of dataset scans for the fine-tuning run.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/rtc_sweep.json", "JSON output; the plot goes beside it.")


def _run(cmd: list[str], log_path: str) -> None:
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
  print("$ " + " ".join(cmd), flush=True)
  with open(log_path, "a") as log:
    code = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
  if code:
    raise RuntimeError(f"{cmd[2]} failed with exit code {code}; see {log_path}")


def check(export: str, delays: list[int], replan_every: int) -> None:
  """The sweep fits the demo model (d <= s <= H - d) and a model can be trained for its largest delay."""
  from pi0_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  horizon = int(export_lib.read_export_json(export, "model_config.json")["action_horizon"])
  s = min(replan_every, horizon)
  bad = [d for d in delays if not 0 <= d <= s <= horizon - d]
  if bad or not 1 <= max(delays) < horizon:
    raise app.UsageError(f"--delays {bad or delays}: each d needs d <= s <= H - d with s = min(--replan_every, H) "
                         f"= {s} and H = {horizon} ({export}/model_config.json: action_horizon)")


def train_and_export(export: str, workdir: str, max_delay: int) -> tuple[str, dict]:
  """The delay-trained export (stages train and export, skipped when done); {stage: seconds}."""
  run_dir, out = os.path.join(workdir, "rtc_train"), os.path.join(workdir, "rtc_export")
  seconds = {}
  steps = _TRAIN_STEPS.value
  # A checkpoint directory gets its step's name only once complete.
  if not os.path.isdir(os.path.join(run_dir, "checkpoints", str(steps))):
    start = time.time()
    config = _TRAIN_CONFIG.value.format(data_dir=os.path.abspath(_DATA_DIR.value))
    _run([sys.executable, "-m", "pi0_jax.train", f"--config={config}",
          f"--workdir={run_dir}", f"--config.model.rtc_max_delay={max_delay}", f"--config.init.export={export}",
          f"--config.data.norm_stats={os.path.join(export, 'norm_stats.json')}", f"--config.total_steps={steps}",
          f"--config.optimizer.peak_lr={_TRAIN_LR.value}", f"--config.optimizer.end_lr={_TRAIN_LR.value / 10}",
          f"--config.optimizer.warmup_steps={max(1, steps // 10)}", f"--config.optimizer.decay_steps={steps}",
          f"--config.checkpoint_every={steps}"]
         + ([f"--config.data.stats_dir={_STATS_DIR.value}"] if _STATS_DIR.value else []) + list(_TRAIN_FLAGS.value),
         os.path.join(workdir, "train.log"))
    seconds["train"] = time.time() - start
  if not os.path.isfile(os.path.join(out, "metadata.json")):
    start = time.time()
    _run([sys.executable, "-m", "pi0_jax.export", f"--workdir={run_dir}", f"--out={out}", "--force"],
         os.path.join(workdir, "export.log"))
    seconds["export"] = time.time() - start
  return out, seconds


def sweep(export: str, out: str, methods: tuple[str, ...], delays: list[int], tasks) -> dict:
  """The delay sweep of `methods` with `export` (skipped when its report exists); its report.json."""
  from pi0_jax import evaluate, files  # pylint: disable=g-import-not-at-top
  path = os.path.join(out, "report.json")
  if not os.path.isfile(path):
    evaluate.evaluate(export, out, skip_offline=True, episodes_per_task=_EPISODES.value, tasks=tasks,
                      replan_every=_REPLAN.value, max_steps=_MAX_STEPS.value, num_steps=_NUM_STEPS.value,
                      data_dir=_DATA_DIR.value, num_workers=_NUM_WORKERS.value, delays=delays, methods=methods)
  return files.read_json(path, "evaluation report")


def main(argv) -> None:
  del argv
  import common  # pylint: disable=g-import-not-at-top
  from pi0_jax import logs  # pylint: disable=g-import-not-at-top
  from pi0_jax.envs import metaworld as mw  # pylint: disable=g-import-not-at-top
  from pi0_jax.evaluate import report as report_lib  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  export, workdir = os.path.abspath(_EXPORT.value), os.path.abspath(_WORKDIR.value)
  delays = [int(d) for d in _DELAYS.value]
  tasks = tuple(_TASKS.value or mw.ML10_TRAIN_TASKS)
  check(export, delays, _REPLAN.value)
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  trained, seconds = train_and_export(export, workdir, max(delays))
  reports = {}
  for name, source, methods in (("demo", export, BASE_METHODS), ("rtc_trained", trained, (TRAINED_METHOD,))):
    t0 = time.time()
    reports[name] = sweep(source, os.path.join(workdir, f"eval_{name}"), methods, delays, tasks)
    seconds[f"sweep_{name}"] = time.time() - t0
  results = {**reports["demo"]["closed_loop"]["delay_sweep"], **reports["rtc_trained"]["closed_loop"]["delay_sweep"]}
  settings = dict(reports["demo"]["closed_loop"]["settings"], methods=list(results), export_dir=export)
  payload = {
      "machine": common.machine(), "export": export, "rtc_export": trained, "workdir": workdir,
      "train": {"config": _TRAIN_CONFIG.value, "steps": _TRAIN_STEPS.value, "peak_lr": _TRAIN_LR.value,
                "rtc_max_delay": max(delays), "flags": list(_TRAIN_FLAGS.value)},
      "settings": settings, "results": results,
      "seconds": {**seconds, "total_this_run": time.time() - start},
      "reports": {name: os.path.join(workdir, f"eval_{name}", report_lib.REPORT_MD) for name in reports},
  }
  common.write_json(_OUT.value, payload)
  plot = os.path.splitext(_OUT.value)[0] + ".png"
  report_lib.plot_delay_sweep(results, plot)
  print(f"wrote {plot}")
  rows = [{"method": m, "d": r["delay"], "success": f"{r['successes']}/{r['episodes']}",
           "rate": r["success_rate"], "ci95": f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
           "steps_to_success": r["mean_steps_to_success"], "jump_mean": r["switch_jump_mean"],
           "jump_max": r["switch_jump_max"]} for m, per in results.items() for r in per.values()]
  common.print_table(rows, ["method", "d", "success", "rate", "ci95", "steps_to_success", "jump_mean", "jump_max"])


if __name__ == "__main__":
  app.run(main)
