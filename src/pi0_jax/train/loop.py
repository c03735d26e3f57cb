"""The trainer: `python -m pi0_jax.train --config=configs/pi0_demo.py --workdir=DIR`.

One linear main() in sections: setup, mesh, data, model and optimizer,
shardings, init or resume, compile, loop. Runs unchanged on one CPU, a GPU, or
every host of a TPU pod (each host runs the same command).
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
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


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required.")
  run(config, _WORKDIR.value, distributed=_DISTRIBUTED.value, stop_after=_MAX_STEPS.value)


def run(config, workdir: str, *, distributed: bool | None = None, stop_after: int | None = None) -> dict:
  """Trains per `config` in `workdir`; returns the last logged metrics."""
  # --- Setup -------------------------------------------------------------------------------------
  from pi0_jax import logs
  logs.quiet_libraries()
  if distributed is None:
    distributed = bool(config.get("distributed")) or os.environ.get("PI0_DISTRIBUTED", "0") == "1"
  import jax
  if distributed:
    initialize_distributed()
  from etils import epath

  from pi0_jax import weights
  from pi0_jax.model import Pi0, Pi0Config
  from pi0_jax.train import checkpoint, metrics as metrics_lib, optimizer, sharding, step as step_lib
  from pi0_jax.data import pipeline

  is_main = jax.process_index() == 0
  workdir = checkpoint.resolve_workdir(workdir)  # A local path, or a bucket URL such as gs://b/run.
  if is_main:
    epath.Path(workdir, "assets").mkdir(parents=True, exist_ok=True)
    epath.Path(workdir, "config.json").write_text(config.to_json_best_effort(indent=2))
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].device_kind)

  # --- Mesh --------------------------------------------------------------------------------------
  mesh = sharding.make_mesh([tuple(a) for a in config.mesh])
  data_axes, fsdp_axes = tuple(config.data_axes), tuple(config.fsdp_axes)
  for axis in data_axes + fsdp_axes:
    if axis not in mesh.shape:
      raise ValueError(f"config.data_axes/fsdp_axes name {axis!r}, but the mesh axes are {tuple(mesh.shape)}.")
  dp = sharding.data_parallel_size(mesh, data_axes)
  batch = int(config.global_batch)
  accum = int(config.grad_accum_steps)
  if batch % dp:
    raise ValueError(f"config.global_batch={batch} is not divisible by the data-parallel size {dp} "
                     f"(mesh axes {data_axes} of {dict(mesh.shape)}).")
  if batch % jax.process_count():
    raise ValueError(f"config.global_batch={batch} is not divisible by the process count {jax.process_count()}.")
  if batch % accum or (batch // accum) % dp:
    raise ValueError(f"config.global_batch={batch} must split into grad_accum_steps={accum} micro-batches that are "
                     f"each divisible by the data-parallel size {dp}.")

  # --- Model and optimizer -----------------------------------------------------------------------
  model_config = Pi0Config.from_dict(config.model.to_dict()).replace(activation_batch_axes=data_axes)
  model = Pi0(model_config)
  rng = jax.random.key(int(config.seed))
  ema = config.get("ema_decay") is not None
  init_fn = functools.partial(step_lib.init_state, model, ema=ema)
  with jax.set_mesh(mesh):  # The model constrains activations to the mesh's batch axes, even when tracing.
    abstract_params = weights.abstract_params(model_config.replace(activation_batch_axes=()))
    tx, schedule = optimizer.make_optimizer(config.optimizer.to_dict(), abstract_params)
    abstract_state = jax.eval_shape(functools.partial(init_fn, tx), rng)
  state_sh = sharding.state_shardings(abstract_state, mesh, [tuple(r) for r in config.sharding_rules], fsdp_axes, tx)
  batch_sh = sharding.batch_sharding(mesh, data_axes)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  # --- Data (built before any compile, so bad datasets fail fast) --------------------------------
  train_data = pipeline.make_train_data(config.data, model_config, global_batch=batch, mesh=mesh, data_axes=data_axes,
                                        seed=int(config.seed), workdir=workdir)

  # --- Init or resume ----------------------------------------------------------------------------
  ckpts = checkpoint.Checkpoints(workdir, keep=int(config.keep_checkpoints), keep_every=int(config.keep_every))
  start = ckpts.latest_step()
  if start is not None:
    state, meta = ckpts.restore(checkpoint.abstract_with_shardings(abstract_state, state_sh), start)
    train_data.restore(meta["data"])
    logging.info("resumed from step %d in %s", start, ckpts.directory)
  else:
    with jax.set_mesh(mesh):
      # Array by array, straight into the sharded layout; what the source lacks is initialised there too.
      params = weights.load_init(config.init.to_dict(), model_config, rng=rng, shardings=state_sh["params"])
      if params is not None:
        state = jax.jit(lambda r, p: init_fn(tx, r, params=p), out_shardings=state_sh)(rng, params)
      else:
        state = jax.jit(functools.partial(init_fn, tx), out_shardings=state_sh)(rng)
    start = 0
  if is_main:
    train_data.write_assets(os.path.join(workdir, "assets"))
  total = int(config.total_steps)
  last_step = total if stop_after is None else min(total, start + int(stop_after))
  if start >= last_step:
    logging.info("nothing to do: the checkpoint is at step %d and the run ends at step %d.", start, last_step)
    ckpts.close()
    return {"step": start}

  # --- Compile -----------------------------------------------------------------------------------
  train_step = jax.jit(step_lib.make_train_step(model, tx, schedule, grad_accum_steps=accum,
                                                ema_decay=config.get("ema_decay")),
                       in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated), donate_argnums=(0,))
  first = train_data.next_batch()
  with jax.set_mesh(mesh):
    t0 = time.time()
    traced = train_step.trace(state, first)
    compiled = traced.lower().compile()
  logging.info("compiled the train step in %.1fs", time.time() - t0)
  # Matmul FLOPs of the traced step (scans counted by trip count; XLA's cost analysis counts loop bodies once).
  flops = metrics_lib.jaxpr_matmul_flops(traced.jaxpr)
  peak, peak_source = metrics_lib.device_peak_flops(config.get("device_peak_flops"))
  # Simulated CPU devices share the host's cores: the measured peak is the whole host's.
  total_peak = peak if jax.devices()[0].platform == "cpu" else peak * jax.device_count()

  # --- Loop --------------------------------------------------------------------------------------
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  preempted = {"flag": False}
  previous = signal.signal(signal.SIGTERM, lambda *_: preempted.__setitem__("flag", True))
  progress = _progress(start, last_step, enabled=is_main)
  last_metrics, window_start, window_steps = {}, time.time(), 0
  step_now, batch_now = start, first
  checkpoint_every, log_every = int(config.checkpoint_every), int(config.log_every)
  crash_after = int(os.environ.get("PI0_FAULT_KILL_AFTER_STEP", -1))  # Tests of crash recovery set this.
  try:
    while step_now < last_step:
      with jax.set_mesh(mesh):
        state, m = compiled(state, batch_now)
      step_now += 1
      window_steps += 1
      stop = preempted["flag"] or step_now == last_step
      save_now = stop or step_now % checkpoint_every == 0
      # The data position after this step's batch: taken before the next batch is fetched.
      data_state = train_data.state() if save_now else None
      if not stop:
        batch_now = train_data.next_batch()  # Host work that overlaps with the step running on the devices.
      loss = float(m["loss"])  # Waits for the step; a non-finite loss must never reach a checkpoint.
      if not math.isfinite(loss) or not math.isfinite(float(m["grad_norm"])):
        raise FloatingPointError(
            f"Non-finite loss {loss} (grad norm {float(m['grad_norm'])}) at step {step_now}; stopped without "
            f"saving it. The last good checkpoint is step {ckpts.latest_step()} in {ckpts.directory}.")
      if save_now:
        ckpts.save(step_now, state, {"step": step_now, "data": data_state, "time": checkpoint.timestamp()})
      if step_now == crash_after:  # Fault injection: die like a lost machine, the last save maybe in flight.
        os.kill(os.getpid(), signal.SIGKILL)
      if step_now % log_every == 0 or stop:
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        dt = (time.time() - window_start) / window_steps
        m.update(steps_per_s=1 / dt, samples_per_s=batch / dt)
        if flops:
          m.update(step_tflops=flops / 1e12, mfu=flops / dt / total_peak)
        writer.write(step_now, m)
        last_metrics = {"step": step_now, **m}
        progress.set_postfix(loss=f"{m['loss']:.4f}", sps=f"{m['samples_per_s']:.1f}", refresh=False)
        window_start, window_steps = time.time(), 0
      progress.update(1)
      if stop and step_now < last_step:  # SIGTERM arrived (and the checkpoint above was started).
        raise Preempted(step_now)
  except Preempted as e:
    logging.warning("SIGTERM: saved a checkpoint at step %s and stopping.", e.args[0])
  finally:
    signal.signal(signal.SIGTERM, previous)
    progress.close()
    ckpts.close()  # Waits for the last async save.
    writer.close()
  if is_main:
    epath.Path(workdir, "summary.json").write_text(json.dumps(
        {**last_metrics, "peak_flops_source": peak_source, "peak_flops": peak, "step_flops": flops}, indent=2))
  return last_metrics


def cli():
  """Console script entry point (see setup.cfg)."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.argv[0] = __name__  # absl's --help lists the flags of the module that argv[0] names.
  app.run(main)


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
