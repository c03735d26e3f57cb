"""Hosts and devices: disjoint per-process reading, local batch sizes, global sharded arrays."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import test_data_helpers as helpers
from pi0_jax.data import hosts, pipeline, rlds


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("hosts")
  return helpers.write(root, "pi0_test_hosts", [helpers.marked_episode(4, i) for i in range(7)]), root


@pytest.mark.parametrize("count", [2, 3])
def test_process_splits_are_disjoint_and_cover_the_split(dataset, count):
  d, _ = dataset
  builder = rlds.open_builder("hosts", dir=d)
  parts = []
  for index in range(count):
    split = rlds.process_split(builder, "hosts", "train", index, count)
    ds = rlds.read_episodes(builder, split, shuffle_seed=None)
    parts.append({e["tfds_id"].decode() for e in ds.as_numpy_iterator()})
  everything = {e["tfds_id"].decode() for e in rlds.read_episodes(builder, "train", shuffle_seed=None)
                .as_numpy_iterator()}
  assert len(everything) == 7
  assert set().union(*parts) == everything
  assert sum(len(p) for p in parts) == 7  # Disjoint.
  assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_two_processes_stream_disjoint_episodes(dataset, tmp_path):
  """The whole pipeline run as process 0 and 1 of 2: each sees only its episodes, together all of them."""
  d, _ = dataset
  config = helpers.tiny_config()
  seen = []
  for index in range(2):
    data = pipeline.make_train_data(helpers.data_config({"hosts": d}, tmp_path / "stats", augment=False), config,
                                    global_batch=8, process_index=index, process_count=2, seed=1,
                                    tokenize_fn=helpers.fake_tokenize(config.max_token_len))
    batches = [data.next_host_batch() for _ in range(12)]
    assert batches[0]["actions"].shape[0] == 4  # Local batch: 8 / 2.
    seen.append(helpers.episode_markers(batches, data.plans[0].norm_stats["state"]))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(7))


def test_global_arrays_over_mesh_axes(dataset, tmp_path):
  d, _ = dataset
  config = helpers.tiny_config()
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  cfg = helpers.data_config({"hosts": d}, tmp_path / "stats")
  make = lambda **kw: pipeline.make_train_data(cfg, config, global_batch=8, seed=3,  # noqa: E731
                                               tokenize_fn=helpers.fake_tokenize(config.max_token_len), **kw)
  host = make().next_host_batch()
  device = make(mesh=mesh, data_axes=("data", "fsdp")).next_batch()
  want = NamedSharding(mesh, P(("data", "fsdp")))
  for path, leaf in jax.tree_util.tree_flatten_with_path(device)[0]:
    assert isinstance(leaf, jax.Array), path
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), path
    assert leaf.shape[0] == 8 and len(leaf.addressable_shards) == 8, path
  # Equal, images to within an ulp: on the devices x / 127.5 may become x * (1 / 127.5).
  jax.tree.map(lambda h, g: np.testing.assert_allclose(h, np.asarray(g), rtol=0, atol=1.5e-7), host, device)
  device["observation"].validate(config)


def test_batch_size_checks():
  assert hosts.local_batch_size(32, 4) == 8
  with pytest.raises(ValueError, match="not divisible by the process count"):
    hosts.local_batch_size(30, 4)
  with pytest.raises(ValueError, match="process_index 2"):
    hosts.process_info(2, 2)
