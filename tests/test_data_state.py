"""Iterator state: save after k batches, restore (also in a fresh process), the stream continues identically."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import test_data_helpers as helpers
from pi0_jax.data import pipeline

K = 3  # Batches taken before saving.


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("state")
  d = helpers.write(root, "pi0_test_state", [helpers.marked_episode(5 + i, i) for i in range(6)])
  return d, root


def _make(d, root, *, seed=5, workdir=None, **overrides):
  config = helpers.tiny_config()
  cfg = helpers.data_config({"state": d}, root / "stats", **{"augment": True, "shuffle_buffer": 12, **overrides})
  return pipeline.make_train_data(cfg, config, global_batch=4, seed=seed, workdir=workdir,
                                  tokenize_fn=helpers.fake_tokenize(config.max_token_len))


_RESTORE = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import test_data_helpers as helpers
    import test_data_state
    data = test_data_state._make(sys.argv[2], __import__("pathlib").Path(sys.argv[3]))
    data.restore_state(sys.argv[4])
    batches = [helpers.flatten_batch(data.next_host_batch()) for _ in range(3)]
    np.savez(sys.argv[5], **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
    print("restored at batch", data.batches)
    """)


def test_restore_in_a_fresh_process(dataset, tmp_path):
  d, root = dataset
  data = _make(d, root)
  for _ in range(K):
    data.next_host_batch()
  data.save_state(str(tmp_path / "iter"))
  expected = [helpers.flatten_batch(data.next_host_batch()) for _ in range(3)]

  out = tmp_path / "restored.npz"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", _RESTORE, os.path.dirname(__file__), d, str(root),
                         str(tmp_path / "iter"), str(out)], env=env, capture_output=True, text=True, timeout=150)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"restored at batch {K + 3}" in done.stdout
  got = np.load(out)
  for i, batch in enumerate(expected):
    for k, v in batch.items():
      np.testing.assert_array_equal(got[f"{i}/{k}"], v, err_msg=f"batch {K + i}, {k}")
  # Augmented images are part of what must match: make sure the test would see a difference.
  assert not np.array_equal(expected[0]["['observation'].images['base_0_rgb']"],
                            expected[1]["['observation'].images['base_0_rgb']"])


@pytest.mark.parametrize("mode", ["checkpoint", "replay"])
def test_trainer_state_and_restore(dataset, tmp_path, mode):
  d, root = dataset
  data = _make(d, root, workdir=str(tmp_path), iterator_state=mode, keep_iterator_states=2)
  states = []
  for _ in range(4):
    data.next_host_batch()
    states.append(data.state())
  json.dumps(states)  # Goes into the trainer's JSON checkpoint metadata.
  expected = [data.next_host_batch() for _ in range(2)]
  kept = sorted(os.listdir(tmp_path / "data_state" / "process_00000")) if mode == "checkpoint" else []
  assert kept == (["batch_000000000003", "batch_000000000004"] if mode == "checkpoint" else [])
  assert not (tmp_path / "data_state").exists() or mode == "checkpoint"

  fresh = _make(d, root, workdir=str(tmp_path), iterator_state=mode)
  fresh.restore(states[-1])
  assert fresh.batches == 4
  for want in expected:
    helpers.assert_batches_equal(fresh.next_host_batch(), want)


def test_missing_iterator_checkpoint_falls_back_to_replay(dataset, tmp_path):
  d, root = dataset
  data = _make(d, root, workdir=str(tmp_path), iterator_state="checkpoint")
  data.next_host_batch(), data.next_host_batch()
  state = data.state()
  want = data.next_host_batch()
  shutil.rmtree(tmp_path / "data_state")
  fresh = _make(d, root, workdir=str(tmp_path), iterator_state="checkpoint")
  fresh.restore(state)
  helpers.assert_batches_equal(fresh.next_host_batch(), want)


def test_refuses_a_different_stream(dataset, tmp_path):
  d, root = dataset
  data = _make(d, root)
  data.next_host_batch()
  data.save_state(str(tmp_path / "iter"))
  with pytest.raises(ValueError, match=r"different stream \(differs in \['seed'\]\)"):
    _make(d, root, seed=6).restore_state(str(tmp_path / "iter"))
  with pytest.raises(ValueError, match="different data stream"):
    _make(d, root, seed=6).restore(data.state())


def test_position_stays_small_and_resumes_with_a_buffer_larger_than_the_dataset(dataset, tmp_path):
  """The default position (seeds + frames to skip) holds no buffer; a fresh pipeline re-creates the stream
  and skips, also when the shuffle buffer (400 frames) holds the dataset (45 frames) about nine times over."""
  d, root = dataset
  data = _make(d, root, workdir=str(tmp_path), shuffle_buffer=400)
  assert data.report()[0]["frames"] == 45
  for _ in range(13):  # 52 frames: more than the dataset, drawn from a buffer holding ~9 passes over it.
    data.next_host_batch()
  state = data.state()
  assert state == {"batches": 13, "skip_frames": 52, "mode": "replay", "fingerprint": state["fingerprint"]}
  assert len(json.dumps(state)) < 200 and not (tmp_path / "data_state").exists()
  expected = [data.next_host_batch() for _ in range(12)]
  fresh = _make(d, root, workdir=str(tmp_path), shuffle_buffer=400)
  fresh.restore(json.loads(json.dumps(state)))
  for want in expected:
    helpers.assert_batches_equal(fresh.next_host_batch(), want)
