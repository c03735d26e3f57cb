"""Checkpoint import/export: PaliGemma big_vision `.npz` and openpi's Orbax params (pi0_jax.weights)."""

import os
import pathlib
import re
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pi0_jax import weights
from pi0_jax.model import Observation, Pi0, get_preset

import model_utils

CFG = get_preset("tiny")
TREE_FILE = pathlib.Path(__file__).parent / "data" / "pi0_param_tree.txt"
PALIGEMMA_3B_PARAMS = 2_923_335_408


_INIT = jax.jit(Pi0(CFG).init)


def _init(seed):
  variables = _INIT(jax.random.key(seed), Observation.fake(CFG, 1), jnp.zeros((1, CFG.action_horizon, CFG.action_dim)))
  return weights.flatten(variables["params"])


def _is_paligemma(path):
  # Written out independently of weights.is_paligemma_path: SigLIP, and llm modules without an `_1` suffix.
  return path.startswith("PaliGemma/img/") or (path.startswith("PaliGemma/llm/") and not re.search(r"_1(/|$)", path))


@pytest.fixture(scope="module")
def flat_params():
  """Initialised params plus noise, so no leaf is zero or exactly representable in bfloat16."""
  rng = np.random.default_rng(0)
  return {k: v + jnp.asarray(rng.normal(0, 0.02, v.shape), v.dtype) for k, v in _init(0).items()}


@pytest.fixture(scope="module")
def fresh_init():
  """What `load_paligemma_npz(..., rng=key(1))` must give the action expert and heads."""
  return _init(1)


@pytest.fixture(scope="module")
def obs():
  return model_utils.random_observation(CFG, batch_size=2, seed=3)


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.array(jax.devices()[:8]), ("x",))


@jax.jit
def _sample(params, obs, noise):
  return Pi0(CFG).apply({"params": params}, obs, method="sample_actions", noise=noise)


@jax.jit
def _loss(params, obs, actions, noise, time):
  return Pi0(CFG).apply({"params": params}, obs, actions, method="compute_loss", noise=noise, time=time)


def _headers(path):
  """{member name: (shape, dtype)} read with zipfile + numpy only, independent of the module under test."""
  out = {}
  with zipfile.ZipFile(path) as zf:
    for name in zf.namelist():
      with zf.open(name) as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
      out[name] = (shape, dtype)
  return out


def _write_npz(path, arrays):
  """A raw .npz, written the way numpy does (for files save_paligemma_npz would never write)."""
  np.savez(path, **arrays)
  return path


def _write_header_only_npz(path, shapes, dtype=np.dtype("V2")):
  """An .npz whose members carry .npy headers but no data: enough for anything that only reads headers."""
  with zipfile.ZipFile(path, "w") as zf:
    for key, shape in shapes.items():
      with zf.open(key + ".npy", "w") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
  return path


def _round_bf16(x):
  return np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32)


def _sharding_for(mesh):
  """Split the leading axis over the 8 devices where it divides, replicate otherwise."""
  return lambda path, shape: NamedSharding(mesh, P("x") if shape and shape[0] % 8 == 0 else P())


# --- PaliGemma .npz -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,prefix", [("bfloat16", "params/"), ("bfloat16", ""), ("float32", "params/"),
                                          ("float32", "")])
def test_npz_round_trip(tmp_path, flat_params, fresh_init, obs, dtype, prefix):
  path = str(tmp_path / "paligemma.npz")
  keys = weights.save_paligemma_npz(weights.unflatten(flat_params), path, dtype=dtype, prefix=prefix)

  # The file is big_vision's layout: SigLIP + expert 0 only, prefixed keys, bfloat16 as 2-byte void.
  expected_keys = {prefix + k[len("PaliGemma/"):] for k in flat_params if _is_paligemma(k)}
  assert len(expected_keys) == 32
  assert set(keys) == expected_keys
  headers = _headers(path)
  assert set(headers) == {k + ".npy" for k in expected_keys}
  stored = {"bfloat16": "|V2", "float32": "<f4"}[dtype]
  for name, (shape, file_dtype) in headers.items():
    assert file_dtype.str == stored, name
    assert name.startswith(prefix + "img/") or name.startswith(prefix + "llm/"), name
    assert shape == flat_params["PaliGemma/" + name[len(prefix):-len(".npy")]].shape
  with np.load(path, allow_pickle=False) as npz:
    head = npz[prefix + "img/head/kernel"]
    if dtype == "bfloat16":
      assert head.dtype == np.dtype("V2")
      head = head.view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(head, _round_bf16(flat_params["PaliGemma/img/head/kernel"])
                                  if dtype == "bfloat16" else flat_params["PaliGemma/img/head/kernel"])

  loaded = weights.flatten(weights.load_paligemma_npz(path, CFG, rng=jax.random.key(1)))
  assert set(loaded) == set(flat_params)
  rounding = _round_bf16 if dtype == "bfloat16" else np.asarray
  reference = {}
  for k, v in loaded.items():
    assert v.dtype == jnp.float32, k
    if _is_paligemma(k):
      reference[k] = rounding(flat_params[k])
      np.testing.assert_array_equal(np.asarray(v), reference[k], err_msg=k)
    else:
      # The action expert and heads come from the rng, exactly as init would make them.
      reference[k] = np.asarray(fresh_init[k])
      np.testing.assert_array_equal(np.asarray(v), reference[k], err_msg=k)
      assert not np.allclose(np.asarray(v), np.asarray(flat_params[k])), k
  if dtype == "bfloat16":
    assert not np.array_equal(np.asarray(loaded["PaliGemma/img/head/kernel"]),
                              np.asarray(flat_params["PaliGemma/img/head/kernel"]))

  noise = jax.random.normal(jax.random.key(7), (2, CFG.action_horizon, CFG.action_dim))
  got = _sample(weights.unflatten(loaded), obs, noise)
  want = _sample(weights.unflatten({k: jnp.asarray(v) for k, v in reference.items()}), obs, noise)
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  actions, time = jnp.ones_like(noise) * 0.3, jnp.array([0.2, 0.9])
  np.testing.assert_array_equal(
      np.asarray(_loss(weights.unflatten(loaded), obs, actions, noise, time)),
      np.asarray(_loss(weights.unflatten({k: jnp.asarray(v) for k, v in reference.items()}), obs, actions, noise,
                       time)))


def test_npz_load_onto_shardings_and_dtype(tmp_path, flat_params, fresh_init, mesh):
  path = weights.save_paligemma_npz(weights.unflatten(flat_params), str(tmp_path / "p.npz")) and str(
      tmp_path / "p.npz")
  abstract = weights.flatten(weights.abstract_params(CFG))
  sharding_for = _sharding_for(mesh)
  want_sharding = {k: sharding_for(k, v.shape) for k, v in abstract.items()}

  # A tree of shardings, as the trainer would pass.
  loaded = weights.flatten(weights.load_paligemma_npz(path, CFG, rng=jax.random.key(1),
                                                      shardings=weights.unflatten(want_sharding)))
  # A callable path -> sharding, and every leaf in bfloat16.
  loaded_bf16 = weights.flatten(weights.load_paligemma_npz(
      path, CFG, rng=1, shardings=lambda p: want_sharding[p], dtype="bfloat16"))
  assert any(s.spec == P("x") for s in want_sharding.values())
  for k in abstract:
    source = _round_bf16(flat_params[k]) if _is_paligemma(k) else np.asarray(fresh_init[k])
    for tree, dtype in ((loaded, jnp.float32), (loaded_bf16, jnp.bfloat16)):
      assert tree[k].dtype == dtype, k
      assert tree[k].sharding.is_equivalent_to(want_sharding[k], tree[k].ndim), k
      np.testing.assert_array_equal(np.asarray(tree[k].astype(jnp.float32)),
                                    np.asarray(jnp.asarray(source).astype(dtype).astype(jnp.float32)), err_msg=k)


def test_npz_reads_and_places_one_array_at_a_time(tmp_path, flat_params, monkeypatch):
  path = str(tmp_path / "p.npz")
  weights.save_paligemma_npz(weights.unflatten(flat_params), path)
  events = []
  read, put = np.lib.npyio.NpzFile.__getitem__, jax.device_put
  monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: events.append("read") or read(self, key))
  monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: events.append("put") or put(x, *a, **k))
  weights.load_paligemma_npz(path, CFG, rng=jax.random.key(1))
  # Each array is placed before the next one is read, so at most one host copy exists at a time.
  assert events == ["read", "put"] * 32


def test_npz_mismatch_names_every_key_and_both_shapes_before_reading(tmp_path, flat_params, monkeypatch):
  arrays = {"params/" + k[len("PaliGemma/"):]: np.asarray(v) for k, v in flat_params.items() if _is_paligemma(k)}
  want_shape = arrays["params/img/head/kernel"].shape
  bad_shape = (want_shape[0], want_shape[1] - 1)
  arrays["params/img/head/kernel"] = np.zeros(bad_shape, np.float32)
  del arrays["params/llm/final_norm/scale"]
  arrays["params/llm/layers/attn/q_einsum_1/w"] = np.asarray(flat_params["PaliGemma/llm/layers/attn/q_einsum_1/w"])
  arrays["params/img/bogus"] = np.zeros((3,), np.float32)
  path = _write_npz(str(tmp_path / "bad.npz"), arrays)

  # Nothing may be read or initialised before the tree is checked.
  def forbidden(*args, **kwargs):
    raise AssertionError("array data read (or init run) before the tree was checked")

  monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", forbidden)
  monkeypatch.setattr(np.lib.format, "read_array", forbidden)
  monkeypatch.setattr(weights, "init_subset_fn", forbidden)
  with pytest.raises(weights.ParamTreeMismatchError) as info:
    weights.load_paligemma_npz(path, CFG, rng=jax.random.key(1))
  err = info.value
  assert isinstance(err, ValueError)
  message = str(err)
  assert path in message
  assert err.mismatched == {"PaliGemma/img/head/kernel": (want_shape, bad_shape)}
  assert re.search(rf"PaliGemma/img/head/kernel.*expected {re.escape(str(want_shape))}, found "
                   rf"{re.escape(str(bad_shape))}", message)
  assert err.missing == ["PaliGemma/llm/final_norm/scale"]
  assert "missing: PaliGemma/llm/final_norm/scale" in message
  assert err.unexpected == ["params/img/bogus", "params/llm/layers/attn/q_einsum_1/w"]
  assert "unexpected: params/img/bogus" in message
  assert "unexpected: params/llm/layers/attn/q_einsum_1/w" in message


def test_npz_single_wrong_shape_without_prefix(tmp_path, flat_params):
  arrays = {k[len("PaliGemma/"):]: np.asarray(v) for k, v in flat_params.items() if _is_paligemma(k)}
  arrays["llm/layers/mlp/linear"] = arrays["llm/layers/mlp/linear"][:, :-1]
  path = _write_npz(str(tmp_path / "bad.npz"), arrays)
  with pytest.raises(weights.ParamTreeMismatchError) as info:
    weights.load_paligemma_npz(path, CFG, rng=0)
  want = tuple(flat_params["PaliGemma/llm/layers/mlp/linear"].shape)
  got = arrays["llm/layers/mlp/linear"].shape
  assert info.value.mismatched == {"PaliGemma/llm/layers/mlp/linear": (want, got)}
  assert not info.value.missing and not info.value.unexpected
  assert f"'llm/layers/mlp/linear'): expected {want}, found {got}" in str(info.value)


def test_npz_bad_dtype_duplicate_and_non_array_members(tmp_path, flat_params):
  arrays = {"params/" + k[len("PaliGemma/"):]: np.asarray(v) for k, v in flat_params.items() if _is_paligemma(k)}
  arrays["params/img/head/bias"] = arrays["params/img/head/bias"].astype(np.int32)
  arrays["img/head/kernel"] = arrays["params/img/head/kernel"]  # Both spellings of one key.
  path = _write_npz(str(tmp_path / "odd.npz"), arrays)
  with zipfile.ZipFile(path, "a") as zf:
    zf.writestr("README.txt", "not an array")
  with pytest.raises(weights.ParamTreeMismatchError) as info:
    weights.check_paligemma_npz(path, CFG)
  assert info.value.bad_dtypes == {"PaliGemma/img/head/bias": np.dtype("int32")}
  assert sorted(info.value.unexpected) == ["README.txt", "img/head/kernel"]
  assert "unsupported dtype: PaliGemma/img/head/bias" in str(info.value)


def test_npz_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    weights.load_paligemma_npz(str(tmp_path / "nope.npz"), CFG, rng=0)


def test_check_tree_lists_everything():
  with pytest.raises(weights.ParamTreeMismatchError) as info:
    weights.check_tree({"a": (1, 2), "b": (3,), "x": (1,)}, {"a": (1, 3), "b": (3,), "c": (4,)}, "ckpt.npz")
  err = info.value
  assert (err.missing, err.unexpected, err.mismatched) == (["c"], ["x"], {"a": ((1, 3), (1, 2))})
  assert str(err).splitlines()[0].startswith("ckpt.npz does not fit")
  assert "a: expected (1, 3), found (1, 2)" in str(err)
  weights.check_tree({"a": (1,)}, {"a": (1,)}, "ok")


# --- openpi Orbax params ------------------------------------------------------------------------------------


def test_openpi_round_trip_value_wrapped_and_sharded(tmp_path, flat_params, mesh):
  params = weights.unflatten(flat_params)
  weights.save_openpi_params(params, str(tmp_path / "plain"))
  # openpi's nnx.State layout: every leaf under an extra `value` key, in `<step>/params`.
  wrapped = weights.unflatten({k + "/value": v for k, v in flat_params.items()})
  weights.save_openpi_params({"params": wrapped}, str(tmp_path / "step" / "params"))

  sharding_for = _sharding_for(mesh)
  shardings = weights.unflatten({k: sharding_for(k, v.shape) for k, v in flat_params.items()})
  for directory in (tmp_path / "plain", tmp_path / "step" / "params", tmp_path / "step"):
    as_numpy = weights.flatten(weights.load_openpi_params(str(directory)))
    checked = weights.flatten(weights.load_openpi_params(str(directory), CFG))
    sharded = weights.flatten(weights.load_openpi_params(str(directory), CFG, shardings=shardings))
    assert set(as_numpy) == set(checked) == set(sharded) == set(flat_params)
    for k, v in flat_params.items():
      assert isinstance(as_numpy[k], np.ndarray), k
      np.testing.assert_array_equal(as_numpy[k], np.asarray(v), err_msg=k)
      np.testing.assert_array_equal(np.asarray(checked[k]), np.asarray(v), err_msg=k)
      assert isinstance(sharded[k], jax.Array)
      assert sharded[k].sharding.is_equivalent_to(sharding_for(k, v.shape), v.ndim), k
      np.testing.assert_array_equal(np.asarray(sharded[k]), np.asarray(v), err_msg=k)

  bf16 = weights.flatten(weights.load_openpi_params(str(tmp_path / "step"), CFG, dtype="bfloat16",
                                                    shardings=NamedSharding(mesh, P())))
  key = "action_out_proj/kernel"
  assert bf16[key].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(bf16[key].astype(jnp.float32)), _round_bf16(flat_params[key]))


def test_openpi_params_load_into_model(tmp_path, flat_params, obs):
  weights.save_openpi_params({"params": weights.unflatten(flat_params)}, str(tmp_path / "ckpt"))
  loaded = weights.load_openpi_params(str(tmp_path / "ckpt"), CFG)
  noise = jax.random.normal(jax.random.key(5), (2, CFG.action_horizon, CFG.action_dim))
  np.testing.assert_array_equal(np.asarray(_sample(jax.tree.map(jnp.asarray, loaded), obs, noise)),
                                np.asarray(_sample(weights.unflatten(flat_params), obs, noise)))


def test_openpi_mismatch_is_reported_before_restoring(tmp_path, flat_params, monkeypatch):
  weights.save_openpi_params(weights.unflatten(flat_params), str(tmp_path / "ckpt"))
  other = get_preset("tiny", action_dim=7)
  import orbax.checkpoint as ocp
  monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", lambda *a, **k: pytest.fail("restored before checking"))
  with pytest.raises(weights.ParamTreeMismatchError) as info:
    weights.load_openpi_params(str(tmp_path / "ckpt"), other)
  width = CFG.gemma_configs[1].width
  assert info.value.mismatched == {
      "action_in_proj/kernel": ((7, width), (8, width)),
      "state_proj/kernel": ((7, width), (8, width)),
      "action_out_proj/kernel": ((width, 7), (width, 8)),
      "action_out_proj/bias": ((7,), (8,)),
  }
  assert f"action_in_proj/kernel: expected (7, {width}), found (8, {width})" in str(info.value)
  assert str(tmp_path / "ckpt") in str(info.value)


# --- full size, from shapes alone -----------------------------------------------------------------------------


def _published_tree():
  out = {}
  for line in TREE_FILE.read_text().splitlines():
    name, shape = line.split()
    out[name] = tuple(int(s) for s in shape.split(","))
  return out


@pytest.fixture(scope="module")
def full_abstract():
  return weights.abstract_params(get_preset("pi0"))


def test_full_size_paligemma_layout(full_abstract):
  published = _published_tree()
  npz_shapes = weights.paligemma_npz_shapes(full_abstract)
  want = {"params/" + k[len("PaliGemma/"):]: s for k, s in published.items() if _is_paligemma(k)}
  assert npz_shapes == want
  assert len(npz_shapes) == 32
  assert sum(int(np.prod(s)) for s in npz_shapes.values()) == PALIGEMMA_3B_PARAMS
  initialised = {k for k in weights.flatten(full_abstract) if not weights.is_paligemma_path(k)}
  assert initialised == {k for k in published if not _is_paligemma(k)}
  assert len(initialised) == 18
  assert {weights.npz_key_to_path(k) for k in npz_shapes} | initialised == set(published)


def test_full_size_npz_checks_from_headers_alone(tmp_path, full_abstract):
  # A header-only file with the real names and shapes: 11.7 GB of arrays described in a few kB.
  path = _write_header_only_npz(str(tmp_path / "paligemma-3b-pt-224.npz"),
                                weights.paligemma_npz_shapes(full_abstract))
  assert os.path.getsize(path) < 100_000
  keys = weights.check_paligemma_npz(path, get_preset("pi0"))
  assert len(keys) == 32
  summary = weights.check_main(npz=path, openpi=None, config_preset="pi0")
  assert "32 arrays, 2,923,335,408 parameters (bfloat16)" in summary
  assert "18 arrays" in summary


def test_full_size_init_of_the_rest_never_materialises_paligemma():
  config = get_preset("pi0")
  rest = tuple(k for k in weights.flatten(weights.abstract_params(config)) if not weights.is_paligemma_path(k))
  compiled = weights.init_subset_fn(config, rest).lower(jax.random.key(0)).compile()
  stats = compiled.memory_analysis()
  if stats is None:
    pytest.skip("no memory analysis on this backend")
  rest_bytes = 4 * sum(int(np.prod(v.shape)) for k, v in weights.flatten(weights.abstract_params(config)).items()
                       if k in rest)
  # The outputs are the 18 initialised leaves (plus a few bytes of tuple bookkeeping) ...
  assert rest_bytes <= stats.output_size_in_bytes < rest_bytes + 4096
  # ... and the scratch space is far below the 11.7 GB that the PaliGemma part alone would take in float32.
  assert stats.temp_size_in_bytes < 2e9


# --- command line -----------------------------------------------------------------------------------------------


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "pi0_jax.weights", *args], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_check(tmp_path, flat_params):
  good = str(tmp_path / "good.npz")
  weights.save_paligemma_npz(weights.unflatten(flat_params), good)
  bad = _write_header_only_npz(str(tmp_path / "bad.npz"), {"params/img/head/kernel": (3, 3)})
  result = _cli(f"--npz={good}", "--config_preset=tiny", "--check")
  assert result.returncode == 0, result.stderr
  assert "fits preset 'tiny': 32 arrays" in result.stdout
  result = _cli(f"--npz={bad}", "--config_preset=tiny", "--check")
  assert result.returncode == 1
  assert "shape mismatch: PaliGemma/img/head/kernel" in result.stderr
  assert "missing: PaliGemma/llm/final_norm/scale" in result.stderr
  usage = _cli("--help").stdout  # absl exits 1 after --help, so look at the text only.
  assert all(f"--{name}" in usage for name in ("npz", "openpi", "config_preset", "check"))
