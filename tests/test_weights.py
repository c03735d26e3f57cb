"""Checkpoint import/export: PaliGemma .npz (bf16 as |V2) and openpi's Orbax layout."""

import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pi0_jax import weights
from pi0_jax.model import Pi0, get_preset

import model_utils

CFG = model_utils.tiny_config()


@pytest.fixture(scope="module")
def params():
  return jax.device_get(model_utils.init_params(CFG)["params"])


def _sample(params, obs, noise):
  return np.asarray(Pi0(CFG).apply({"params": params}, obs, method="sample_actions", noise=noise))


def test_npz_round_trip_bf16_with_prefix(tmp_path, params):
  path = str(tmp_path / "pg.npz")
  keys = weights.save_paligemma_npz(params, path)
  assert all(k.startswith("params/img/") or k.startswith("params/llm/") for k in keys)
  with np.load(path, allow_pickle=False) as npz:
    assert npz["params/llm/embedder/input_embedding"].dtype == np.dtype("V2")
    assert "params/llm/layers/attn/q_einsum_1/w" not in npz.files and "params/action_in_proj/kernel" not in npz.files
  loaded = weights.load_paligemma_npz(path, CFG, rng=jax.random.key(1))
  flat, orig = weights.flatten(loaded), weights.flatten(params)
  assert set(flat) == set(orig)
  for k, v in orig.items():
    assert flat[k].dtype == jnp.float32 and flat[k].shape == v.shape, k
    if weights.is_paligemma_path(k):
      np.testing.assert_array_equal(np.asarray(flat[k]), v.astype(ml_dtypes.bfloat16).astype(np.float32), err_msg=k)
  # The action expert and heads come from the rng.
  assert not np.array_equal(np.asarray(flat["action_out_proj/kernel"]), orig["action_out_proj/kernel"])
  assert not np.array_equal(np.asarray(flat["PaliGemma/llm/layers/attn/q_einsum_1/w"]),
                            orig["PaliGemma/llm/layers/attn/q_einsum_1/w"])
  # Outputs equal a model whose PaliGemma part was rounded the same way and whose rest is the loaded one.
  rounded = {k: (v.astype(ml_dtypes.bfloat16).astype(np.float32) if weights.is_paligemma_path(k)
                 else np.asarray(flat[k])) for k, v in orig.items()}
  obs = model_utils.random_observation(CFG, batch_size=2)
  noise = jax.random.normal(jax.random.key(2), (2, CFG.action_horizon, CFG.action_dim))
  np.testing.assert_array_equal(_sample(loaded, obs, noise), _sample(weights.unflatten(rounded), obs, noise))


def test_npz_round_trip_float32_without_prefix(tmp_path, params):
  path = str(tmp_path / "pg32.npz")
  weights.save_paligemma_npz(params, path, dtype=None, prefix="")
  with np.load(path, allow_pickle=False) as npz:
    assert "img/head/kernel" in npz.files and npz["img/head/kernel"].dtype == np.float32
  flat = weights.flatten(weights.load_paligemma_npz(path, CFG, rng=jax.random.key(1)))
  for k, v in weights.flatten(params).items():
    if weights.is_paligemma_path(k):
      np.testing.assert_array_equal(np.asarray(flat[k]), v, err_msg=k)


def _rewrite(src, dst, drop=(), add=None, reshape=None):
  with np.load(src, allow_pickle=False) as npz:
    arrays = {k: npz[k] for k in npz.files if k not in drop}
  if reshape:
    k, shape = reshape
    arrays[k] = np.zeros(shape, arrays[k].dtype)
  arrays.update(add or {})
  np.savez(dst, **arrays)


def test_npz_errors_name_keys_and_shapes_before_reading(tmp_path, params, monkeypatch):
  good = str(tmp_path / "good.npz")
  weights.save_paligemma_npz(params, good)
  bad = str(tmp_path / "bad.npz")
  _rewrite(good, bad, drop=["params/img/pos_embedding"], add={"params/llm/extra": np.zeros(3, np.float32)},
           reshape=("params/llm/layers/mlp/linear", (4, 100, 64)))
  reads = []
  original_load = np.load
  monkeypatch.setattr(np, "load", lambda *a, **k: reads.append(a) or original_load(*a, **k))
  with pytest.raises(weights.ParamTreeMismatchError) as err:
    weights.load_paligemma_npz(bad, CFG, rng=jax.random.key(0))
  message = str(err.value)
  assert "PaliGemma/llm/layers/mlp/linear: expected (4, 128, 64), found (4, 100, 64)" in message
  assert "missing key(s):\n    PaliGemma/img/pos_embedding" in message
  assert "unexpected key(s):\n    PaliGemma/llm/extra" in message
  assert bad in message
  assert not reads  # the check used the .npy headers only
  with pytest.raises(FileNotFoundError, match="nowhere.npz"):
    weights.load_paligemma_npz(str(tmp_path / "nowhere.npz"), CFG, rng=jax.random.key(0))


def test_npz_load_places_arrays_on_shardings(tmp_path, params):
  path = str(tmp_path / "pg.npz")
  weights.save_paligemma_npz(params, path)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("fsdp",))
  shard = lambda p: NamedSharding(mesh, P("fsdp") if p.endswith("embedder/input_embedding") else P())
  loaded = weights.load_paligemma_npz(path, CFG, rng=jax.random.key(1), shardings=shard)
  table = loaded["PaliGemma"]["llm"]["embedder"]["input_embedding"]
  assert table.sharding == NamedSharding(mesh, P("fsdp")) and len(table.addressable_shards) == 8
  assert loaded["action_out_proj"]["kernel"].sharding == NamedSharding(mesh, P())


def test_openpi_orbax_round_trip_with_value_suffix(tmp_path, params):
  plain = str(tmp_path / "plain")
  weights.save_openpi_params(params, plain)
  restored = weights.load_openpi_params(plain, CFG)
  for k, v in weights.flatten(params).items():
    np.testing.assert_array_equal(np.asarray(weights.flatten(restored)[k]), v, err_msg=k)
  # openpi's nnx.State saves put a trailing `value` on every path.
  nnx_style = str(tmp_path / "nnx")
  weights.save_openpi_params(weights.unflatten({k + "/value": v for k, v in weights.flatten(params).items()}),
                             nnx_style)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("fsdp",))
  shardings = jax.tree.map(lambda x: NamedSharding(mesh, P("fsdp") if x.shape[0] % 8 == 0 and x.ndim > 1 else P()),
                           params)
  restored = weights.load_openpi_params(nnx_style, CFG, shardings=shardings)
  table = restored["PaliGemma"]["llm"]["embedder"]["input_embedding"]
  assert table.sharding == NamedSharding(mesh, P("fsdp"))
  for k, v in weights.flatten(params).items():
    np.testing.assert_array_equal(np.asarray(weights.flatten(restored)[k]), v, err_msg=k)
  with pytest.raises(weights.ParamTreeMismatchError, match=r"action_in_proj/kernel: expected \(8, 32\), found \(8, 64\)"):
    weights.load_openpi_params(plain, CFG.replace(action_expert_variant=dict(width=32, depth=4, mlp_dim=64,
                                                                             num_heads=8, num_kv_heads=1,
                                                                             head_dim=16)))


def test_full_size_paligemma_part():
  flat = weights.flatten(weights.abstract_params(get_preset("pi0")))
  pali = {k: v.shape for k, v in flat.items() if weights.is_paligemma_path(k)}
  assert sum(int(np.prod(s)) for s in pali.values()) == 2_923_335_408
  assert len(pali) == 50 - 8 - 10  # minus the 8 action-expert leaves and the 10 pi0 head leaves
  assert all(weights.is_paligemma_path(weights._npz_key_to_path("params/" + k[len("PaliGemma/"):])) for k in pali)
