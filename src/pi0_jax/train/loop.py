"""The trainer: `python -m pi0_jax.train --config=configs/pi0_demo.py --workdir=DIR`.

One linear run() in sections: setup, mesh, model and shardings (from
pi0_jax.train.setup), data, init or resume, step, loop. Runs unchanged on one CPU, a GPU, or
every host of a TPU pod (each host runs the same command).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config(arg)), "
                                          "e.g. configs/pi0_demo.py; override fields with --config.x=...",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and assets go here; a run resumes from the "
                               "latest complete checkpoint found in it.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (multi-host). "
                                 "Default: config.distributed or the PI0_DISTRIBUTED environment variable.")
_MAX_STEPS = flags.DEFINE_integer("stop_after", None, "Stop (with a checkpoint) after this many steps of this "
                                  "process's run, e.g. to split a long job; the schedule still uses total_steps.")


class Preempted(Exception):
  pass


class Hooks:
  """Callbacks into the loop for tests and tools: pass an instance as `run(..., hooks=)`. These do nothing."""

  def on_step(self, step: int, batch: dict, state: dict) -> None:
    """After step `step` ran on `batch` (giving `state`) and its checkpoint, if any, was started."""


def main(argv, hooks: Hooks | None = None):
  del argv
  config = _CONFIG.value
  if config is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required.")
  run(config, _WORKDIR.value, distributed=_DISTRIBUTED.value, stop_after=_MAX_STEPS.value, hooks=hooks)


def run(config, workdir: str, *, distributed: bool | None = None, stop_after: int | None = None,
        hooks: Hooks | None = None) -> dict:
  """Trains per `config` in `workdir`; returns the last logged metrics."""
  # --- Setup -------------------------------------------------------------------------------------
  from pi0_jax.train import validate
  validate.check_config(config)  # Bad values: one message, before anything is built or compiled.
  workdir = _start(config, workdir, distributed)
  import jax
  from pi0_jax.train import preemption
  # Right after jax.distributed.initialize() (whose own SIGTERM notifier this replaces, off TPU): a SIGTERM
  # during data setup or compilation is held too, and every process stops at the first step they agree on.
  stopper = preemption.StopAgreement(every=int(config.log_every), mode=config.get("preemption_sync", "auto")).start()
  from pi0_jax.data import pipeline
  from pi0_jax.train import checkpoint, setup, sharding

  # --- Mesh (checks the axes and the global batch against the devices and processes) ------------
  config = setup.with_slices(config, sharding.num_slices(jax.devices()))  # Several TPU slices: data parallel.
  mesh = setup.make_mesh(config)

  # --- Model, optimizer and shardings (abstract: nothing allocated or compiled) -----------------
  ts = setup.train_setup(config, mesh)

  # --- Data (built before any compile, so bad datasets fail fast) --------------------------------
  train_data = pipeline.make_train_data(config.data, ts.model_config, global_batch=int(config.global_batch),
                                        mesh=mesh, data_axes=ts.data_axes, seed=int(config.seed), workdir=workdir)

  # --- Init or resume ----------------------------------------------------------------------------
  ckpts = checkpoint.Checkpoints(workdir, keep=int(config.keep_checkpoints), keep_every=int(config.keep_every))
  state, start = _init_or_resume(config, ts, ckpts, train_data)
  if jax.process_index() == 0:
    train_data.write_assets(os.path.join(workdir, "assets"))
  total = int(config.total_steps)
  last_step = total if stop_after is None else min(total, start + int(stop_after))
  if start >= last_step:
    logging.info("nothing to do: the checkpoint is at step %d and the run ends at step %d.", start, last_step)
    ckpts.close()
    stopper.close()
    return {"step": start}

  # --- Step --------------------------------------------------------------------------------------
  first = train_data.next_batch()
  compiled, flops = _compile(ts, state, first)

  # --- Loop --------------------------------------------------------------------------------------
  return _train(config, workdir, ts, compiled, flops, state, first, train_data, ckpts, stopper, start, last_step,
                hooks or Hooks())


def _start(config, workdir: str, distributed: bool | None) -> str:
  """Quiet logs, join the other processes, create the workdir; returns it resolved."""
  from pi0_jax import logs
  logs.quiet_libraries()
  if distributed is None:
    distributed = bool(config.get("distributed")) or os.environ.get("PI0_DISTRIBUTED", "0") == "1"
  import jax
  if distributed:
    initialize_distributed()
  from etils import epath
  from pi0_jax.train import checkpoint

  workdir = checkpoint.resolve_workdir(workdir)  # A local path, or a bucket URL such as gs://b/run.
  if jax.process_index() == 0:
    epath.Path(workdir, "assets").mkdir(parents=True, exist_ok=True)
    epath.Path(workdir, "config.json").write_text(config.to_json_best_effort(indent=2))
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].device_kind)
  return workdir


def _init_or_resume(config, ts, ckpts, train_data) -> tuple[dict, int]:
  """(state, step): the latest checkpoint in the workdir (and the data position), else a fresh state."""
  import jax
  from pi0_jax import weights

  restored = ckpts.restore_latest_good(ts.abstract_state)
  if restored is not None:  # Damaged newer checkpoints were moved aside (one log line each).
    start, state, meta = restored
    train_data.restore(meta["data"])
    logging.info("resumed from step %d in %s", start, ckpts.directory)
    return state, start
  rng = jax.random.key(int(config.seed))
  with jax.set_mesh(ts.mesh):
    # Array by array, straight into the sharded layout; what the source lacks is initialised there too.
    params = weights.load_init(config.init.to_dict(), ts.model_config, rng=rng, shardings=ts.state_shardings["params"])
  return ts.init_state(rng, params), 0


def _compile(ts, state, batch):
  """The compiled train step and its matmul FLOPs (scans counted by trip count; XLA's cost analysis counts
  loop bodies once)."""
  import jax
  from pi0_jax.train import metrics as metrics_lib

  from pi0_jax import logs
  with jax.set_mesh(ts.mesh), logs.compiling("the train step"):
    traced = ts.train_step().trace(state, batch)
    compiled = traced.lower().compile()
  return compiled, metrics_lib.jaxpr_matmul_flops(traced.jaxpr)


def _train(config, workdir, ts, compiled, flops, state, batch_now, train_data, ckpts, stopper, start: int,
           last_step: int, hooks: Hooks) -> dict:
  """Steps from `start` to `last_step`: checkpoints, SIGTERM, non-finite losses, metrics; returns the last."""
  import jax
  from etils import epath
  from pi0_jax.train import checkpoint, metrics as metrics_lib

  is_main = jax.process_index() == 0
  peak, peak_source = metrics_lib.device_peak_flops(config.get("device_peak_flops"))
  # Simulated CPU devices share the host's cores: the measured peak is the whole host's.
  total_peak = peak if jax.devices()[0].platform == "cpu" else peak * jax.device_count()
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  progress = _progress(start, last_step, enabled=is_main)
  last_metrics, window_start, window_steps = {}, time.time(), 0
  step_now = start
  checkpoint_every, log_every = int(config.checkpoint_every), int(config.log_every)
  try:
    while step_now < last_step:
      batch = batch_now
      with jax.set_mesh(ts.mesh):
        state, m = compiled(state, batch)
      step_now += 1
      window_steps += 1
      stop = stopper.should_stop(step_now) or step_now == last_step  # should_stop first: called every step.
      save_now = stop or step_now % checkpoint_every == 0
      # The data position after this step's batch: taken before the next batch is fetched.
      data_state = train_data.state() if save_now else None
      if not stop:
        batch_now = train_data.next_batch()  # Host work that overlaps with the step running on the devices.
      if save_now or step_now % log_every == 0:
        _check_finite(state, step_now, ckpts)  # The host waits for the device only at these steps.
      if save_now:
        ckpts.save(step_now, state, {"step": step_now, "data": data_state, "time": checkpoint.timestamp()})
      hooks.on_step(step_now, batch, state)
      if step_now % log_every == 0 or stop:
        dt = (time.time() - window_start) / window_steps
        last_metrics = _log(writer, progress, step_now, m, dt, int(config.global_batch), flops, total_peak)
        window_start, window_steps = time.time(), 0
      progress.update(1)
      if stop and step_now < last_step:  # SIGTERM arrived (and the checkpoint above was started).
        raise Preempted(step_now)
  except Preempted as e:
    logging.warning("SIGTERM: saved a checkpoint at step %s (the step all processes agreed on) and stopping.",
                    e.args[0])
  finally:
    stopper.close()
    progress.close()
    ckpts.close()  # Waits for the last async save.
    writer.close()
  if is_main:
    epath.Path(workdir, "summary.json").write_text(json.dumps(
        {**last_metrics, "peak_flops_source": peak_source, "peak_flops": peak, "step_flops": flops}, indent=2))
  return last_metrics


def _check_finite(state: dict, step: int, ckpts) -> None:
  """The step refuses non-finite updates on the device and records the first such step in the state; a refused
  update must never reach a checkpoint."""
  from pi0_jax.train import step as step_lib
  bad_step = step_lib.first_nonfinite_step(state)
  if bad_step:
    raise FloatingPointError(
        f"Non-finite loss or gradient at step {bad_step} (that update and later ones were refused); stopped "
        f"at step {step} without saving. The last good checkpoint is step {ckpts.latest_step()} in "
        f"{ckpts.directory}.")


def _log(writer, progress, step: int, m: dict, dt: float, batch: int, flops: float, total_peak: float) -> dict:
  """Writes one metrics row (the step's metrics plus throughput over the window of `dt` s/step); returns it."""
  import jax
  m = {k: float(v) for k, v in jax.device_get(m).items()}
  m.update(steps_per_s=1 / dt, samples_per_s=batch / dt)
  if flops:
    m.update(step_tflops=flops / 1e12, mfu=flops / dt / total_peak)
  writer.write(step, m)
  progress.set_postfix(loss=f"{m['loss']:.4f}", sps=f"{m['samples_per_s']:.1f}", refresh=False)
  return {"step": step, **m}


def cli():
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.train`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(main, None, __name__, description_from="pi0_jax.train.__main__")


def initialize_distributed() -> None:
  """jax.distributed.initialize(): automatic on TPU pods and SLURM; explicit via environment elsewhere.

  PI0_COORDINATOR (host:port), PI0_NUM_PROCESSES and PI0_PROCESS_ID pass the arguments explicitly
  (launch/multihost_local.sh runs 2 processes on localhost this way); on CPU, collectives use gloo.
  """
  import jax
  kwargs = {}
  if os.environ.get("PI0_COORDINATOR"):
    kwargs = dict(coordinator_address=os.environ["PI0_COORDINATOR"],
                  num_processes=int(os.environ["PI0_NUM_PROCESSES"]), process_id=int(os.environ["PI0_PROCESS_ID"]))
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def _progress(start, total, enabled):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True, file=sys.stderr)
