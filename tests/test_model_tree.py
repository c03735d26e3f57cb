"""The full pi0 parameter tree: names, shapes and counts from eval_shape (no memory used)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from pi0_jax.model import Observation, Pi0, Pi0Config, get_preset

TREE_FILE = pathlib.Path(__file__).parent / "data" / "pi0_param_tree.txt"


@pytest.fixture(scope="module")
def full_tree():
  cfg = get_preset("pi0")
  abstract = jax.eval_shape(Pi0(cfg).init, jax.random.key(0), Observation.fake(cfg, 1),
                            jnp.zeros((1, cfg.action_horizon, cfg.action_dim)))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract["params"], sep="/").items()}


def test_full_tree_matches_published_layout(full_tree):
  expected = {}
  for line in TREE_FILE.read_text().splitlines():
    name, shape = line.split()
    expected[name] = tuple(int(s) for s in shape.split(","))
  assert len(expected) == 50
  assert full_tree == expected


def test_full_parameter_counts(full_tree):
  count = lambda pred: sum(int(np.prod(s)) for k, s in full_tree.items() if pred(k))
  assert count(lambda k: True) == 3_238_048_528
  assert count(lambda k: k.startswith("PaliGemma/") and not _is_expert1(k)) == 2_923_335_408
  assert round(count(lambda k: k.startswith("PaliGemma/img/")) / 1e6, 2) == 414.80
  assert round(count(lambda k: "embedder" in k) / 1e6, 2) == 526.65
  assert round(count(lambda k: k.startswith("PaliGemma/llm/") and "embedder" not in k and not _is_expert1(k)) / 1e6,
               2) == 1981.88
  assert round(count(lambda k: k.startswith("PaliGemma/llm/") and _is_expert1(k)) / 1e6, 2) == 311.46
  assert round(count(lambda k: not k.startswith("PaliGemma/")) / 1e6, 2) == 3.25


def _is_expert1(path):
  # SigLIP's automatic names (LayerNorm_1, Dense_1) are not experts.
  return path.startswith("PaliGemma/llm/") and any(part.endswith("_1") for part in path.split("/"))


def test_config_rejects_experts_that_cannot_share_attention():
  with pytest.raises(ValueError, match="share depth"):
    Pi0Config(paligemma_variant="gemma_2b", action_expert_variant="dummy")
  with pytest.raises(ValueError, match="unknown variant 'gemma_7b'"):
    Pi0Config(paligemma_variant="gemma_7b")
  with pytest.raises(ValueError, match="not a multiple of the SigLIP patch size 14"):
    Pi0Config(image_resolution=100)


def test_config_explicit_sizes_round_trip():
  cfg = Pi0Config(siglip=dict(width=48, depth=1, mlp_dim=96, num_heads=4, patch_size=4), image_resolution=16,
                  paligemma_variant="dummy", action_expert_variant="dummy", action_dim=4, vocab_size=50)
  assert cfg.siglip_config.width == 48 and cfg.num_image_tokens == 16
  assert Pi0Config.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="explicit sizes need exactly the keys"):
    Pi0Config(siglip=dict(width=48))
