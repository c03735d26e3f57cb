"""launch/tpu_pod.sh: its usage, and the gcloud commands it would run (DRY_RUN=1) for one slice and for several."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu_pod.sh")
POD = {"TPU_NAME": "pi0", "ZONE": "us-west4-a", "ACCELERATOR": "v5litepod-256", "RUNTIME": "v2-alpha-tpuv5-lite"}


def _run(*args, **env):
  full = {"PATH": os.environ["PATH"], "DRY_RUN": "1", **POD, **env}
  return subprocess.run(["bash", SCRIPT, *args], env=full, capture_output=True, text=True, timeout=30)


def test_help_shows_multi_slice_usage():
  p = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, timeout=30)
  assert p.returncode == 0
  assert "NUM_SLICES" in p.stdout and "queued resource" in p.stdout and "DRY_RUN=1" in p.stdout
  assert _run("bogus").returncode == 2


def test_one_slice_commands():
  create = _run("create").stdout.splitlines()
  assert create == ["gcloud compute tpus tpu-vm create pi0 --zone=us-west4-a --accelerator-type=v5litepod-256 "
                    "--version=v2-alpha-tpuv5-lite"]
  train = _run("train", "--config=c.py", "--workdir=gs://b/r").stdout.splitlines()
  assert len(train) == 1 and train[0].startswith("gcloud compute tpus tpu-vm ssh pi0 --zone=us-west4-a --worker=all ")
  assert _run("delete").stdout.strip() == "gcloud compute tpus tpu-vm delete pi0 --zone=us-west4-a --quiet"


def test_multi_slice_commands():
  create = _run("create", NUM_SLICES="2", SPOT="1").stdout.splitlines()
  assert create == ["gcloud compute tpus queued-resources create pi0 --zone=us-west4-a "
                    "--accelerator-type=v5litepod-256 --runtime-version=v2-alpha-tpuv5-lite --node-count=2 "
                    "--node-prefix=pi0 --spot"]
  train = _run("train", "--config=c.py", "--config.mesh=slice:2,fsdp:-1", NUM_SLICES="2").stdout.splitlines()
  assert [line.split()[5] for line in train] == ["pi0-0", "pi0-1"]  # Every worker of both slices.
  assert all("pi0_jax.train" in line and "--distributed" in line and "--config.mesh=slice:2" in line for line in train)
  logs = _run("logs", NUM_SLICES="2").stdout.split()
  assert logs[5] == "pi0-0" and "--worker=0" in logs
  assert _run("delete", NUM_SLICES="2").stdout.strip() == (
      "gcloud compute tpus queued-resources delete pi0 --zone=us-west4-a --force --quiet")


def test_mesh_slice_axis_must_match_the_slices():
  assert _run("train", "--config.mesh=fsdp:-1", NUM_SLICES="2").returncode == 0  # The trainer adds slice:2.
  p = _run("train", "--config.mesh", "fsdp:-1,slice:4", NUM_SLICES="2")
  assert p.returncode == 2 and p.stdout == ""
  assert "slice axis has size 4, but NUM_SLICES=2" in p.stderr
  p = _run("train", "--config.mesh=slice:2,fsdp:-1")
  assert p.returncode == 2 and "NUM_SLICES=1" in p.stderr
  p = _run("create", NUM_SLICES="0")
  assert p.returncode == 2 and "NUM_SLICES=0: expected a positive integer" in p.stderr
