"""Held-out evaluation: a tiny pi0 trained for 2 steps on a tiny Meta-World dataset, exported and evaluated.

The fixtures build a 2-task Meta-World dataset (reach-v3 as the training class, drawer-open-v3 as the held-out
class; 2 episodes each at 32 px), train pi0's "tiny" preset on it in-process, export it, and run one short
evaluation (1 episode per task, 30 steps, the mean-action baseline too). Rollouts run in spawned workers: this
process imports TensorFlow, next to which MuJoCo's EGL rendering crashes.
"""

import concurrent.futures
import importlib.util
import json
import math
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

from pi0_jax.data import build_metaworld as bm
from pi0_jax.envs import metaworld as mw
from pi0_jax.data import stats as stats_lib
from pi0_jax.evaluate import offline, report as report_lib, rollout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_TASK, HELDOUT_TASK = "reach-v3", "drawer-open-v3"
SIZE = 32
MAX_STEPS, REPLAN = 30, 3


def _tiny_config(dataset: str, tokenizer: str, stats_dir: str):
  spec = importlib.util.spec_from_file_location("pi0_tiny", os.path.join(ROOT, "configs", "pi0_tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f"dataset={dataset},tokenizer={tokenizer},stats_dir={stats_dir},steps=2")
  c.optimizer.warmup_steps = 1
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from pi0_jax import export
  from pi0_jax.data import tokenizer as tokenizer_lib
  from pi0_jax.train import loop
  root = tmp_path_factory.mktemp("evaluate")
  data_dir = str(root / "mw")
  reports = bm.build(data_dir, "both", episodes_per_task=2, image_size=SIZE, tasks=[TRAIN_TASK, HELDOUT_TASK])
  tokenizer = str(root / "tokenizer.model")
  tokenizer_lib.train_tokenizer(mw.TASK_INSTRUCTIONS.values(), tokenizer, vocab_size=64)
  stats_dir = str(root / "stats")
  config = _tiny_config(reports["metaworld_ml10_train"]["dir"], tokenizer, stats_dir)
  loop.run(config, str(root / "run"))
  export_dir = export.export(str(root / "run"), str(root / "export"))
  return {"root": root, "data_dir": data_dir, "reports": reports, "export": export_dir, "stats_dir": stats_dir}


@pytest.fixture(scope="module")
def evaluated(trained):
  from pi0_jax.evaluate import evaluate
  out = str(trained["root"] / "eval")
  path = evaluate(trained["export"], out, offline_batches=2, t_bins=10, episodes_per_task=1,
                  tasks=[TRAIN_TASK, HELDOUT_TASK], replan_every=REPLAN, max_steps=MAX_STEPS, num_steps=3, gifs=1,
                  baseline=True, stats_dir=trained["stats_dir"], progress=False)
  with open(os.path.join(out, "report.json")) as f:
    return {"out": out, "md_path": path, "report": json.load(f)}


def _demo_episodes(dataset_dir: str):
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(dataset_dir)
  episodes = []
  for split in builder.info.splits:
    for ep in builder.as_dataset(split=split):
      meta = {k: v.numpy() for k, v in ep["episode_metadata"].items()}
      first = next(iter(ep["steps"].take(1).as_numpy_iterator()))
      episodes.append((meta, first))
  return episodes


# --- The whole evaluation ----------------------------------------------------------------------------------------


def test_report_files(evaluated):
  out = evaluated["out"]
  assert evaluated["md_path"] == os.path.join(out, "report.md")
  for name in ("report.json", "report.md", "success_per_task.png", "loss_by_t.png", "chunks.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(evaluated["md_path"]) as f:
    md = f.read()
  for text in ("## Closed loop (Meta-World)", "## Offline (held-out data)", f"| {TRAIN_TASK} | train |",
               f"| {HELDOUT_TASK} | heldout |", "baseline MSE", "| metaworld_ml10_test/heldout |"):
    assert text in md, text


def test_closed_loop_episodes_are_real_rollouts(evaluated, trained):
  closed = evaluated["report"]["closed_loop"]
  episodes = closed["episodes"]
  assert sorted((e["kind"], e["task"]) for e in episodes) == sorted(
      (k, t) for k in ("policy", "baseline") for t in (TRAIN_TASK, HELDOUT_TASK))
  horizon = 4  # The tiny preset's action_horizon.
  for e in episodes:
    assert 1 <= e["steps"] <= MAX_STEPS
    assert e["success"] == (e["first_success_step"] is not None)
    assert e["steps"] == (e["first_success_step"] + 1 if e["success"] else MAX_STEPS)
    # A chunk is asked for every min(replan_every, horizon) steps.
    assert e["replans"] == math.ceil(e["steps"] / min(REPLAN, horizon))
    assert e["return"] > 0
    frames = _gif_frames(os.path.join(evaluated["out"], e["gif"]))
    assert frames == e["steps"] + 1  # One frame per step, plus the final state.
  # The policy and the baseline faced the same task variants.
  variants = {(e["kind"], e["task"]): (e["variant_seed"], e["variant_index"]) for e in episodes}
  for task in (TRAIN_TASK, HELDOUT_TASK):
    assert variants[("policy", task)] == variants[("baseline", task)]
  # ... and none of the demonstrations' variants.
  demo = {(int(m["variant_seed"]), int(m["variant_index"])) for name in trained["reports"]
          for m, _ in _demo_episodes(trained["reports"][name]["dir"])}
  assert not demo & set(variants.values())
  assert closed["demo_seeds"] == [0] and closed["settings"]["seed"] == 1000
  for kind, summary in closed["summary"].items():
    for task, row in summary["tasks"].items():
      mine = [e for e in episodes if (e["kind"], e["task"]) == (kind, task)]
      assert row["episodes"] == len(mine) == 1
      assert row["successes"] == sum(e["success"] for e in mine)
      assert 0.0 <= row["success_rate"] <= 1.0
      assert row["ci95"] == pytest.approx(list(rollout.wilson_interval(row["successes"], 1)))
      assert row["split"] == ("train" if task == TRAIN_TASK else "heldout")
    assert set(summary["groups"]) == {"train", "heldout", "all"}
    assert summary["groups"]["all"]["episodes"] == 2


def _gif_frames(path: str) -> int:
  import imageio.v3 as iio
  return len(iio.imread(path, index=None))


def test_offline_groups_shaped_and_finite(evaluated):
  off = evaluated["report"]["offline"]
  groups = {g["group"]: g for g in off["groups"]}
  assert set(groups) == {"metaworld_ml10_train/val", "metaworld_ml10_test/heldout"}
  assert groups["metaworld_ml10_train/val"]["kind"] == "val"
  assert {d["split"] for d in groups["metaworld_ml10_test/heldout"]["datasets"]} == {"train", "val"}
  for name, g in groups.items():
    assert g["batches"] == 2 and g["frames"] == 2 * off["settings"]["batch_size"]
    assert len(g["loss_by_bin"]["edges"]) == 11 and len(g["loss_by_bin"]["loss"]) == 10
    assert all(v is not None and np.isfinite(v) and v >= 0 for v in g["loss_by_bin"]["loss"])
    assert g["loss"] == pytest.approx(np.mean(g["loss_by_bin"]["loss"]))
    assert len(g["per_dim"]["mse"]) == mw.ACTION_DIM and len(g["per_step"]["mse"]) == 4
    for key in ("mse", "l1"):
      assert g[key] is not None and g[key] >= 0 and g["baseline"][key] is not None
    assert sum(t["frames"] for t in g["per_task"].values()) == g["frames"]
    assert 0 < len(g["examples"]) <= 4
  # Tasks named from the (truncated) tokenized prompts.
  assert set(groups["metaworld_ml10_train/val"]["per_task"]) == {TRAIN_TASK}
  assert set(groups["metaworld_ml10_test/heldout"]["per_task"]) == {HELDOUT_TASK}


def test_eval_seed_must_differ_from_demo_seed(trained, tmp_path):
  from pi0_jax.evaluate import evaluate
  with pytest.raises(ValueError, match=r"built with variant seeds \[0\]"):
    evaluate(trained["export"], str(tmp_path), env_seed=0, skip_offline=True, tasks=[TRAIN_TASK])


def test_cli_help_and_errors(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
  p = subprocess.run([sys.executable, "-m", "pi0_jax.evaluate", "--help"], capture_output=True, text=True, env=env,
                     timeout=120)
  assert p.returncode in (0, 1) and "--checkpoint" in p.stdout, p.stderr[-2000:]  # absl's --help exits with 1.
  for flag in ("checkpoint", "out", "offline_batches", "episodes_per_task", "tasks", "replan_every", "max_steps",
               "num_steps", "gifs", "baseline", "skip_offline", "skip_closed_loop", "data_dir"):
    assert f"{flag}:" in p.stdout, flag  # "--name: help" or, for booleans, "--[no]name: help"
  p = subprocess.run([sys.executable, "-m", "pi0_jax.evaluate", f"--checkpoint={tmp_path / 'nothing'}",
                      f"--out={tmp_path / 'out'}"], capture_output=True, text=True, env=env, timeout=120)
  assert p.returncode == 1 and "metadata.json" in p.stderr and "does not exist" in p.stderr


# --- Rollouts see what the training data shows ----------------------------------------------------------------


def test_rollout_observation_matches_training_data(trained):
  report = trained["reports"]["metaworld_ml10_train"]
  render = mw.RenderOptions.from_build_options(report["options"])
  meta, first = _demo_episodes(report["dir"])[0]
  task = meta["task"].decode()
  # Under the demo build's seed, evaluation episode i is the builder's attempt i.
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
    obs = pool.submit(rollout.first_observation, task, report["options"]["seed"], int(meta["attempt"]),
                      render).result()
  assert (obs["variant_seed"], obs["variant_index"]) == (meta["variant_seed"], meta["variant_index"])
  np.testing.assert_array_equal(obs["state"], first["observation"]["state"])
  assert obs["prompt"] == first["language_instruction"].decode()
  import tensorflow as tf
  for key in ("image", "wrist_image"):
    got, stored = obs["images"][key], first["observation"][key]
    assert got.shape == stored.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8
    # The stored frames went through TFDS's JPEG encoding (tf.image.encode_jpeg): the same encoding of the
    # rollout's frame gives the stored pixels exactly.
    np.testing.assert_array_equal(tf.io.decode_jpeg(tf.io.encode_jpeg(got)).numpy(), stored, err_msg=key)


# --- Offline metrics against numpy --------------------------------------------------------------------------------


def test_eval_step_and_metrics_equal_numpy(trained):
  import jax
  from pi0_jax import export
  from pi0_jax.data import pipeline
  from pi0_jax.model import Pi0, Pi0Config
  from pi0_jax.train import setup
  export_dir = trained["export"]
  with open(os.path.join(export_dir, "metadata.json")) as f:
    train_config = json.load(f)["train_config"]
  with open(os.path.join(export_dir, "norm_stats.json")) as f:
    norm_stats = json.load(f)
  groups = offline.eval_groups(train_config["data"], norm_stats, policy_dataset=None, data_dir=None, heldout=None)
  group = groups[-1]  # the held-out dataset
  assert group.kind == offline.HELDOUT
  settings = offline.OfflineSettings(stats_dir=trained["stats_dir"])
  norm_path = str(trained["root"] / "norm_stats_heldout.json")
  with open(norm_path, "w") as f:
    json.dump({"datasets": {s["name"]: group.norm_entry for s in group.sources}}, f)
  cfg = offline.group_data_config(group, train_config["data"], tokenizer=os.path.join(export_dir, "tokenizer.model"),
                                  norm_stats_path=norm_path, settings=settings, max_frames=None)
  with open(os.path.join(export_dir, "model_config.json")) as f:
    config = Pi0Config.from_dict(json.load(f))
  batch = pipeline.make_eval_data(cfg, config, global_batch=8).next_host_batch()
  mesh = setup.eval_mesh([["data", -1], ["fsdp", 1]], ("data", "fsdp"), ("fsdp",))
  params = export.load_params(export.params_dir(export_dir), config, mesh=mesh, fsdp_axes=("fsdp",))
  model, bins, key = Pi0(config), 3, jax.random.key(7)
  out = jax.device_get(jax.jit(offline.make_eval_step(model, bins, num_steps=2))(params, batch, key))

  # The t-bin losses are compute_loss with that bin's draws; times lie in their bins.
  assert out["loss_sums"].shape == (bins, 8)
  edges = offline.bin_edges(bins)
  for i in range(bins):
    noise, time = offline.bin_draws(key, i, bins, batch["actions"].shape)
    assert np.all((np.asarray(time) > edges[i]) & (np.asarray(time) <= edges[i + 1]))
    per_step = model.apply({"params": params}, batch["observation"], batch["actions"], method="compute_loss",
                           noise=noise, time=time, action_pad_mask=batch["action_pad_mask"],
                           action_dim_mask=batch["action_dim_mask"])
    np.testing.assert_allclose(out["loss_sums"][i], np.asarray(per_step).sum(-1), rtol=2e-5, atol=1e-5)
  pred = model.apply({"params": params}, batch["observation"], rng=jax.random.fold_in(key, bins), num_steps=2,
                     method="sample_actions")
  np.testing.assert_allclose(out["pred"], np.asarray(pred), rtol=2e-5, atol=1e-5)

  # Masked MSE / L1 in the robot's units, by hand.
  st = group.norm_entry["norm_stats"]["actions"]
  mean, std = np.asarray(st["mean"], np.float32), np.asarray(st["std"], np.float32)
  d = len(mean)
  unnorm = lambda x: x[..., :d] * (std + 1e-6) + mean  # noqa: E731
  gt, pr = unnorm(batch["actions"]), unnorm(out["pred"])
  mask = np.broadcast_to(batch["action_pad_mask"][:, :, None], gt.shape) & batch["action_dim_mask"][:, None, :d]
  metrics = offline.ChunkMetrics(config.action_horizon, bins)
  metrics.add(pred=out["pred"], actions=batch["actions"], action_pad_mask=batch["action_pad_mask"],
              action_dim_mask=batch["action_dim_mask"], instructions=[mw.TASK_INSTRUCTIONS[HELDOUT_TASK]] * 8,
              action_stats=[group.action_stats] * 8, loss_sums=out["loss_sums"])
  r = metrics.result()
  np.testing.assert_allclose(r["mse"], np.mean(((pr - gt)**2)[mask]), rtol=1e-5)
  np.testing.assert_allclose(r["l1"], np.mean(np.abs(pr - gt)[mask]), rtol=1e-5)
  np.testing.assert_allclose(r["baseline"]["mse"], np.mean(((mean - gt)**2)[mask]), rtol=1e-5)
  np.testing.assert_allclose(r["per_task"][HELDOUT_TASK]["mse"], r["mse"])
  np.testing.assert_allclose(r["per_dim"]["mse"], [np.mean(((pr - gt)**2)[..., j][mask[..., j]]) for j in range(d)],
                             rtol=1e-5)
  valid = batch["action_pad_mask"].sum()
  np.testing.assert_allclose(r["loss_by_bin"]["loss"], out["loss_sums"].sum(1) / valid, rtol=1e-6)


def _stats_entry(x: np.ndarray, mode: str = "zscore", skip=()) -> dict:
  return {"norm_stats": {"actions": stats_lib.compute_stats(x)}, "norm_mode": mode,
          "unnormalized_action_dims": list(skip)}


def test_chunk_metrics_masks_dims_and_tasks():
  rng = np.random.default_rng(0)
  b, h, a = 6, 5, 8
  # Two datasets: 3 action dims in z-score mode, and 2 dims in quantile mode with dim 1 left raw.
  st3 = offline.ActionStats.from_entry("three", _stats_entry(rng.normal(size=(50, 3))))
  st2 = offline.ActionStats.from_entry("two", _stats_entry(rng.normal(size=(50, 2)), "quantile", skip=[1]))
  stats = [st3, st3, st2, st3, st2, st2]
  dims = [s.dim for s in stats]
  actions, pred = rng.normal(size=(b, h, a)).astype(np.float32), rng.normal(size=(b, h, a)).astype(np.float32)
  pad = rng.random((b, h)) > 0.3
  pad[:, 0] = True
  dim_mask = np.arange(a)[None, :] < np.asarray(dims)[:, None]
  tasks = ["push the puck to the goal", "open the door", "open the door", "push the puck to the goal",
           "some new task", "open the door"]
  m = offline.ChunkMetrics(h, num_bins=2)
  m.add(pred=pred, actions=actions, action_pad_mask=pad, action_dim_mask=dim_mask, instructions=tasks,
        action_stats=stats, loss_sums=np.ones((2, b)))
  r = m.result()
  sq, ab, cnt, per_task = 0.0, 0.0, 0, {}
  dim_sq, dim_cnt = np.zeros(3), np.zeros(3)
  for i, s in enumerate(stats):
    d = s.dim
    if s.mode == "zscore":
      un = lambda x: x[:, :d] * (s.stats["std"] + 1e-6) + s.stats["mean"]  # noqa: E731
    else:
      scale = s.stats["q99"] - s.stats["q01"] + 1e-6
      un = lambda x: np.where([False, True], x[:, :d], (x[:, :d] + 1) / 2 * scale + s.stats["q01"])  # noqa: E731
    e = (un(pred[i]) - un(actions[i]))[pad[i]]
    sq, ab, cnt = sq + (e**2).sum(), ab + np.abs(e).sum(), cnt + e.size
    t = per_task.setdefault(tasks[i], [0.0, 0])
    t[0], t[1] = t[0] + (e**2).sum(), t[1] + e.size
    dim_sq[:d] += (e**2).sum(0)
    dim_cnt[:d] += len(e)
  np.testing.assert_allclose(r["mse"], sq / cnt, rtol=1e-5)
  np.testing.assert_allclose(r["l1"], ab / cnt, rtol=1e-5)
  np.testing.assert_allclose(r["per_dim"]["mse"], dim_sq / dim_cnt, rtol=1e-5)
  assert set(r["per_task"]) == {"push-v3", "door-open-v3", "some new task"}
  for text, (s, n) in per_task.items():
    np.testing.assert_allclose(r["per_task"][offline.task_name(text)]["mse"], s / n, rtol=1e-5)
  assert r["loss_by_bin"]["loss"] == pytest.approx([b / pad.sum()] * 2)


def test_baseline_mse_is_the_variance():
  # Ground truth drawn around some mean; statistics over exactly the real (unpadded) entries. The mean-action
  # baseline's MSE per dim is then the population variance, and its L1 the mean absolute deviation.
  rng = np.random.default_rng(1)
  n, h, d = 40, 6, 3
  x = rng.normal(loc=[0.5, -2.0, 3.0], scale=[0.1, 1.0, 2.5], size=(n, h, d))
  pad = rng.random((n, h)) > 0.25
  st = offline.ActionStats.from_entry("data", _stats_entry(x[pad]))
  normalized = np.zeros((n, h, 8), np.float32)
  normalized[..., :d] = (x - st.stats["mean"]) / (st.stats["std"] + 1e-6)
  m = offline.ChunkMetrics(h, num_bins=1)
  dim_mask = np.broadcast_to(np.arange(8) < d, (n, 8))
  m.add(pred=normalized, actions=normalized, action_pad_mask=pad, action_dim_mask=dim_mask,
        instructions=["reach the goal position"] * n, action_stats=[st] * n)
  r = m.result()
  np.testing.assert_allclose(r["per_dim"]["baseline_mse"], x[pad].var(0), rtol=1e-4)
  np.testing.assert_allclose(r["per_dim"]["baseline_l1"], np.abs(x[pad] - x[pad].mean(0)).mean(0), rtol=1e-4)
  np.testing.assert_allclose(r["baseline"]["mse"], x[pad].var(0).mean(), rtol=1e-4)
  assert r["mse"] == pytest.approx(0.0, abs=1e-9)  # A perfect prediction.
  assert r["loss"] is None  # No losses were given.
  # The closed-loop baseline outputs the same mean action for every step of its chunk.
  assert st.unnormalize(np.zeros((h, 8))) == pytest.approx(np.tile(x[pad].mean(0), (h, 1)), rel=1e-4)


# --- Statistics ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.2775327999), (5, 10, 0.2365930905, 0.7634069095), (10, 10, 0.7224672001, 1.0),
    (1, 1, 0.2065493144, 1.0), (7, 20, 0.1811918241, 0.5671457233), (81, 263, 0.2552885199, 0.3662095770)])
def test_wilson_interval_known_values(k, n, lo, hi):
  assert rollout.wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-9)


def test_wilson_interval_bad_input():
  assert rollout.wilson_interval(0, 0) == (0.0, 1.0)
  with pytest.raises(ValueError, match="successes"):
    rollout.wilson_interval(3, 2)


def test_summary_groups_and_markdown_without_stages(tmp_path):
  records = [{"kind": "policy", "task": t, "success": s, "first_success_step": 3 if s else None, "steps": 4 if s else 9,
              "return": 1.0, "infer_ms_median": 1.0}
             for t, s in [("reach-v3", True), ("reach-v3", False), ("push-v3", True), ("lever-pull-v3", False)]]
  summary = rollout.summarize(records, ["reach-v3", "push-v3", "lever-pull-v3"])["policy"]
  assert summary["tasks"]["reach-v3"]["success_rate"] == 0.5
  assert summary["groups"]["train"]["mean_success"] == 0.75  # mean of the task rates 0.5 and 1.0
  assert summary["groups"]["train"]["pooled_success"] == pytest.approx(2 / 3)
  assert summary["groups"]["heldout"]["successes"] == 0
  assert summary["groups"]["all"]["ci95"] == pytest.approx(list(rollout.wilson_interval(2, 4)))
  paths = report_lib.write_report(str(tmp_path), {"export": {"dir": "x"}, "closed_loop": None, "offline": None})
  with open(paths["markdown"]) as f:
    assert f.read().count("Skipped.") == 2
