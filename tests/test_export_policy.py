"""Export (pi0_jax.export) and the inference policy (pi0_jax.policy) end to end.

A tiny pi0 trains 2 steps (EMA on) in this process on a synthetic Meta-World-shaped RLDS dataset; the run is
exported; a fresh process on 1 device (the run used 8) loads the export with `Policy.load`, samples with given
noise and writes what it got. Its actions must equal sampling from the training state's own params, and its
inputs must equal what the training pipeline makes of the same raw frames (TensorFlow here, none there).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import test_data_helpers as helpers
from pi0_jax import export as export_lib
from pi0_jax import weights
from pi0_jax.data import tokenizer as tokenizer_lib
from pi0_jax.model import Observation, Pi0, Pi0Config
from pi0_jax.policy import Policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTRUCTIONS = ["push the puck", "open the drawer"]
STEP = 2


def _config(data_dir, tokenizer, stats_dir) -> ml_collections.ConfigDict:
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  try:
    import pi0_tiny
  finally:
    sys.path.pop(0)
  c = pi0_tiny.get_config(f"dataset={data_dir},tokenizer={tokenizer},stats_dir={stats_dir}")
  c.total_steps = STEP  # The learning-rate schedule keeps the config's 20 steps.
  c.ema_decay = 0.5
  c.checkpoint_every = STEP
  return c


def _restore_state(workdir, step=STEP) -> dict:
  """The full train state of a checkpoint as numpy (what the trainer saved)."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "meta"))
  try:
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    manager.close()
  return jax.tree.map(np.asarray, state)


def _restore_tree(directory) -> dict:
  with ocp.PyTreeCheckpointer() as ckptr:
    return jax.tree.map(np.asarray, ckptr.restore(directory))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  from pi0_jax.train import loop
  root = tmp_path_factory.mktemp("export_run")
  episodes = [helpers.marked_episode(8, i, image_size=32, instruction=INSTRUCTIONS[i % 2]) for i in range(4)]
  data_dir = helpers.write(root, "pi0_test_export", episodes, val=episodes[:1])
  tokenizer = str(root / "tokenizer.model")
  tokenizer_lib.train_tokenizer(INSTRUCTIONS, tokenizer, vocab_size=64)
  config = _config(data_dir, tokenizer, root / "stats")
  workdir = str(root / "workdir")
  loop.run(config, workdir)
  with open(os.path.join(workdir, "assets", "norm_stats.json")) as f:
    norm = json.load(f)["norm_stats"]
  return {"root": root, "workdir": workdir, "tokenizer": tokenizer, "state": _restore_state(workdir), "norm": norm,
          "model_config": Pi0Config.from_dict(config.model.to_dict())}


@pytest.fixture(scope="module")
def exported(run):
  out = str(run["root"] / "export")
  assert export_lib.export(run["workdir"], out, openpi_layout=True) == out
  return out


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    from pi0_jax.policy import Policy

    export_dir, export_bf16, out = sys.argv[1:4]
    policy = Policy.load(export_dir)
    cfg = policy.config
    rng = np.random.default_rng(0)
    frame = lambda *lead: rng.integers(0, 256, (*lead, 480, 640, 3), dtype=np.uint8)
    obs = {"images": {"image": frame(), "wrist_image": frame(), "unused_camera": frame()},
           "state": np.array([1.5, -0.3, 0.2, 0.9]), "prompt": "push the puck"}
    noise = rng.normal(size=(cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    prepared, batched = policy.prepare(obs)
    assert not batched
    sampled = np.asarray(policy.sample(prepared, noise[None]))
    first = policy.infer(obs, noise=noise)
    again = policy.infer(obs, noise=noise)
    compiled = policy.num_compiled
    # Another frame size needs no new executable: resizing happens before the model.
    small = dict(obs, images={k: v[:224, :300] for k, v in obs["images"].items()})
    policy.infer(small, noise=noise)
    assert policy.num_compiled == compiled, (policy.num_compiled, compiled)
    bobs = {"images": {k: np.stack([v, frame()]) for k, v in obs["images"].items()},
            "state": np.stack([obs["state"], [0.5, 0.1, -0.2, 0.4]]).astype(np.float32),
            "prompt": ["push the puck", "open the drawer"]}
    bnoise = np.stack([noise, rng.normal(size=noise.shape).astype(np.float32)])
    batch = policy.infer(bobs, noise=bnoise)
    drawn = [policy.infer(obs)["actions"] for _ in range(2)]
    # Documented: without noise, the i-th draw of a policy (any instance with seed 0) uses fold_in(key(0), i).
    noise0 = jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), (1, *noise.shape))
    replay = policy.infer(obs, noise=np.asarray(noise0)[0])["actions"]
    policy_bf16 = Policy.load(export_bf16)
    bf16 = policy_bf16.infer(obs, noise=noise)["actions"]
    np.savez(out, noise=noise, sampled=sampled, actions=first["actions"], again=again["actions"],
             batch=batch["actions"], bnoise=bnoise, drawn0=drawn[0], drawn1=drawn[1], replay=replay, bf16=bf16,
             state=prepared.state, prompt=prepared.tokenized_prompt, prompt_mask=prepared.tokenized_prompt_mask,
             raw_image=obs["images"]["image"], raw_wrist=obs["images"]["wrist_image"],
             **{"image/" + k: v for k, v in prepared.images.items()},
             **{"mask/" + k: v for k, v in prepared.image_masks.items()})
    json.dump({"devices": jax.device_count(), "infer_ms": [first["infer_ms"], again["infer_ms"]],
               "tensorflow": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"),
               "camera_keys": list(policy.camera_keys), "action_dim": policy.action_dim,
               "params_dtype": str(jax.tree.leaves(policy_bf16.params)[0].dtype)},
              open(out + ".json", "w"))
""")


@pytest.fixture(scope="module")
def child(run, exported):
  """Runs _CHILD in a fresh process on one CPU device; returns its arrays and report."""
  bf16 = export_lib.export(run["workdir"], str(run["root"] / "export_bf16"), dtype="bfloat16")
  out = str(run["root"] / "child.npz")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.path.join(ROOT, "src"),
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  p = subprocess.run([sys.executable, "-c", _CHILD, exported, bf16, out], env=env, capture_output=True, text=True,
                     timeout=300, cwd=ROOT)
  assert p.returncode == 0, p.stderr[-4000:]
  with open(out + ".json") as f:
    report = json.load(f)
  return dict(np.load(out)), report


def _reference_sample(run, obs: Observation, noise: np.ndarray) -> np.ndarray:
  """Sampling with the training state's params, straight through the model (no policy code)."""
  model = Pi0(run["model_config"])
  fn = jax.jit(lambda p, o, n: model.apply({"params": p}, o, method="sample_actions", noise=n, num_steps=10))
  return np.asarray(fn(run["state"]["params"], obs, noise))


def _unnormalize(run, normalized: np.ndarray) -> np.ndarray:
  a = run["norm"]["actions"]
  raw = normalized[..., :4] * (np.asarray(a["std"], np.float32) + 1e-6) + np.asarray(a["mean"], np.float32)
  return np.clip(raw, np.float32(a["min"]), np.float32(a["max"]))  # The policy keeps actions in the data's range.


def _pipeline_image(raw: np.ndarray, resolution: int) -> np.ndarray:
  """What the training pipeline makes of a raw frame (pi0_jax.data.images, without augmentation)."""
  import tensorflow as tf
  from pi0_jax.data import images as images_lib
  resized = tf.image.resize_with_pad(tf.cast(raw, tf.float32), resolution, resolution)
  as_uint8 = tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8).numpy()
  return images_lib.to_model_range(as_uint8[None], np.ones(1, bool))


def test_fresh_process_policy_equals_training_params(run, child):
  arrays, report = child
  assert report["devices"] == 1 and report["tensorflow"] == []
  assert report["camera_keys"] == ["image", "wrist_image"] and report["action_dim"] == 4
  cfg = run["model_config"]
  # The policy's inputs are the training pipeline's: images, masks, normalised and padded state, tokens.
  np.testing.assert_array_equal(arrays["image/base_0_rgb"], _pipeline_image(arrays["raw_image"], 32))
  np.testing.assert_array_equal(arrays["image/left_wrist_0_rgb"], _pipeline_image(arrays["raw_wrist"], 32))
  assert arrays["mask/base_0_rgb"].tolist() == arrays["mask/left_wrist_0_rgb"].tolist() == [True]
  s = run["norm"]["state"]
  want_state = (np.array([1.5, -0.3, 0.2, 0.9], np.float32) - np.float32(s["mean"])) / (np.float32(s["std"]) + 1e-6)
  np.testing.assert_allclose(arrays["state"][0, :4], want_state, rtol=1e-6)
  assert np.all(arrays["state"][0, 4:] == 0)
  ids, mask = tokenizer_lib.PromptTokenizer(run["tokenizer"], cfg.max_token_len).tokenize("push the puck")
  np.testing.assert_array_equal(arrays["prompt"][0], ids)
  np.testing.assert_array_equal(arrays["prompt_mask"][0], mask)

  obs = Observation(images={k: arrays["image/" + k] for k in cfg.image_keys},
                    image_masks={k: arrays["mask/" + k] for k in cfg.image_keys}, state=arrays["state"],
                    tokenized_prompt=arrays["prompt"], tokenized_prompt_mask=arrays["prompt_mask"])
  ref = _reference_sample(run, obs, arrays["noise"][None])
  np.testing.assert_allclose(arrays["sampled"], ref, rtol=1e-5, atol=1e-6)
  actions = arrays["actions"]
  assert actions.shape == (cfg.action_horizon, 4) and actions.dtype == np.float32 and np.isfinite(actions).all()
  np.testing.assert_allclose(actions, _unnormalize(run, ref)[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(arrays["again"], actions)
  # A sane range: within a few standard deviations of the training actions' mean.
  a = run["norm"]["actions"]
  z = (actions - np.float32(a["mean"])) / (np.float32(a["std"]) + 1e-6)
  assert np.abs(z).max() < 10, z
  assert (actions >= np.float32(a["min"])).all() and (actions <= np.float32(a["max"])).all()
  assert all(0 < ms < 60_000 for ms in report["infer_ms"])

  batch = arrays["batch"]
  assert batch.shape == (2, cfg.action_horizon, 4) and np.isfinite(batch).all()
  np.testing.assert_allclose(batch[0], actions, rtol=1e-5, atol=1e-5)  # Row 0 is the unbatched input.
  assert not np.allclose(batch[1], actions)
  # Without noise: fresh draws differ from call to call and follow the policy's seed.
  assert not np.allclose(arrays["drawn0"], arrays["drawn1"])
  np.testing.assert_allclose(arrays["replay"], arrays["drawn0"], rtol=1e-5, atol=1e-6)
  # The bfloat16 export: bfloat16 params, actions close to float32's.
  assert report["params_dtype"] == "bfloat16"
  np.testing.assert_allclose(arrays["bf16"], actions, atol=0.1)


def test_export_writes_params_only(run, exported):
  names = sorted(os.listdir(exported))
  assert names == ["metadata.json", "model_config.json", "norm_stats.json", "openpi", "params", "tokenizer.model"]
  params = _restore_tree(os.path.join(exported, "params"))
  want = weights.flatten(run["state"]["params"])
  got = weights.flatten(params)
  assert sorted(got) == sorted(want)  # The bare params tree: no opt_state, ema_params, step or rng.
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  def size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
  params_bytes = sum(v.nbytes for v in want.values())
  assert size(os.path.join(exported, "params")) < 1.5 * params_bytes
  assert size(os.path.join(run["workdir"], "checkpoints", str(STEP), "state")) > 2.5 * params_bytes

  meta = export_lib.read_export_metadata(exported)
  assert meta["step"] == STEP and meta["ema"] is False and meta["dtype"] == "float32" and meta["format"] == 1
  assert meta["pi0_jax_version"] and "git_commit" in meta and meta["train_config"]["total_steps"] == STEP
  [dataset] = meta["datasets"]
  assert dataset["name"] == "pi0_test_export" and dataset["spec"] == "metaworld_ml10_train"
  assert dataset["weight"] == 1.0 and dataset["cameras"]["base_0_rgb"] == "image"
  with open(os.path.join(exported, "model_config.json")) as f:
    assert Pi0Config.from_dict(json.load(f)) == run["model_config"].replace(activation_batch_axes=())
  # openpi's layout: {"params": tree} (pi0_jax.weights reads it back) and per-dataset SPEC norm stats.
  openpi = weights.flatten(weights.load_openpi_params(os.path.join(exported, "openpi", "params"),
                                                     run["model_config"]))
  assert sorted(openpi) == sorted(want) and all(np.array_equal(openpi[k], want[k]) for k in want)
  with open(os.path.join(exported, "openpi", "assets", "pi0_test_export", "norm_stats.json")) as f:
    spec_form = json.load(f)["norm_stats"]
  assert spec_form["actions"]["mean"] == run["norm"]["actions"]["mean"] and set(spec_form["state"]) == {
      "mean", "std", "q01", "q99"}


def test_export_ema_and_errors(run, tmp_path):
  out = export_lib.export(run["workdir"], str(tmp_path / "ema"), ema=True, step=STEP)
  ema = weights.flatten(_restore_tree(os.path.join(out, "params")))
  want = weights.flatten(run["state"]["ema_params"])
  assert all(np.array_equal(ema[k], want[k]) for k in want)
  assert not all(np.array_equal(ema[k], weights.flatten(run["state"]["params"])[k]) for k in want)
  assert export_lib.read_export_metadata(out)["ema"] is True

  with pytest.raises(FileExistsError, match="already holds an export"):
    export_lib.export(run["workdir"], out)
  with pytest.raises(FileNotFoundError, match=r"workdir .*nowhere does not exist"):
    export_lib.export(str(tmp_path / "nowhere"), str(tmp_path / "x"))
  with pytest.raises(FileNotFoundError, match=rf"No checkpoint for step 7 .*complete checkpoints: \[{STEP}\]"):
    export_lib.export(run["workdir"], str(tmp_path / "x"), step=7)

  # A run without EMA: the same state minus ema_params, saved as the trainer saves it.
  from pi0_jax.train import checkpoint
  workdir = tmp_path / "no_ema"
  shutil.copytree(os.path.join(run["workdir"], "assets"), workdir / "assets")
  shutil.copy(os.path.join(run["workdir"], "config.json"), workdir / "config.json")
  ckpts = checkpoint.Checkpoints(str(workdir), async_save=False)
  ckpts.save(STEP, {k: v for k, v in run["state"].items() if k != "ema_params"}, {"step": STEP})
  ckpts.close()
  with pytest.raises(ValueError, match=r"--ema: the checkpoint .*no_ema.* has no EMA params"):
    export_lib.export(str(workdir), str(tmp_path / "y"), ema=True)
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), XLA_FLAGS="--xla_force_host_platform_device_count=1")
  p = subprocess.run([sys.executable, "-m", "pi0_jax.export", f"--workdir={workdir}", f"--out={tmp_path / 'z'}",
                      "--ema"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert p.returncode == 1 and "has no EMA params" in p.stderr, p.stderr[-3000:]
  assert not os.path.exists(tmp_path / "z" / "params")


def test_policy_input_errors_name_the_key(run, exported):
  policy = Policy.load(exported)
  frame = np.zeros((480, 640, 3), np.uint8)
  good = {"images": {"image": frame, "wrist_image": frame}, "state": np.zeros(4), "prompt": "push the puck"}
  cases = [
      ({"images": {"image": frame}}, r"missing camera 'wrist_image' .*\['image', 'wrist_image'\]"),
      ({"state": np.zeros(5)}, r"obs\['state'\]: shape \(5,\).*expected .*\[4\] or \[batch, 4\]"),
      ({"images": {"image": frame.astype(np.float32), "wrist_image": frame}},
       r"obs\['images'\]\['image'\]: dtype float32, expected uint8"),
      ({"images": {"image": frame[..., 0], "wrist_image": frame}},
       r"obs\['images'\]\['image'\]: shape \(480, 640\), expected uint8 \[h, w, 3\]"),
      ({"images": {"image": frame[None], "wrist_image": frame}}, r"obs\['images'\]\['image'\]: shape \(1, 480"),
      ({"state": np.array([0.0, np.nan, 0.0, 0.0])}, r"obs\['state'\]: non-finite"),
      ({"prompt": None}, r"obs\['prompt'\]: missing"),
  ]
  for change, match in cases:
    with pytest.raises(ValueError, match=match):
      policy.infer({**good, **change})
  with pytest.raises(ValueError, match=r"noise: shape \(3, 8\), expected \[4, 8\]"):
    policy.infer(good, noise=np.zeros((3, 8)))
  with pytest.raises(ValueError, match=r"dataset 'other'.*choices: \['pi0_test_export'\]"):
    Policy.load(exported, dataset="other")
  assert policy.num_compiled == 0  # Every error came before any compilation.


def test_policy_picks_the_dataset_of_a_mixture(run, exported, tmp_path):
  """With several datasets an export needs dataset=...; each brings its own statistics and cameras."""
  mixed = str(tmp_path / "mixed")
  shutil.copytree(exported, mixed)
  with open(os.path.join(mixed, "norm_stats.json")) as f:
    stats = json.load(f)
  other = json.loads(json.dumps(stats["datasets"]["pi0_test_export"]))
  other["norm_stats"]["state"]["mean"] = [7.0, 7.0, 7.0, 7.0]
  with open(os.path.join(mixed, "norm_stats.json"), "w") as f:
    json.dump({"datasets": {**stats["datasets"], "other_robot": other}}, f)
  meta = export_lib.read_export_metadata(mixed)
  meta["datasets"].append(dict(meta["datasets"][0], name="other_robot", cameras={"base_0_rgb": "top"}))
  with open(os.path.join(mixed, "metadata.json"), "w") as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match=r"2 datasets; pass dataset= one of \['other_robot', 'pi0_test_export'\]"):
    Policy.load(mixed)
  policy = Policy.load(mixed, dataset="other_robot")
  assert policy.dataset == "other_robot" and policy.camera_keys == ("top",)
  assert policy.camera_map == {"base_0_rgb": "top", "left_wrist_0_rgb": None}
  obs, _ = policy.prepare({"images": {"top": np.zeros((48, 64, 3), np.uint8)}, "state": np.full(4, 7.0),
                           "prompt": "push the puck"})
  assert np.all(obs.state == 0) and obs.image_masks["left_wrist_0_rgb"].tolist() == [False]
  assert np.all(obs.images["left_wrist_0_rgb"] == 0)
