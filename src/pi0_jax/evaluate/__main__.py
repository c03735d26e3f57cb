"""Command line of the held-out evaluation (see pi0_jax.evaluate for the stages):

  python -m pi0_jax.evaluate --checkpoint=exports/demo --out=eval/demo
  python -m pi0_jax.evaluate --checkpoint=exports/demo --out=eval/quick --tasks=reach-v3,drawer-open-v3 \\
      --episodes_per_task=3 --max_steps=200 --skip_offline --baseline --gifs=1

Prints where the report is when done. Nothing heavy is imported at the top (absl and the light
pi0_jax.evaluate package); JAX, TensorFlow and MuJoCo load only in the stages that need them.
"""

from __future__ import annotations

from absl import app, flags

from pi0_jax import evaluate as evaluate_lib

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Export directory to evaluate (written by pi0_jax.export: "
                                  "params/, model_config.json, norm_stats.json, tokenizer.model, metadata.json).")
_OUT = flags.DEFINE_string("out", None, "Report directory: report.json, report.md, PNG plots, gifs/.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder holding the Meta-World datasets (metaworld_ml10_train, "
                                "metaworld_ml10_test, as build_metaworld writes them). Default: where the export's "
                                "train config found its datasets.")
_HELDOUT = flags.DEFINE_list("heldout_datasets", None, "Held-out datasets (under --data_dir) evaluated offline on all "
                             "their splits. Default: metaworld_ml10_test, skipped with a warning if absent.")
_DATASET = flags.DEFINE_string("dataset", None, "Training dataset whose statistics and action space the policy uses "
                               "(an entry of the export's norm_stats.json); needed only with several.")
# Offline.
_SKIP_OFFLINE = flags.DEFINE_bool("skip_offline", False, "Skip the offline metrics on held-out data.")
_OFFLINE_BATCHES = flags.DEFINE_integer("offline_batches", 50, "Batches per offline group (each training dataset's "
                                        "val split; each held-out dataset); 0: one pass over all its frames. When "
                                        "the budget is smaller, every episode contributes a random subset of frames.")
_OFFLINE_BATCH_SIZE = flags.DEFINE_integer("offline_batch_size", None, "Global batch of the offline stage "
                                           "(default: the training run's).")
_T_BINS = flags.DEFINE_integer("t_bins", 10, "Equal bins of flow time t in (0, 1] for the loss breakdown.")
_EXAMPLES = flags.DEFINE_integer("examples", 4, "Offline chunks kept per group for the predicted-vs-true plot.")
_MESH = flags.DEFINE_list("mesh", None, "Offline device mesh as name:size pairs, e.g. data:-1,fsdp:4 (default: the "
                          "training run's mesh, or all devices on the data axis when it does not fit).")
_STATS_DIR = flags.DEFINE_string("stats_dir", None, "Cache of dataset scans (default: the run's config.data."
                                 "stats_dir, else $PI0_STATS_CACHE or ~/.cache/pi0_jax/stats).")
# Closed loop.
_SKIP_CLOSED_LOOP = flags.DEFINE_bool("skip_closed_loop", False, "Skip the Meta-World rollouts.")
_TASKS = flags.DEFINE_list("tasks", None, "Task classes to roll out, e.g. reach-v3,drawer-open-v3 (default: the 10 "
                           "ML10 train classes and the 5 held-out test classes).")
_EPISODES = flags.DEFINE_integer("episodes_per_task", 10, "Closed-loop episodes per task (each on its own unseen "
                                 "task variant).")
_REPLAN = flags.DEFINE_integer("replan_every", 5, "Actions of each chunk executed before the policy is asked again.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 500, "Steps before an episode counts as failed (Meta-World: 500).")
_DELAYS = flags.DEFINE_list("delays", None, "Simulated inference delays d (control ticks), e.g. 0,1,2,3,4: the "
                            "policy's episodes run once per method and delay (d <= replan_every <= H - d). Default: "
                            "the plain closed loop.")
_METHODS = flags.DEFINE_list("methods", None, "With --delays: how a chunk switch handles the delay, some of sync, "
                             "naive, rtc, rtc_trained (default sync,naive,rtc; rtc_trained needs an export whose "
                             "model has rtc_max_delay >= the largest delay).")
_GIFS = flags.DEFINE_integer("gifs", 0, "Episodes per task (the first ones) saved as GIFs, per policy.")
_BASELINE = flags.DEFINE_bool("baseline", False, "Also roll out the mean-action baseline on the same episodes (the "
                              "offline metrics always report it: it costs nothing there).")
_ENV_SEED = flags.DEFINE_integer("env_seed", evaluate_lib.DEFAULT_ENV_SEED, "Seed of the task variants; must differ "
                                 "from the seeds the demo datasets were built with.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 1, "Rollout processes (each loads the policy and renders).")
_ROLLOUT_PLATFORM = flags.DEFINE_string("rollout_platform", None, "JAX platform of the rollout workers, e.g. cpu "
                                        "(default: JAX's choice).")
# Both.
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() (the offline "
                                 "stage runs on every host; the closed loop and the report on process 0, whose "
                                 "rollout workers should then use --rollout_platform=cpu).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10, "Euler steps of the flow sampler.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampling noise, the loss draws and the offline frame subsets.")


def _mesh(values):
  if not values:
    return None
  axes = []
  for item in values:
    name, _, size = item.partition(":")
    try:
      axes.append((name, int(size)))
    except ValueError:
      raise app.UsageError(f"--mesh: expected name:size pairs like data:-1,fsdp:4; got {item!r}") from None
  return axes


def _delays(values):
  try:
    return [int(v) for v in values] if values else None
  except ValueError:
    raise app.UsageError(f"--delays: expected integers like 0,1,2; got {values}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint and --out are required.")
  from pi0_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  path = evaluate_lib.evaluate(
      _CHECKPOINT.value, _OUT.value, offline_batches=_OFFLINE_BATCHES.value,
      offline_batch_size=_OFFLINE_BATCH_SIZE.value, t_bins=_T_BINS.value, examples=_EXAMPLES.value,
      episodes_per_task=_EPISODES.value, tasks=_TASKS.value, replan_every=_REPLAN.value,
      max_steps=_MAX_STEPS.value, num_steps=_NUM_STEPS.value, gifs=_GIFS.value, baseline=_BASELINE.value,
      skip_offline=_SKIP_OFFLINE.value, skip_closed_loop=_SKIP_CLOSED_LOOP.value, data_dir=_DATA_DIR.value,
      heldout_datasets=_HELDOUT.value, dataset=_DATASET.value, env_seed=_ENV_SEED.value, seed=_SEED.value,
      num_workers=_NUM_WORKERS.value, rollout_platform=_ROLLOUT_PLATFORM.value, mesh=_mesh(_MESH.value),
      stats_dir=_STATS_DIR.value, distributed=_DISTRIBUTED.value, delays=_delays(_DELAYS.value),
      methods=_METHODS.value)
  print(f"Report: {path}")


def cli():
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.evaluate`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(main, None, __name__)


if __name__ == "__main__":
  cli()
