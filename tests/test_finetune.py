"""Fine-tuning: every `config.init` source (weights.load_init), the freezing presets, export's LoRA merge, and
configs/pi0_finetune.py end to end in the trainer (tiny configs; every file is written by the test)."""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import model_utils
from pi0_jax import export as export_lib, weights
from pi0_jax.model import GEMMA_VARIANTS, Pi0, get_preset, lora
from pi0_jax.train import checkpoint, defaults, optimizer, step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA_DUMMY = dataclasses.replace(GEMMA_VARIANTS["dummy"], lora_rank=4, lora_alpha=8.0)
CFG = get_preset("tiny", paligemma_variant=LORA_DUMMY, action_expert_variant=LORA_DUMMY)
BASE = get_preset("tiny")


def _optimizer_cfg(**changes):
  cfg = defaults.base_config().optimizer.to_dict()
  cfg.update(peak_lr=1e-2, warmup_steps=0, decay_steps=10, end_lr=1e-3, **changes)
  return cfg


def _lora_paths(config):
  return tuple(k for k in weights.flatten(weights.abstract_params(config)) if "lora_" in k)


def _assert_trees_equal(got, want):
  got, want = weights.flatten(got), weights.flatten(want)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A training workdir of the LoRA model: a real checkpoint (step 3, EMA kept), config.json and assets."""
  workdir = str(tmp_path_factory.mktemp("lora_run"))
  model = Pi0(CFG)
  tx, _ = optimizer.make_optimizer(_optimizer_cfg(), weights.abstract_params(CFG))
  state = jax.jit(lambda r: step_lib.init_state(model, tx, r, ema=True))(jax.random.key(0))
  rng = np.random.default_rng(0)  # Wide factors, so merging them shows.
  flat = {k: jnp.asarray(rng.normal(0, 0.2, v.shape), v.dtype) if "lora_" in k else v
          for k, v in weights.flatten(state["params"]).items()}
  state["params"] = weights.unflatten(flat)
  state["ema_params"] = jax.tree.map(lambda x: 0.5 * x, state["params"])
  ckpts = checkpoint.Checkpoints(workdir, async_save=False)
  ckpts.save(3, state, {"step": 3})
  ckpts.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"model": CFG.to_dict(), "data": {}}, f)
  os.makedirs(os.path.join(workdir, "assets"))
  with open(os.path.join(workdir, "assets", "norm_stats.json"), "w") as f:
    json.dump({}, f)
  with open(os.path.join(workdir, "assets", "tokenizer.model"), "wb") as f:
    f.write(b"not read by these tests")
  return {"workdir": workdir, "params": jax.device_get(state["params"]), "ema": jax.device_get(state["ema_params"])}


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  return export_lib.export(run["workdir"], str(tmp_path_factory.mktemp("export") / "out"))


def test_init_from_a_workdir(run):
  _assert_trees_equal(weights.load_init({"workdir": run["workdir"]}, CFG, rng=0), run["params"])
  _assert_trees_equal(weights.load_init({"workdir": run["workdir"], "ema": True}, CFG, rng=0), run["ema"])
  other = get_preset("tiny", paligemma_variant=dataclasses.replace(LORA_DUMMY, lora_rank=3),
                     action_expert_variant=LORA_DUMMY)
  with pytest.raises(weights.ParamTreeMismatchError, match=r"config.init.workdir .*checkpoints/3/state \[params\]"
                     r"(.|\n)*shape mismatch: PaliGemma/llm/layers/attn/q_einsum/lora_a: expected \(4, 8, 64, 3\), "
                     r"found \(4, 8, 64, 4\)"):
    weights.load_init({"workdir": run["workdir"]}, other, rng=0)


def test_export_merges_lora_and_a_lora_model_starts_from_it(run, exported):
  assert json.load(open(os.path.join(exported, "model_config.json"))) == lora.without_lora(CFG).to_dict()
  assert lora.without_lora(CFG).gemma_configs == BASE.gemma_configs
  merged = lora.merge_params(run["params"], CFG)
  _assert_trees_equal(weights.load_init({"export": exported}, BASE, rng=0), merged)
  # Into the LoRA model: the export's weights, and the factors exactly as a fresh init of the model gives them.
  loaded = weights.flatten(weights.load_init({"export": exported}, CFG, rng=5))
  fresh = weights.init_subset_fn(CFG, _lora_paths(CFG))(jax.random.key(5))
  _assert_trees_equal({k: v for k, v in loaded.items() if "lora_" not in k}, weights.flatten(merged))
  _assert_trees_equal({k: v for k, v in loaded.items() if "lora_" in k}, fresh)


def test_init_from_openpi_params_and_paligemma_npz(tmp_path):
  base = jax.device_get(model_utils.init_params(BASE, seed=3)["params"])
  weights.save_openpi_params(base, tmp_path / "openpi" / "params")
  for config in (BASE, CFG):
    loaded = weights.flatten(weights.load_init({"openpi_params": str(tmp_path / "openpi")}, config, rng=1))
    _assert_trees_equal({k: v for k, v in loaded.items() if "lora_" not in k}, weights.flatten(base))
    assert sum("lora_" in k for k in loaded) == len(_lora_paths(config))
  npz = str(tmp_path / "paligemma.npz")
  weights.save_paligemma_npz(base, npz, dtype=None)
  loaded = weights.flatten(weights.load_init({"paligemma_npz": npz}, CFG, rng=1))
  for k, v in weights.flatten(base).items():
    if weights.is_paligemma_path(k):
      np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  assert weights.load_init({"paligemma_npz": None, "export": ""}, CFG, rng=1) is None


def test_init_rejects_bad_sources(exported, tmp_path):
  with pytest.raises(ValueError, match=r"config.init: set at most one of .* got \['export', 'workdir'\]"):
    weights.load_init({"export": "a", "workdir": "b"}, CFG, rng=0)
  with pytest.raises(ValueError, match=r"unknown keys \['exprot'\]"):
    weights.load_init({"exprot": "a"}, CFG, rng=0)
  with pytest.raises(ValueError, match="config.init.ema applies to config.init.workdir only"):
    weights.load_init({"export": "a", "ema": True}, CFG, rng=0)
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    weights.load_init({"workdir": str(tmp_path)}, CFG, rng=0)
  with pytest.raises(ValueError, match="must be initialised: pass rng"):
    weights.load_params(os.path.join(exported, "params"), CFG, key=None, init_missing=lora.PATH_REGEX)


@pytest.fixture(scope="module")
def grads():
  """Gradients of the LoRA model's loss on one batch, at its init (one compile for all presets)."""
  model = Pi0(CFG)
  params = jax.device_get(model_utils.init_params(CFG, seed=1)["params"])
  obs = model_utils.random_observation(CFG, batch_size=2)
  actions = jnp.asarray(np.random.default_rng(0).normal(size=(2, CFG.action_horizon, CFG.action_dim)), jnp.float32)
  batch = {"observation": obs, "actions": actions, "action_pad_mask": jnp.ones((2, CFG.action_horizon), bool),
           "action_dim_mask": jnp.ones((2, CFG.action_dim), bool)}
  g = jax.jit(jax.grad(lambda p: step_lib.loss_sum(model, p, batch, jax.random.key(0))))(params)
  return params, jax.device_get(g)


@pytest.mark.parametrize("preset", ["full", "action_expert", "lora"])
def test_freezing_presets(preset, grads):
  params, g = grads
  tx, _ = optimizer.make_optimizer(_optimizer_cfg(trainable=preset), params)

  @jax.jit
  def update(opt_state, p):
    updates, opt_state = tx.update(g, opt_state, p)
    return opt_state, optax.apply_updates(p, updates)

  opt_state, new = tx.init(params), params
  for _ in range(2):
    opt_state, new = update(opt_state, new)
  before, after = weights.flatten(params), weights.flatten(jax.device_get(new))
  trained = {k for k in before if not np.array_equal(before[k], after[k])}
  expert1 = {k for k in before if k.startswith("PaliGemma/llm/") and any(p.endswith("_1") for p in k.split("/"))}
  heads = {k for k in before if not k.startswith("PaliGemma/")}
  # Expert 0's final norm gets no gradient: the loss reads the action expert's output only.
  everything = set(before) - {"PaliGemma/llm/final_norm/scale"}
  want = {"full": everything, "action_expert": expert1 | heads, "lora": {k for k in before if "lora_" in k}}[preset]
  assert heads and expert1 and trained == want
  # Frozen leaves hold no optimizer state.
  frozen = weights.flatten(optimizer.frozen_mask(params, _optimizer_cfg(trainable=preset)))
  moments = sum(x.size for x in jax.tree.leaves(opt_state) if getattr(x, "ndim", 0))
  assert moments == 2 * sum(v.size for k, v in before.items() if not frozen[k])
  if preset != "full":  # Frozen gradients count neither for clipping nor anything else: scaling them changes nothing.
    loud = weights.unflatten({k: v * 1e6 if frozen[k] else v for k, v in weights.flatten(g).items()})
    updates, _ = tx.update(loud, tx.init(params), params)
    want_updates, _ = tx.update(g, tx.init(params), params)
    _assert_trees_equal(updates, want_updates)


def test_lora_preset_needs_lora_factors():
  with pytest.raises(ValueError, match=r"trainable='lora' .* leaves no parameter to train \(the model has no LoRA"):
    optimizer.make_optimizer(_optimizer_cfg(trainable="lora"), weights.abstract_params(BASE))


def _finetune_config(arg):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  try:
    import pi0_finetune
  finally:
    sys.path.pop(0)
  return pi0_finetune.get_config(arg)


def test_finetune_config():
  c = _finetune_config("openpi=/ckpt/pi0_base/params,train=lora,dataset=/d/my_robot/1.0.0")
  assert (c.model.paligemma_variant, c.model.action_expert_variant) == ("gemma_2b_lora", "gemma_300m_lora")
  assert c.init.openpi_params == "/ckpt/pi0_base/params" and not (c.init.export or c.init.workdir)
  assert c.optimizer.trainable == "lora" and c.data.norm_stats is None and c.data.datasets[0]["name"] == "my_robot"
  c = _finetune_config("export=/e,train=action_expert,norm_stats=init,model=tiny")
  assert c.model.paligemma_variant == "dummy" and c.data.norm_stats == "/e/norm_stats.json"
  c = _finetune_config("workdir=/w,train=lora,lora=action_expert,model=tiny,rank=4,alpha=8")
  assert c.model.paligemma_variant == "dummy" and c.model.action_expert_variant.to_dict() == dataclasses.asdict(
      LORA_DUMMY)
  with pytest.raises(ValueError, match="norm_stats=init needs export= or workdir="):
    _finetune_config("openpi=/o,norm_stats=init")


def test_trainer_fine_tunes_lora_from_an_export(exported, tmp_path):
  """configs/pi0_finetune.py: from an export, only the LoRA factors train; the base weights stay bit-identical."""
  import test_data_helpers as helpers
  from pi0_jax.data import tokenizer as tokenizer_lib
  from pi0_jax.train import loop
  instructions = ["push the puck", "open the drawer"]
  episodes = [helpers.marked_episode(8, i, image_size=32, instruction=instructions[i % 2]) for i in range(4)]
  dataset = helpers.write(tmp_path / "data", "new_robot", episodes)
  tok = str(tmp_path / "tokenizer.model")
  tokenizer_lib.train_tokenizer(instructions, tok, vocab_size=64)
  c = _finetune_config(f"export={exported},model=tiny,train=lora,rank=4,alpha=8,dataset={dataset},"
                       f"spec=metaworld_ml10_train,tokenizer={tok},steps=2,batch=8,stats_dir={tmp_path / 'stats'}")
  c.checkpoint_every, c.data.num_parallel_calls, c.data.shuffle_buffer = 2, 1, 16
  loop.run(c, str(tmp_path / "ft"))
  got = weights.flatten(weights.load_init({"workdir": str(tmp_path / "ft")}, CFG, rng=0))
  start = weights.flatten(weights.load_init({"export": exported}, CFG, rng=int(c.seed)))
  assert got.keys() == start.keys() and c.optimizer.frozen_dtype == "bfloat16"
  for k in got:  # The frozen base weights were stored in bf16: they equal the export's, rounded to bf16.
    want = start[k] if "lora_" in k else np.asarray(start[k]).astype(jnp.bfloat16).astype(start[k].dtype)
    assert np.array_equal(got[k], want) != ("lora_" in k), k


@pytest.mark.parametrize("preset", ["action_expert", "lora"])
def test_step_differentiates_only_trainable_leaves(preset):
  """The train step with a frozen mask (no gradient buffers for frozen leaves) makes the update that the
  optimizer makes from the full gradient (an independent reference); with frozen_dtype the frozen leaves live in
  bf16 and stay bit-identical, the trainable ones stay float32."""
  model = Pi0(CFG)
  cfg = _optimizer_cfg(trainable=preset)
  tx, schedule = optimizer.make_optimizer(cfg, weights.abstract_params(CFG))
  frozen = optimizer.frozen_mask(weights.abstract_params(CFG), cfg)
  obs = model_utils.random_observation(CFG, batch_size=4)
  rng = np.random.default_rng(1)
  batch = {"observation": obs,
           "actions": jnp.asarray(rng.normal(size=(4, CFG.action_horizon, CFG.action_dim)), jnp.float32),
           "action_pad_mask": jnp.ones((4, CFG.action_horizon), bool), "action_dim_mask": jnp.ones((4, CFG.action_dim), bool)}
  state = jax.jit(lambda r: step_lib.init_state(model, tx, r, ema=False))(jax.random.key(0))
  new, metrics = jax.jit(step_lib.make_train_step(model, tx, schedule, frozen=frozen, grad_accum_steps=2))(state, batch)

  def reference(state):  # The full gradient of every leaf, accumulated the same way, through the same optimizer.
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // 2, 2, *x.shape[1:]).swapaxes(0, 1), batch)
    grads = [jax.grad(lambda p: step_lib.loss_sum(model, p, jax.tree.map(lambda x: x[i], micro),
                                                  jax.random.fold_in(step_rng, i)))(state["params"]) for i in range(2)]
    g = jax.tree.map(lambda a, b: (a + b) / (4 * CFG.action_horizon), *grads)
    updates, _ = tx.update(g, state["opt_state"], state["params"])
    return optax.apply_updates(state["params"], updates)

  want = weights.flatten(jax.device_get(jax.jit(reference)(state)))
  got, before = weights.flatten(jax.device_get(new["params"])), weights.flatten(jax.device_get(state["params"]))
  flat_frozen = weights.flatten(frozen)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)
    if flat_frozen[k]:
      np.testing.assert_array_equal(got[k], before[k], err_msg=k)
  assert any(not np.array_equal(got[k], before[k]) for k in got if not flat_frozen[k])
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0

  half = jax.jit(lambda r: step_lib.init_state(model, tx, r, ema=False, frozen=frozen, frozen_dtype="bfloat16"))(
      jax.random.key(0))
  dtypes = {k: v.dtype for k, v in weights.flatten(half["params"]).items()}
  assert all((dtypes[k] == jnp.bfloat16) == flat_frozen[k] for k in dtypes), dtypes
  new_half, _ = jax.jit(step_lib.make_train_step(model, tx, schedule, frozen=frozen))(half, batch)
  for k, v in weights.flatten(jax.device_get(new_half["params"])).items():
    assert v.dtype == dtypes[k], k
    if flat_frozen[k]:
      np.testing.assert_array_equal(v, np.asarray(weights.flatten(half["params"])[k]), err_msg=k)
