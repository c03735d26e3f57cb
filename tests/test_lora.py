"""LoRA on the Gemma projections (pi0_jax.model.lora): openpi's names, shapes and scales; merging; openpi layout."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_jax import weights
from pi0_jax.model import GEMMA_VARIANTS, Observation, Pi0, Pi0Config, get_preset, lora

import model_utils

DUMMY = GEMMA_VARIANTS["dummy"]
# Different ranks and scales per expert, one with rank-stabilised scaling, so a mix-up of the two shows.
CFG = get_preset("tiny", paligemma_variant=dataclasses.replace(DUMMY, lora_rank=4, lora_alpha=8.0),
                 action_expert_variant=dataclasses.replace(DUMMY, lora_rank=2, lora_alpha=3.0, lora_rslora=True))
BASE = get_preset("tiny")


@functools.lru_cache(maxsize=None)
def _jitted(config):
  """(init, loss) of `config`, compiled once per config for the whole file."""
  model = Pi0(config)
  loss = lambda p, o, a: model.apply({"params": p}, o, a, method="compute_loss", rng=jax.random.key(3))  # noqa: E731
  return jax.jit(model.init), jax.jit(loss)


def _init(config, seed=0, lora_std=None):
  """Params of `config`; with `lora_std` the factors are redrawn wider, so the adapters change outputs visibly."""
  params = _jitted(config)[0](jax.random.key(seed), Observation.fake(config, 1),
                              jnp.zeros((1, config.action_horizon, config.action_dim)))["params"]
  flat = weights.flatten(params)
  rng = np.random.default_rng(seed)
  for k, v in flat.items():
    if lora_std and "lora_" in k:
      flat[k] = jnp.asarray(rng.normal(0, lora_std, v.shape), v.dtype)
  return weights.unflatten(flat)


def _loss(config, params, obs):
  rng = np.random.default_rng(1)
  actions = jnp.asarray(rng.normal(size=(2, config.action_horizon, config.action_dim)), jnp.float32)
  return _jitted(config)[1](params, obs, actions)


def test_openpi_variants_and_scales():
  for name, base, rank in (("gemma_2b_lora", "gemma_2b", 16), ("gemma_300m_lora", "gemma_300m", 32)):
    cfg = GEMMA_VARIANTS[name]
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_rslora) == (rank, float(rank), False)
    assert dataclasses.replace(cfg, lora_rank=0, lora_alpha=1.0) == GEMMA_VARIANTS[base]
    assert lora.scale(cfg) == 1.0
  assert lora.scale(dataclasses.replace(DUMMY, lora_rank=4, lora_alpha=8.0)) == 2.0
  assert lora.scale(dataclasses.replace(DUMMY, lora_rank=4, lora_alpha=8.0, lora_rslora=True)) == 4.0
  pi0_lora = Pi0Config(paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora")
  assert lora.without_lora(pi0_lora) == Pi0Config()
  assert Pi0Config.from_dict(CFG.to_dict()) == CFG
  with pytest.raises(ValueError, match="lora_rank must be >= 0"):
    get_preset("tiny", paligemma_variant=dataclasses.replace(DUMMY, lora_rank=-1))


def test_tree_has_openpi_names_and_shapes():
  flat = {k: tuple(v.shape) for k, v in weights.flatten(weights.abstract_params(CFG)).items()}
  base = {k: tuple(v.shape) for k, v in weights.flatten(weights.abstract_params(BASE)).items()}
  added = {k[len("PaliGemma/llm/layers/"):]: s for k, s in flat.items() if k not in base}
  assert {k: s for k, s in flat.items() if k in base} == base
  d, w, f, n, h = 4, 64, 128, 8, 16  # depth, width, mlp_dim, heads, head_dim of "dummy"
  expected = {}
  for suffix, r in (("", 4), ("_1", 2)):
    expected.update({
        f"attn/q_einsum{suffix}/lora_a": (d, n, w, r), f"attn/q_einsum{suffix}/lora_b": (d, n, r, h),
        f"attn/kv_einsum{suffix}/lora_a": (d, 2, 1, w, r), f"attn/kv_einsum{suffix}/lora_b": (d, 2, 1, r, h),
        f"attn/attn_vec_einsum{suffix}/lora_a": (d, n, h, r), f"attn/attn_vec_einsum{suffix}/lora_b": (d, n, r, w),
        f"mlp{suffix}/gating_einsum_lora_a": (d, 2, w, r), f"mlp{suffix}/gating_einsum_lora_b": (d, 2, r, f),
        f"mlp{suffix}/linear_lora_a": (d, f, r), f"mlp{suffix}/linear_lora_b": (d, r, w)})
  assert added == expected


def test_factor_equations_follow_openpi():
  assert lora.factor_eqns("BTD,NDH->BTNH") == ("BTD,NDL->BTNL", "BTNL,NLH->BTNH")
  assert lora.factor_eqns("BSD,2KDH->2BSKH") == ("BSD,2KDL->2BSKL", "2BSKL,2KLH->2BSKH")
  assert lora.factor_eqns("BTNH,NHD->BTD") == ("BTNH,NHL->BTL", "BTL,NLD->BTD")
  with pytest.raises(ValueError, match="without the label 'L'"):
    lora.factor_eqns("BLD,DH->BLH")


@pytest.mark.parametrize("eqn,x_shape,w_shape", [
    ("BTD,NDH->BTNH", (2, 3, 6), (4, 6, 5)),
    ("BSD,2KDH->2BSKH", (2, 3, 6), (2, 1, 6, 5)),
    ("BTNH,NHD->BTD", (2, 3, 4, 5), (4, 5, 6)),  # the heads are summed in the first factor's einsum
    ("BTD,CDF->CBTF", (2, 3, 6), (2, 6, 7)),
    ("BTF,FD->BTD", (2, 3, 7), (7, 6)),
])
def test_delta_reproduces_the_adapter(eqn, x_shape, w_shape):
  rng = np.random.default_rng(0)
  shape_a, shape_b = lora.factor_shapes(w_shape, 3)
  x, a, b = (rng.normal(size=s) for s in (x_shape, shape_a, shape_b))
  want = lora.apply(eqn, jnp.asarray(x, jnp.float32), a, b, 0.7)
  got = jnp.einsum(eqn, x, lora.delta(eqn, a, b, 0.7))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A leading (layer) axis is a batch axis of the merge.
  stacked = lora.delta(eqn, np.stack([a, 2 * a]), np.stack([b, b]), 0.7)
  np.testing.assert_allclose(stacked[1], 2 * stacked[0], rtol=1e-6)


def test_merged_equals_unmerged():
  params = _init(CFG, lora_std=0.2)
  obs = model_utils.random_observation(CFG)
  unmerged = _loss(CFG, params, obs)
  merged_config = lora.without_lora(CFG)
  assert merged_config.gemma_configs == (DUMMY, DUMMY)
  merged = lora.merge_params(params, CFG)
  assert set(weights.flatten(merged)) == set(weights.flatten(weights.abstract_params(BASE)))
  np.testing.assert_allclose(_loss(merged_config, merged, obs), unmerged, rtol=1e-5, atol=1e-6)
  # The adapters matter: the base weights alone give another loss.
  base_only = weights.unflatten({k: v for k, v in weights.flatten(params).items() if "lora_" not in k})
  assert not np.allclose(_loss(BASE, base_only, obs), unmerged, rtol=1e-3)


def test_zero_adapters_give_the_base_model():
  params = _init(CFG)
  flat = weights.flatten(params)
  zeroed = weights.unflatten({k: jnp.zeros_like(v) if k.endswith("lora_b") else v for k, v in flat.items()})
  base_only = weights.unflatten({k: v for k, v in flat.items() if "lora_" not in k})
  obs = model_utils.random_observation(CFG)
  np.testing.assert_array_equal(_loss(CFG, zeroed, obs), _loss(BASE, base_only, obs))


def test_openpi_layout_round_trip(tmp_path):
  params = _init(CFG, seed=1)
  weights.save_openpi_params(params, tmp_path / "params")
  shapes = weights.check_openpi_params(tmp_path / "params", CFG)
  assert shapes["PaliGemma/llm/layers/mlp_1/gating_einsum_lora_b"] == (4, 2, 2, 128)
  loaded = weights.load_openpi_params(tmp_path / "params", CFG)
  for k, v in weights.flatten(params).items():
    np.testing.assert_array_equal(weights.flatten(loaded)[k], v)


def test_factor_init_and_merge_dtype():
  flat = weights.flatten(_init(CFG, seed=2))
  factors = np.concatenate([np.ravel(v) for k, v in flat.items() if "lora_" in k])
  assert abs(factors.std() - 0.01) < 0.001 and abs(factors.mean()) < 0.001  # openpi's normal(0.01), both factors
  bf16 = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), _init(CFG, seed=2))
  merged = weights.flatten(lora.merge_params(bf16, CFG))
  assert {v.dtype for v in merged.values()} == {np.dtype(jnp.bfloat16)}
  want = lora.merge_params(jax.tree.map(lambda x: np.asarray(x, np.float32), bf16), CFG)
  for k, v in weights.flatten(want).items():
    np.testing.assert_array_equal(merged[k], v.astype(jnp.bfloat16), err_msg=k)
