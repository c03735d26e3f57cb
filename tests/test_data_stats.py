"""Normalisation statistics: equal to numpy's over the training split only; cached by identity, not path."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import test_data_helpers as helpers
from pi0_jax.data import normalize, pipeline, rlds, specs, stats


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("stats")
  train = [helpers.marked_episode(n, i) for i, n in enumerate((6, 7, 9))]
  val = [helpers.marked_episode(5, 90 + i, action_offset=100.0) for i in range(2)]
  return helpers.write(root, "pi0_test_stats", train, val), train, val, root


def _numpy_stats(x):
  return {"mean": x.mean(0), "std": x.std(0), "q01": np.quantile(x, 0.01, axis=0),
          "q99": np.quantile(x, 0.99, axis=0), "min": x.min(0), "max": x.max(0)}


def test_stats_equal_numpy_over_train_only(dataset, tmp_path):
  d, train, val, _ = dataset
  config = helpers.tiny_config()
  data = pipeline.make_train_data(helpers.data_config({"s": d}, tmp_path / "cache"), config, global_batch=4,
                                  tokenize_fn=helpers.fake_tokenize(config.max_token_len))
  got = data.plans[0].norm_stats
  for key, source in (("actions", "action"), ("state", None)):
    x = np.concatenate([ep["action"] if source else ep["observation"]["state"] for ep in train])
    want = _numpy_stats(x.astype(np.float64))
    assert got[key]["count"] == 6 + 7 + 9
    for name, value in want.items():
      np.testing.assert_allclose(got[key][name], value, rtol=1e-6, atol=1e-6, err_msg=f"{key}/{name}")
  assert max(got["actions"]["max"]) < 50  # The validation split's actions are all above 99.
  data.write_assets(str(tmp_path / "assets"))  # What travels with a checkpoint: SPEC's format.
  assets = json.loads((tmp_path / "assets" / "norm_stats.json").read_text())
  assert assets["norm_stats"] == got and assets["datasets"]["s"]["norm_stats"] == got
  val_record = stats.load_or_scan(data.plans[0].builder, "s", specs.METAWORLD, "val", cache_dir=tmp_path / "cache")
  assert min(val_record["norm_stats"]["actions"]["min"]) > 90 and val_record["frames"] == 10

  # The eval pipeline over "val" still normalises with the training statistics.
  eval_data = pipeline.make_eval_data(helpers.data_config({"s": d}, tmp_path / "cache"), config, global_batch=5,
                                      tokenize_fn=helpers.fake_tokenize(config.max_token_len))
  assert eval_data.plans[0].norm_stats == got
  actions = eval_data.next_host_batch()["actions"][:, 0, :4]
  raw = np.concatenate([ep["action"] for ep in val])[:5]
  mean, std = np.array(got["actions"]["mean"]), np.array(got["actions"]["std"])
  np.testing.assert_allclose(actions, (raw - mean) / (std + 1e-6), rtol=1e-5)


def test_cache_key_is_identity_not_path(dataset, tmp_path, monkeypatch):
  d, *_ = dataset
  cache = tmp_path / "cache"
  first = stats.load_or_scan(rlds.open_builder("s", dir=d), "s", specs.METAWORLD, cache_dir=cache)
  moved = tmp_path / "elsewhere" / "pi0_test_stats" / "1.0.0"
  shutil.copytree(d, moved)

  def no_scan(*a, **k):
    raise AssertionError("rescanned a dataset whose statistics are cached")

  monkeypatch.setattr(stats, "scan", no_scan)
  assert stats.load_or_scan(rlds.open_builder("s", dir=str(moved)), "s", specs.METAWORLD, cache_dir=cache) == first
  other_spec = dataclasses.replace(specs.METAWORLD, unnormalized_action_dims=(3,))
  assert other_spec.fingerprint() != specs.METAWORLD.fingerprint()
  with pytest.raises(AssertionError, match="rescanned"):
    stats.load_or_scan(rlds.open_builder("s", dir=str(moved)), "s", other_spec, cache_dir=cache)
  assert len(os.listdir(cache)) == 1


def test_command_line(dataset, tmp_path):
  d, train, *_ = dataset
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  run = lambda *args: subprocess.run([sys.executable, "-m", "pi0_jax.data.stats", *args], env=env,  # noqa: E731
                                     capture_output=True, text=True, timeout=120)
  helped = run("--help")
  assert "--dataset_dir" in helped.stdout and "--out" in helped.stdout  # (absl exits 1 after --help)
  out = tmp_path / "norm_stats.json"
  done = run(f"--dataset_dir={d}", f"--spec={helpers.SPEC}", f"--out={out}", f"--cache_dir={tmp_path / 'c'}")
  assert done.returncode == 0, done.stderr[-2000:]
  record = json.loads(out.read_text())
  actions = np.concatenate([ep["action"] for ep in train]).astype(np.float64)
  np.testing.assert_allclose(record["norm_stats"]["actions"]["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-6)
  assert set(record["norm_stats"]) == {"state", "actions"} and record["split"] == "train"
  assert set(stats.STAT_KEYS) <= set(record["norm_stats"]["state"])


def test_normalize_modes_and_unnormalised_dims():
  s = {"mean": np.array([1.0, 0.0]), "std": np.array([2.0, 1.0]), "q01": np.array([-1.0, 0.0]),
       "q99": np.array([3.0, 10.0])}
  x = np.array([[5.0, 20.0], [1.0, 5.0]], np.float32)
  skip = normalize.skip_mask(2, [1])
  z = normalize.normalize_np(x, s, "zscore", skip)
  np.testing.assert_allclose(z, [[4 / (2 + 1e-6), 20.0], [0.0, 5.0]], rtol=1e-6)
  q = normalize.normalize_np(x, s, "quantile")
  np.testing.assert_allclose(q, [[1.0, 1.0], [0.0, 0.0]], atol=1e-5)  # 5 and 20 lie above q99: clipped.
  np.testing.assert_allclose(normalize.normalize_tf(tf.constant(x), s, "zscore", skip).numpy(), z, rtol=1e-6)
  np.testing.assert_allclose(normalize.normalize_tf(tf.constant(x), s, "quantile").numpy(), q, rtol=1e-6)
  np.testing.assert_allclose(normalize.unnormalize_np(z, s, "zscore", skip), x, rtol=1e-6)
  inside = np.array([[0.0, 2.0]], np.float32)
  np.testing.assert_allclose(normalize.unnormalize_np(normalize.normalize_np(inside, s, "quantile"), s, "quantile"),
                             inside, atol=1e-5)
  with pytest.raises(ValueError, match="norm_mode"):
    normalize.normalize_np(x, s, "minmax")
