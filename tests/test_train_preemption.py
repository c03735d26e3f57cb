"""SIGTERM to one host of two: both agree on the step, save it, exit 0, and the resumed run equals an
uninterrupted one. Real processes: 2 x 4 simulated CPU devices, jax.distributed over localhost, gloo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_train_loop import ROOT, _env, _fingerprints, _flat, _free_port, _metrics, _train_cmd, data  # noqa: F401

FLAGS = ["--config.total_steps=100000", "--config.checkpoint_every=100000", "--config.log_every=2",
         "--config.data.host_split=global_batch", "--record_batches"]


def _start_two(data, workdir, *flags, tag="run"):  # pylint: disable=redefined-outer-name
  """Two processes of 4 CPU devices each; their logs go to files (a full pipe would stall them)."""
  port = _free_port()
  os.makedirs(workdir, exist_ok=True)
  procs = []
  for i in range(2):
    log = open(os.path.join(workdir, f"{tag}_process_{i}.log"), "w+")  # pylint: disable=consider-using-with
    procs.append((subprocess.Popen(_train_cmd(data, workdir, "--distributed", *FLAGS, *flags, steps=100000), cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT, text=True,
                                   env=_env(4, PI0_COORDINATOR=f"127.0.0.1:{port}", PI0_NUM_PROCESSES=2,
                                            PI0_PROCESS_ID=i)), log))
  return procs


def _finish(procs, timeout=600) -> list[str]:
  logs = []
  for p, log in procs:
    p.wait(timeout=timeout)
    log.seek(0)
    logs.append(log.read())
    log.close()
  for (p, _), text in zip(procs, logs):
    assert p.returncode == 0, text[-3000:]
  return logs


def _restore_arrays(workdir, step):
  """The saved train state on one device (it was written by 2 processes: a target tree is needed)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as reader:
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                          reader.metadata(path).item_metadata)
    return reader.restore(path, target)


def _saved_steps(workdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _sigterm_one_host(data, workdir, *flags) -> int:  # pylint: disable=redefined-outer-name
  """Starts two hosts, sends SIGTERM to process 1 only once step 2 is logged; returns the step both saved."""
  procs = _start_two(data, workdir, *flags)
  deadline = time.time() + 900  # A generous bound for a loaded machine, not a speed claim.
  while time.time() < deadline and max(_metrics(workdir), default=0) < 2 and all(p.poll() is None for p, _ in procs):
    time.sleep(0.2)
  assert max(_metrics(workdir), default=0) >= 2 and all(p.poll() is None for p, _ in procs)
  procs[1][0].send_signal(signal.SIGTERM)
  errs = _finish(procs)
  saved = [re.findall(r"SIGTERM: saved a checkpoint at step (\d+)", err) for err in errs]
  assert len(saved[0]) == len(saved[1]) == 1 and saved[0] == saved[1], saved  # Both hosts, the same step.
  step = int(saved[0][0])
  assert _saved_steps(workdir) == [step] and step >= 2
  return step


def test_sigterm_to_one_host_both_save_the_same_step_and_resume_equals_uninterrupted(data, tmp_path):  # noqa: F811
  cut = str(tmp_path / "cut")
  step = _sigterm_one_host(data, cut)
  assert step % 2 == 0  # "allreduce" agrees at log steps only (log_every=2): no host sync on other steps.
  _finish(_start_two(data, cut, "--stop_after=2", tag="resume"))  # Resume on both hosts, 2 more steps.
  whole = str(tmp_path / "whole")
  _finish(_start_two(data, whole, f"--stop_after={step + 2}"))
  assert _saved_steps(cut) == [step, step + 2] and _saved_steps(whole) == [step + 2]
  mc, mw = _metrics(cut), _metrics(whole)
  assert sorted(mc) == sorted(mw) == list(range(2, step + 3, 2))
  bc, bw = _fingerprints(cut), _fingerprints(whole)
  assert sorted(bc) == sorted(bw) == list(range(1, step + 3))
  assert all(bc[s] == bw[s] for s in bw), (bc, bw)  # The same batches, the resumed ones included.
  for s in mw:
    np.testing.assert_allclose(mc[s]["loss"], mw[s]["loss"], rtol=1e-6, err_msg=f"step {s}")
  pc, pw = _flat(_restore_arrays(cut, step + 2)), _flat(_restore_arrays(whole, step + 2))
  assert pc.keys() == pw.keys() and int(pc["['step']"]) == step + 2
  for k in pc:
    np.testing.assert_allclose(pc[k], pw[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("mode", ["sync_point"])
def test_jax_preemption_sync_point_agrees_too(data, tmp_path, mode):  # noqa: F811
  """The TPU default (JAX's preemption service), run here on CPU hosts."""
  _sigterm_one_host(data, str(tmp_path / "run"), f"--config.preemption_sync={mode}")
