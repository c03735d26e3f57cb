"""The Meta-World demo builder: a tiny dataset (2 tasks x 2 episodes, 32 px) built, read back and replayed."""

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pi0_jax.data import build_metaworld as bm

TASKS = ["reach-v3", "push-v3"]
SIZE = 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("mw"))
  reports = bm.build(out, "train", episodes_per_task=2, image_size=SIZE, tasks=TASKS, seed=0)
  return out, reports


@pytest.fixture(scope="module")
def episodes(built):
  _, reports = built
  builder = tfds.builder_from_directory(reports["metaworld_ml10_train"]["dir"])
  result = {}
  for split in ("train", "val"):
    result[split] = []
    for ep in builder.as_dataset(split=split):
      meta = {k: v.numpy() for k, v in ep["episode_metadata"].items()}
      meta["task"] = meta["task"].decode()
      steps = list(ep["steps"].as_numpy_iterator())
      stacked = {
          "image": np.stack([s["observation"]["image"] for s in steps]),
          "wrist_image": np.stack([s["observation"]["wrist_image"] for s in steps]),
          "state": np.stack([s["observation"]["state"] for s in steps]),
          "env_state": np.stack([s["observation"]["env_state"] for s in steps]),
          **{k: np.stack([s[k] for s in steps]) for k in
             ("action", "reward", "discount", "is_first", "is_last", "is_terminal")},
          "language_instruction": [s["language_instruction"].decode() for s in steps],
      }
      result[split].append((meta, stacked))
  return result


def test_report_counts_and_splits(built, episodes):
  out, reports = built
  assert list(reports) == ["metaworld_ml10_train"]
  report = reports["metaworld_ml10_train"]
  assert report["dir"] == os.path.join(out, "metaworld_ml10_train", "1.0.0")
  with open(os.path.join(report["dir"], "build_report.json")) as f:
    assert json.load(f) == report
  for task in TASKS:
    counts = report["counts"][task]
    assert counts["kept"] == 2 and counts["attempted"] >= 2
    assert (counts["train"], counts["val"]) == (1, 1)  # val_fraction 0.1 of 2, but at least one
  assert report["totals"]["train"] == report["totals"]["val"] == 2
  for split in ("train", "val"):
    assert sorted(meta["task"] for meta, _ in episodes[split]) == sorted(TASKS)
  train_ids = {(m["task"], m["attempt"]) for m, _ in episodes["train"]}
  val_ids = {(m["task"], m["attempt"]) for m, _ in episodes["val"]}
  assert not train_ids & val_ids
  assert report["totals"]["steps"] == sum(len(s["action"]) for split in episodes.values() for _, s in split)


def test_steps_layout(episodes):
  for meta, s in episodes["train"] + episodes["val"]:
    n = len(s["action"])
    assert n == meta["num_steps"] > 5
    assert s["image"].shape == s["wrist_image"].shape == (n, SIZE, SIZE, 3)
    assert s["image"].dtype == np.uint8
    assert s["state"].shape == (n, 4) and s["env_state"].shape == (n, 39)
    np.testing.assert_array_equal(s["state"], s["env_state"][:, :4])
    # Goal-visible MT1 tasks: the last three observation entries hold the goal, not zeros.
    assert np.abs(s["env_state"][:, -3:]).sum(1).min() > 0.1
    assert s["action"].shape == (n, 4) and s["action"].dtype == np.float32
    assert np.abs(s["action"]).max() <= 1.0
    assert np.abs(s["action"][:, :3]).max() > 0.1  # the hand is driven, not idle
    assert s["is_first"].tolist() == [True] + [False] * (n - 1)
    assert s["is_last"].tolist() == [False] * (n - 1) + [True]
    assert s["is_terminal"].tolist() == [False] * (n - 1) + [True]
    assert (s["discount"] == 1.0).all()
    assert s["language_instruction"] == [bm.TASK_INSTRUCTIONS[meta["task"]]] * n


def test_images_vary_across_steps(episodes):
  for _, s in episodes["train"] + episodes["val"]:
    for key in ("image", "wrist_image"):
      frames = s[key].astype(np.float32)
      change = np.abs(frames[-1] - frames[0]).mean()
      assert change > 1.0, (key, change)
      assert len({f.tobytes() for f in s[key]}) > len(frames) // 2


def test_scene_image_right_side_up(episodes):
  # Meta-World's corner cameras are rolled 180 degrees. Right side up, the top corners show the bright,
  # grey back wall and the bottom right the dark robot pedestal; upside down it is the other way round.
  k = SIZE // 8
  for _, s in episodes["train"] + episodes["val"]:
    first = s["image"][0].astype(np.float32)
    top_left, top_right, bottom_right = first[:k, :2 * k], first[:k, -2 * k:], first[-k:, -2 * k:]
    for patch in (top_left, top_right):
      colour = patch.mean((0, 1))
      assert colour.max() - colour.min() < 12, colour  # grey
    assert top_left.mean() > bottom_right.mean() + 30
    assert top_right.mean() > bottom_right.mean() + 30


def test_every_episode_succeeded_on_replay(episodes):
  # Independent of the builder's bookkeeping: replay the stored actions on the stored task variant.
  import metaworld  # pylint: disable=g-import-not-at-top
  for meta, s in episodes["train"] + episodes["val"]:
    assert meta["success"]
    assert meta["first_success_step"] == meta["num_steps"] - 1 - bm.BuildOptions().steps_after_success
    variant = metaworld.MT1(meta["task"], seed=int(meta["variant_seed"])).train_tasks[int(meta["variant_index"])]
    env = metaworld.env_dict.ALL_V3_ENVIRONMENTS[meta["task"]]()
    env.set_task(variant)
    obs, _ = env.reset()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      for t, action in enumerate(s["action"]):
        np.testing.assert_allclose(obs.astype(np.float32), s["env_state"][t], atol=1e-5)
        obs, reward, _, _, info = env.step(action)
        assert np.isclose(reward, s["reward"][t], atol=1e-4)
        if t == meta["first_success_step"]:
          assert info["success"]
    assert info["success"]
    env.close()


def test_rebuild_reuses_or_refuses(built):
  out, reports = built
  data_file = os.path.join(reports["metaworld_ml10_train"]["dir"], "dataset_info.json")
  mtime = os.path.getmtime(data_file)
  again = bm.build(out, "train", episodes_per_task=2, image_size=SIZE, tasks=TASKS, seed=0)
  assert again == reports
  assert os.path.getmtime(data_file) == mtime
  with pytest.raises(FileExistsError, match="overwrite"):
    bm.build(out, "train", episodes_per_task=2, image_size=SIZE, tasks=TASKS, seed=1)


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="drawer-open-v3"):
    bm.build(str(tmp_path), "train", tasks=["drawer-open-v3"])  # a held-out test class
  with pytest.raises(ValueError, match="split_set"):
    bm.build(str(tmp_path), "all")
  with pytest.raises(ValueError, match="image_size"):
    bm.build(str(tmp_path), "train", image_size=4)
  with pytest.raises(ValueError, match="scene_camera"):
    bm.build(str(tmp_path), "train", scene_camera="front")
  assert set(bm.TASK_INSTRUCTIONS) == set(bm.ML10_TRAIN_TASKS) | set(bm.ML10_TEST_TASKS)
