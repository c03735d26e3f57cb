"""benchmarks/rtc_sweep.py end to end on a tiny export: fine-tune with training-time RTC, export, delay sweep.

A tiny pi0 (rtc_max_delay 0) trained for 2 steps on a 1-task Meta-World dataset (reach-v3, 2 episodes at 32 px)
stands in for the demo export; the sweep fine-tunes it for 2 steps with rtc_max_delay = 2 (configs/pi0_tiny.py
instead of configs/pi0_demo.py) and runs 1 episode of 6 steps per method and delay.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from pi0_jax.data import build_metaworld as bm
from pi0_jax.envs import metaworld as mw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK, DELAYS = "reach-v3", (0, 1, 2)  # tiny preset: action_horizon 4, so with s = 2: d <= 2


def _tiny_config_arg(dataset: str, tokenizer: str, stats_dir: str) -> str:
  return f"configs/pi0_tiny.py:dataset={dataset},tokenizer={tokenizer},stats_dir={stats_dir},steps=2"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """A stand-in for the demo: its data dir and a tiny export trained on it."""
  from pi0_jax import export
  from pi0_jax.data import tokenizer as tokenizer_lib
  from pi0_jax.train import loop
  root = tmp_path_factory.mktemp("rtc_sweep")
  data_dir = root / "mw"
  reports = bm.build(str(data_dir), "train", episodes_per_task=2, image_size=32, tasks=[TASK])
  tokenizer = str(data_dir / "tokenizer.model")
  tokenizer_lib.train_tokenizer(mw.TASK_INSTRUCTIONS.values(), tokenizer, vocab_size=64)
  config_arg = _tiny_config_arg(reports["metaworld_ml10_train"]["dir"], tokenizer, str(root / "stats"))
  spec = importlib.util.spec_from_file_location("pi0_tiny", os.path.join(ROOT, "configs", "pi0_tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(config_arg.split(":", 1)[1])
  config.optimizer.warmup_steps = 1
  loop.run(config, str(root / "run"))
  return {"root": root, "data_dir": str(data_dir), "export": export.export(str(root / "run"), str(root / "export")),
          "config_arg": config_arg}


def _sweep(demo, *flags) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run has
  cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "rtc_sweep.py"), f"--export={demo['export']}",
         f"--data_dir={demo['data_dir']}", f"--workdir={demo['root'] / 'sweep'}", "--train_steps=2",
         f"--train_config={demo['config_arg']}", f"--tasks={TASK}", "--episodes_per_task=1", "--replan_every=2",
         "--max_steps=6", "--num_steps=2", "--num_workers=1", f"--out={demo['root'] / 'results' / 'rtc_sweep.json'}",
         *flags]
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)


def test_sweep_rejects_delays_the_model_cannot_take(demo):
  done = _sweep(demo, "--delays=0,3")
  assert done.returncode != 0
  assert "d <= s <= H - d with s = min(--replan_every, H) = 2 and H = 4" in done.stderr
  assert not os.path.exists(demo["root"] / "sweep" / "rtc_train")  # before any training


def test_sweep_trains_exports_and_reports_every_method_and_delay(demo):
  done = _sweep(demo, f"--delays={','.join(map(str, DELAYS))}")
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  with open(demo["root"] / "results" / "rtc_sweep.json") as f:
    result = json.load(f)
  assert list(result["results"]) == ["sync", "naive", "rtc", "rtc_trained"]
  for method, per_delay in result["results"].items():
    assert sorted(per_delay) == [str(d) for d in DELAYS], method
    for row in per_delay.values():
      assert row["episodes"] == 1 and 0 <= row["successes"] <= 1
      assert row["ci95"][0] <= row["success_rate"] <= row["ci95"][1]
      for key in ("mean_steps_to_success", "switch_jump_mean", "switch_jump_max", "switches"):
        assert key in row, key
  # The same episodes: d = 0 sync and naive are the plain closed loop, switch jumps included.
  assert result["results"]["sync"]["0"] == result["results"]["naive"]["0"]
  with open(os.path.join(result["rtc_export"], "model_config.json")) as f:
    assert json.load(f)["rtc_max_delay"] == max(DELAYS)
  assert {"train", "export", "sweep_demo", "sweep_rtc_trained"} <= set(result["seconds"])
  assert os.path.getsize(demo["root"] / "results" / "rtc_sweep.png") > 0
  table = [line.split("|") for line in done.stdout.splitlines() if line.startswith("rtc_trained")]
  assert [int(row[1]) for row in table] == list(DELAYS)  # the printed table: one row per delay
  # Resumable: a second run finds every stage's output and redoes nothing.
  again = _sweep(demo, f"--delays={','.join(map(str, DELAYS))}")
  assert again.returncode == 0, again.stderr[-3000:]
  with open(demo["root"] / "results" / "rtc_sweep.json") as f:
    second = json.load(f)
  assert second["results"] == result["results"] and "train" not in second["seconds"]
