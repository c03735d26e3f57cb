"""benchmarks/gpu.sh, the GPU latency command, run end to end on CPU with the tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PI0_SKIP_SETUP="1", PYTHON=sys.executable, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), *args], env=env, capture_output=True,
                        text=True, timeout=600, cwd=ROOT)


def test_gpu_command_on_a_small_preset(tmp_path):
  out = tmp_path / "gpu.json"
  p = _run("tiny", str(out), "--cameras=1,2", "--repeats=1")
  assert p.returncode == 0, p.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = report["rows"]
  assert [r["cameras"] for r in rows] == [1, 2] and all(r["preset"] == "tiny" and r["steps"] == 10 for r in rows)
  assert all(r["param_dtype"] == "bfloat16" and r["compute_dtype"] == "bfloat16" for r in rows)
  # tiny: 32x32 images in 8x8 patches = 16 tokens per camera, plus 6 prompt tokens.
  assert [r["prefix_tokens"] for r in rows] == [22, 38]
  assert all(r["sampler_ms"] > 0 and r["prefix_ms"] > 0 for r in rows)
  assert [r["custom_kernels_anchor_ms"] for r in rows] == [20.0, 27.0]
  assert report["anchors_ms"]["pi0_paper_rtx4090_3_cameras"] == 73.0 and report["machine"]["platform"] == "cpu"


def test_full_size_preset_refuses_to_run_without_a_gpu(tmp_path):
  p = _run("pi0", str(tmp_path / "gpu.json"))
  assert p.returncode == 1 and "benchmarks/gpu.py: no GPU" in p.stderr and "--allow_cpu" in p.stderr, p.stderr[-2000:]
  assert not (tmp_path / "gpu.json").exists()
