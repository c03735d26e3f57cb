"""The trainer end to end: crash and resume, preemption, NaN stops, bad configs, 2 processes vs 1.

Runs the trainer's command line in subprocesses (8 simulated CPU devices each, or 2 x 4 for the multi-host
run) on a tiny RLDS dataset written with TFDS and a sentencepiece model trained on its instructions, through
tests/train_launcher.py, which adds test hooks (batch fingerprints, a SIGKILL after a given step).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import test_data_helpers as helpers
from pi0_jax.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pi0_tiny.py")
LAUNCHER = os.path.join(ROOT, "tests", "train_launcher.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_data")
  instructions = ["push the puck", "open the drawer"]
  train = [helpers.marked_episode(8, i, image_size=32, instruction=instructions[i % 2]) for i in range(6)]
  directory = helpers.write(root, "pi0_test_train", train, val=train[:1])
  tok = str(root / "tokenizer.model")
  tokenizer_lib.train_tokenizer(instructions, tok, vocab_size=64)
  return {"dataset": directory, "tokenizer": tok, "stats_dir": str(root / "stats")}


def _config_arg(data, **extra) -> str:
  args = dict(dataset=data["dataset"], tokenizer=data["tokenizer"], stats_dir=data["stats_dir"], **extra)
  return CONFIG + ":" + ",".join(f"{k}={v}" for k, v in args.items())


def _env(devices=8, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=os.path.join(ROOT, "src"))
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _train_cmd(data, workdir, *flags, **config_arg):
  return [sys.executable, LAUNCHER, f"--config={_config_arg(data, **config_arg)}", f"--workdir={workdir}", *flags]


def _run(cmd, env, timeout=300):
  p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  return p


def _metrics(workdir) -> dict[int, dict]:
  """step -> the last logged row for that step (a resumed run logs the steps it repeats again)."""
  rows = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        rows[row["step"]] = row
  return rows


def _fingerprints(workdir) -> dict[int, float]:
  """step -> the fingerprint of its batch (--record_batches; a resumed run's rows for a step win)."""
  rows = {}
  with open(os.path.join(workdir, "batches.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      rows[row["step"]] = row["fingerprint"]
  return rows


def _restore_params(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "meta"))
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return out["state"]


def _flat(tree):
  import jax
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_kill_and_resume_equals_uninterrupted(data, tmp_path):
  flags = ["--config.total_steps=6", "--config.checkpoint_every=1", "--record_batches"]
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  p = _run(_train_cmd(data, a, *flags), _env())
  assert p.returncode == 0, p.stderr[-3000:]
  assert "compiling the train step ..." in p.stderr and re.search(r"compiled the train step in \d+\.\d s", p.stderr)
  # The same run, killed with SIGKILL right after starting the async save of step 3.
  p = _run(_train_cmd(data, b, *flags, "--kill_after_step=3"), _env())
  assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
  saved = sorted(int(d) for d in os.listdir(os.path.join(b, "checkpoints")) if d.isdigit())
  assert saved and max(saved) <= 3
  p = _run(_train_cmd(data, b, *flags), _env())
  assert p.returncode == 0, p.stderr[-3000:]
  assert "resumed from step" in p.stderr
  ma, mb = _metrics(a), _metrics(b)
  fa, fb = _fingerprints(a), _fingerprints(b)
  assert sorted(ma) == sorted(mb) == sorted(fa) == sorted(fb) == [1, 2, 3, 4, 5, 6]
  for s in range(1, 7):  # Same data order, same losses.
    assert fa[s] == fb[s], s
    np.testing.assert_allclose(ma[s]["loss"], mb[s]["loss"], rtol=1e-6, err_msg=f"step {s}")
  pa, pb = _flat(_restore_params(a, 6)), _flat(_restore_params(b, 6))
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_allclose(pa[k], pb[k], rtol=1e-6, atol=1e-7, err_msg=k)
  assert int(pa["['step']"]) == 6


def test_sigterm_saves_current_step_and_exits_zero(data, tmp_path):
  workdir = str(tmp_path / "run")
  cmd = _train_cmd(data, workdir, "--config.total_steps=100000", "--config.checkpoint_every=100000", steps=100000)
  proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and max(_metrics(workdir), default=0) < 3 and proc.poll() is None:
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  last = max(_metrics(workdir))
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [last] and 3 <= last < 100000
  assert "SIGTERM: saved a checkpoint at step" in err


def _in_process_config(data, **overrides):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  try:
    import pi0_tiny
  finally:
    sys.path.pop(0)
  c = pi0_tiny.get_config(_config_arg(data).split(":", 1)[1])
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return c


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
  """The step refuses non-finite updates on the device; the loop reads that only at log/checkpoint steps."""
  from pi0_jax.train import loop
  first_bad = {}
  for every in (1, 3):  # Read every step, then every third step only: the same first bad step is named.
    config = _in_process_config(data, **{"total_steps": 6, "checkpoint_every": every, "log_every": every,
                                         "optimizer.peak_lr": 1e30, "optimizer.warmup_steps": 0})
    workdir = tmp_path / f"every_{every}"
    with pytest.raises(FloatingPointError, match=r"Non-finite loss .* at step (\d+).*stopped at step (\d+) without "
                                                 r"saving.*last good checkpoint is step") as e:
      loop.run(config, str(workdir))
    bad, stopped = map(int, re.search(r"at step (\d+) .*stopped at step (\d+)", str(e.value)).groups())
    first_bad[every] = bad
    assert stopped == every * -(-bad // every)  # The first log/checkpoint step at or after it.
    steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    rows = _metrics(str(workdir))
    assert all(s < bad for s in steps) and max(rows, default=0) < bad
    assert all(np.isfinite(row["loss"]) for row in rows.values())
    if every == 1:
      assert steps and max(steps) == max(rows) == bad - 1  # Every finite step was saved; the non-finite one not.
  assert first_bad[1] == first_bad[3]


@pytest.mark.parametrize("overrides, message", [
    ({"global_batch": 6}, r"global_batch=6 is not divisible by the data-parallel size 8"),
    ({"mesh": [["data", 16], ["fsdp", 1]]}, r"need 16 devices, but only 8 are available"),
    ({"data.datasets": [dict(name="no_such_dataset", dir="/nonexistent/no_such_dataset/1.0.0")]},
     r"no_such_dataset"),
])
def test_bad_configs_fail_at_start(data, tmp_path, overrides, message):
  import jax
  from pi0_jax.train import loop
  config = _in_process_config(data, **overrides)
  compiled = []  # Names of the programs XLA compiles meanwhile.

  def listener(event, _, fun_name="", **__):
    if event.endswith("backend_compile_duration"):
      compiled.append(fun_name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with pytest.raises((ValueError, FileNotFoundError, KeyError), match=message):
      loop.run(config, str(tmp_path))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # Rejected before the model's init or train step were compiled (a few scalar ops may have been).
  assert not [name for name in compiled if "init" in name or "train_step" in name or "compute_loss" in name]
  assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_same_loss_curve_as_one(data, tmp_path):
  flags = ["--config.total_steps=4", "--config.data.host_split=global_batch", "--record_batches"]
  one = str(tmp_path / "one")
  p = _run(_train_cmd(data, one, *flags), _env())
  assert p.returncode == 0, p.stderr[-3000:]
  two = str(tmp_path / "two")
  port = _free_port()
  procs = [subprocess.Popen(_train_cmd(data, two, "--distributed", *flags), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=_env(4, PI0_COORDINATOR=f"127.0.0.1:{port}", PI0_NUM_PROCESSES=2, PI0_PROCESS_ID=i))
           for i in range(2)]
  errs = [proc.communicate(timeout=300)[1] for proc in procs]
  for proc, err in zip(procs, errs):
    assert proc.returncode == 0, err[-3000:]
  assert "process 1/2, 4 local / 8 global devices" in errs[1]
  m1, m2 = _metrics(one), _metrics(two)
  f1, f2 = _fingerprints(one), _fingerprints(two)
  assert sorted(m1) == sorted(m2) == sorted(f1) == sorted(f2) == [1, 2, 3, 4]
  for s in m1:
    np.testing.assert_allclose(f2[s], f1[s], rtol=1e-6, err_msg=f"step {s}")
    np.testing.assert_allclose(m2[s]["loss"], m1[s]["loss"], rtol=1e-5, err_msg=f"step {s}")
    np.testing.assert_allclose(m2[s]["grad_norm"], m1[s]["grad_norm"], rtol=1e-4, err_msg=f"step {s}")


def test_start_from_a_paligemma_npz(data, tmp_path):
  """config.init.paligemma_npz: SigLIP + expert 0 come from the file, the rest is initialised (lr 0 keeps them)."""
  import jax
  import model_utils
  from pi0_jax import weights
  from pi0_jax.train import loop
  source = jax.device_get(model_utils.init_params(model_utils.tiny_config(), seed=7)["params"])
  npz = str(tmp_path / "paligemma.npz")
  weights.save_paligemma_npz(source, npz, dtype=None)
  config = _in_process_config(data, **{"total_steps": 1, "checkpoint_every": 1, "optimizer.peak_lr": 0.0,
                                       "optimizer.end_lr": 0.0, "optimizer.warmup_steps": 0,
                                       "init.paligemma_npz": npz})
  workdir = str(tmp_path / "run")
  loop.run(config, workdir)
  state = _restore_params(workdir, 1)
  got, want = _flat(state["params"]), _flat(source)
  assert got.keys() == want.keys()
  from_file = [k for k in got if weights.is_paligemma_path(k.replace("']['", "/").strip("[]'"))]
  assert from_file and len(from_file) < len(got)
  for k in got:
    if k in from_file:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    elif got[k].size > 1 and np.any(want[k] != 0):
      assert not np.array_equal(got[k], want[k]), f"{k} should be freshly initialised, not taken from the file"
