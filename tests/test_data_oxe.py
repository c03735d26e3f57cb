"""Open X-Embodiment specs: each of the 21 datasets, written as a tiny RLDS dataset with its published feature
names, ranks and dtypes (TFDS catalog; 8x8 images), goes through the pipeline to a batch in the common
convention (7-d EEF actions, gripper 1 = open / 0 = closed, the dataset's state layout, its instruction)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import test_data_helpers as helpers
from pi0_jax.data import oxe, pipeline, synthetic

F32, F64, I32, BOOL = np.float32, np.float64, np.int32, np.bool_
IMG, TXT = "image", "text"
T = 5  # Steps per episode (bridge drops two: its first action is void and it relabels from next states).


def _rtx_action(**extra):
  return {"rotation_delta": ((3,), F32), "world_vector": ((3,), F32), **extra}


def _external(action_dim: int, **observation):
  """Datasets 'converted externally to RLDS': action tensor, instruction and its embedding in the step."""
  return {"action": ((action_dim,), F32), "discount": ((), F32), "language_embedding": ((512,), F32),
          "language_instruction": TXT, "observation": observation}


_NL = {"natural_language_embedding": ((512,), F32), "natural_language_instruction": TXT}
_RT1_ACTION = _rtx_action(base_displacement_vector=((2,), F32), base_displacement_vertical_rotation=((1,), F32),
                          gripper_closedness_action=((1,), F32), terminate_episode=((3,), I32))

# Published step features (TFDS catalog), per dataset: path -> IMG | TXT | (shape, dtype).
LAYOUTS = {
    "fractal20220817_data": {"action": _RT1_ACTION, "observation": dict(
        _NL, base_pose_tool_reached=((7,), F32), gripper_closed=((1,), F32), gripper_closedness_commanded=((1,), F32),
        height_to_bottom=((1,), F32), image=IMG, orientation_box=((2, 3), F32), orientation_start=((4,), F32),
        robot_orientation_positions_box=((3, 3), F32), rotation_delta_to_go=((3,), F32), src_rotation=((4,), F32),
        vector_to_go=((3,), F32), workspace_bounds=((3, 3), F32))},
    "bridge": {"action": _rtx_action(open_gripper=((), BOOL), terminate_episode=((), F32)),
               "observation": dict(_NL, image=IMG, state=((7,), F32))},
    "kuka": {"action": _RT1_ACTION, "observation": {
        **_NL, "clip_function_input/base_pose_tool_reached": ((7,), F32),
        "clip_function_input/workspace_bounds": ((3, 3), F32), "gripper_closed": ((1,), F32),
        "height_to_bottom": ((1,), F32), "image": IMG, "task_id": ((1,), F32)}},
    "taco_play": {"action": {"actions": ((7,), F32), "rel_actions_gripper": ((7,), F32),
                             "rel_actions_world": ((7,), F32), "terminate_episode": ((), F32)},
                  "observation": dict(_NL, depth_gripper=((8, 8), F32), depth_static=((8, 8), F32), rgb_gripper=IMG,
                                      rgb_static=IMG, robot_obs=((15,), F32), structured_language_instruction=TXT)},
    "jaco_play": {"action": {"gripper_closedness_action": ((1,), F32), "terminate_episode": ((3,), I32),
                             "world_vector": ((3,), F32)},
                  "observation": dict(_NL, end_effector_cartesian_pos=((7,), F32),
                                      end_effector_cartesian_velocity=((6,), F32), image=IMG, image_wrist=IMG,
                                      joint_pos=((8,), F32))},
    "berkeley_cable_routing": {"action": _rtx_action(terminate_episode=((), F32)), "observation": dict(
        _NL, image=IMG, robot_state=((7,), F32), top_image=IMG, wrist225_image=IMG, wrist45_image=IMG)},
    "roboturk": {"action": _rtx_action(gripper_closedness_action=((1,), F32), terminate_episode=((), F32)),
                 "observation": dict(_NL, front_rgb=IMG)},
    "viola": {"action": _rtx_action(gripper_closedness_action=((), F32), terminate_episode=((), F32)),
              "observation": dict(_NL, agentview_rgb=IMG, ee_states=((16,), F32), eye_in_hand_rgb=IMG,
                                  gripper_states=((1,), F32), joint_states=((7,), F32))},
    "berkeley_autolab_ur5": {"action": _rtx_action(gripper_closedness_action=((), F32), terminate_episode=((), F32)),
                             "observation": dict(_NL, hand_image=IMG, image=IMG, image_with_depth=((8, 8, 1), F32),
                                                 robot_state=((15,), F32))},
    "toto": {"action": _rtx_action(open_gripper=((), BOOL), terminate_episode=((), F32)),
             "observation": dict(_NL, image=IMG, state=((7,), F32))},
    "language_table": {"action": ((2,), F32), "observation": {
        "effector_target_translation": ((2,), F32), "effector_translation": ((2,), F32),
        "instruction": ((512,), I32), "rgb": IMG}},
    "stanford_hydra_dataset_converted_externally_to_rlds": dict(
        _external(7, image=IMG, state=((27,), F32), wrist_image=IMG), is_dense=((), BOOL)),
    "austin_buds_dataset_converted_externally_to_rlds": _external(7, image=IMG, state=((24,), F32), wrist_image=IMG),
    "furniture_bench_dataset_converted_externally_to_rlds": dict(
        _external(8, image=IMG, state=((35,), F32), wrist_image=IMG), skill_completion=((), F32)),
    "austin_sailor_dataset_converted_externally_to_rlds": _external(
        7, image=IMG, state=((8,), F32), state_ee=((16,), F32), state_gripper=((1,), F32), state_joint=((7,), F32),
        wrist_image=IMG),
    "austin_sirius_dataset_converted_externally_to_rlds": dict(_external(
        7, image=IMG, state=((8,), F32), state_ee=((16,), F32), state_gripper=((1,), F32), state_joint=((7,), F32),
        wrist_image=IMG), action_mode=((1,), F32), intv_label=((1,), F32)),
    "dlr_edan_shared_control_converted_externally_to_rlds": _external(7, image=IMG, state=((7,), F32)),
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": _external(8, image=IMG, state=((20,), F32),
                                                                        wrist_image=IMG),
    "utaustin_mutex": _external(7, image=IMG, state=((24,), F32), wrist_image=IMG),
    "berkeley_fanuc_manipulation": _external(6, end_effector_state=((7,), F32), image=IMG, state=((13,), F32),
                                             wrist_image=IMG),
    "droid": {"action": ((7,), F64), "action_dict": {
        "cartesian_position": ((6,), F64), "cartesian_velocity": ((6,), F64), "gripper_position": ((1,), F64),
        "gripper_velocity": ((1,), F64), "joint_position": ((7,), F64), "joint_velocity": ((7,), F64)},
        "discount": ((), F32), "language_instruction": TXT, "language_instruction_2": TXT,
        "language_instruction_3": TXT, "observation": {
            "cartesian_position": ((6,), F64), "exterior_image_1_left": IMG, "exterior_image_2_left": IMG,
            "gripper_position": ((1,), F64), "joint_position": ((7,), F64), "wrist_image_left": IMG}},
}


def _values(layout, rng, text: str):
  """Per-step arrays [T, ...] for a layout: 8x8 images, floats in [0, 1] (grippers included), text."""
  if isinstance(layout, dict):
    return {k: _values(v, rng, text) for k, v in layout.items()}
  if layout == IMG:
    return rng.integers(0, 256, (T, 8, 8, 3), dtype=np.uint8)
  if layout == TXT:
    return np.array([text] * T, dtype=object)
  shape, dtype = layout
  if dtype == BOOL:
    return rng.random((T, *shape)) < 0.5
  if dtype == I32 and shape == (512,):  # language_table: the instruction as zero-padded code points.
    codes = np.zeros((T, 512), np.int32)
    codes[:, :len(text)] = [ord(c) for c in text]
    return codes
  return rng.random((T, *shape)).astype(dtype)


def _instruction(name: str) -> str:
  return f"do task {len(name)}"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp("oxe")
  dirs = {}
  for i, (name, layout) in enumerate(LAYOUTS.items()):
    episode = _values(layout, np.random.default_rng(i), _instruction(name))
    # Written under a test-only name (no catalog collisions); the spec is picked by the dataset's own name.
    dirs[name] = synthetic.write_rlds(str(root), f"pi0_oxe_{i:02d}", {"train": [episode]})
  return root, dirs


def test_the_table_covers_the_datasets():
  assert set(LAYOUTS) == set(oxe.OXE) and len(oxe.OXE) == 21
  for name, entry in oxe.OXE.items():
    assert entry.spec.action_dim == 7 and entry.spec.unnormalized_action_dims == (6,), name
    assert entry.state_encoding in ("pos_euler", "pos_quat", "joint", "none"), name
    assert (entry.spec.state_dim == 0) == (entry.state_encoding == "none"), name


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_dataset_gives_a_batch(root, name):
  root, dirs = root
  entry = oxe.OXE[name]
  config = helpers.tiny_config(image_keys=("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"))
  cfg = helpers.data_config({}, root / "stats", datasets=[dict(name=name, dir=dirs[name])], augment=False,
                            shuffle_buffer=4, min_episode_length=1, num_parallel_calls=1)
  data = pipeline.make_train_data(cfg, config, global_batch=2, seed=0,
                                  tokenize_fn=helpers.fake_tokenize(config.max_token_len))
  assert len(data.plans[0].norm_stats["state"]["mean"]) == entry.spec.state_dim
  assert data.report()[0]["frames"] == (T - 2 if name == "bridge" else T)
  batch = data.next_host_batch()
  obs = batch["observation"]
  masks = {k: bool(np.all(v)) for k, v in obs.image_masks.items()}
  assert masks == {"base_0_rgb": True, "left_wrist_0_rgb": entry.wrist is not None, "right_wrist_0_rgb": False}
  np.testing.assert_array_equal(batch["action_dim_mask"], [[True] * 7 + [False]] * 2)
  gripper = batch["actions"][..., 6]  # Unnormalised: 1 = open, 0 = closed, for every dataset.
  assert np.all((gripper >= 0) & (gripper <= 1)), gripper
  tokens, _ = helpers.fake_tokenize(config.max_token_len)(_instruction(name))
  np.testing.assert_array_equal(obs.tokenized_prompt, np.tile(tokens, (2, 1)))


def _rt1_steps(gripper):
  t = len(gripper)
  return {"observation": {}, "action": {
      "world_vector": tf.ones([t, 3]), "rotation_delta": tf.zeros([t, 3]),
      "gripper_closedness_action": tf.constant(gripper, tf.float32)[:, None]}}


def test_relative_gripper_commands_become_absolute():
  # Close at step 1, open at step 4: open before the first close, then hold each command.
  out = oxe.rt1_transform(_rt1_steps([0.0, 1.0, 0.0, 0.05, -1.0, 0.0]))["action"]
  np.testing.assert_array_equal(out[:, 6], [1, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(out[:, :3], np.ones((6, 3)))
  # A first "open" means it was closed before; no command at all: open throughout.
  np.testing.assert_array_equal(oxe.relative_to_absolute_gripper(tf.constant([0.0, -1.0, 0.0])), [0, 1, 1])
  np.testing.assert_array_equal(oxe.relative_to_absolute_gripper(tf.zeros([3])), [1, 1, 1])


def test_bridge_drops_the_void_first_step_and_relabels_from_states():
  state = np.cumsum(np.arange(28, dtype=np.float32).reshape(4, 7), axis=0)
  steps = {"observation": {"state": tf.constant(state)}, "is_first": tf.constant([True, False, False, False]),
           "action": {"world_vector": tf.zeros([4, 3]), "rotation_delta": tf.zeros([4, 3]),
                      "open_gripper": tf.constant([False, True, False, True])}}
  out = oxe.bridge_transform(steps)
  np.testing.assert_allclose(out["action"], np.concatenate([state[2:, :6] - state[1:3, :6], [[1], [0]]], 1))
  np.testing.assert_array_equal(out["observation"]["state"], state[1:3])
  np.testing.assert_array_equal(out["is_first"], [False, False])


def test_quaternions_become_rpy():
  from scipy.spatial.transform import Rotation
  q = Rotation.from_euler("xyz", [[0.3, -0.2, 1.0], [-1.2, 0.5, 2.5]]).as_quat()  # (x, y, z, w)
  np.testing.assert_allclose(oxe.quaternion_to_euler(tf.constant(q)), [[0.3, -0.2, 1.0], [-1.2, 0.5, 2.5]],
                             atol=1e-5)


def test_language_table_instructions_are_decoded():
  codes = np.zeros((2, 512), np.int32)
  codes[:, :4] = [ord(c) for c in "push"]
  steps = {"observation": {"instruction": tf.constant(codes)}, "action": tf.ones([2, 2])}
  out = oxe.language_table_transform(steps)
  assert [s.decode() for s in out["language_instruction"].numpy()] == ["push", "push"]
  np.testing.assert_array_equal(out["action"], [[1, 1, 0, 0, 0, 0, 1]] * 2)


def _load_config(name: str):
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_oxe_pretrain_config_weights(tmp_path):
  from pi0_jax.data import config as config_lib, mixture
  from pi0_jax.model.config import Pi0Config
  module = _load_config("pi0_oxe_pretrain")
  c = module.get_config("data_dir=gs://b/oxe")
  names = [d["name"] for d in c.data.datasets]
  assert names == list(oxe.OXE) and c.data.iterator_state == "replay" and c.data.shuffle_buffer == 250_000
  # Not local: n^0.43 of the published episode counts, relative to each other as in pi0's rule.
  weights = mixture.mixture_weights([1] * 21, explicit=[d["weight"] for d in c.data.datasets])
  expected = np.array([oxe.OXE[n].episodes for n in names], np.float64) ** 0.43
  np.testing.assert_allclose(weights, expected / expected.sum())
  settings = config_lib.settings_from_config(c.data, Pi0Config.from_dict(c.model.to_dict()))
  assert [s.resolve_spec().action_dim for s in settings.datasets] == [7] * 21
  # Local data: the pipeline counts frames (no explicit weights).
  for n in ("bridge", "toto"):
    (tmp_path / n).mkdir()
  local = module.get_config(f"data_dir={tmp_path},datasets=bridge+toto")
  assert [(d["name"], d["weight"]) for d in local.data.datasets] == [("bridge", None), ("toto", None)]
  with pytest.raises(ValueError, match=r"datasets \['nope'\] are not in pi0_jax.data.oxe.OXE"):
    module.get_config("datasets=bridge+nope")
  full = _load_config("pi0_metaworld_full").get_config("data_dir=gs://b/rlds")
  assert full.model == c.model and full.mesh == c.mesh and full.data.datasets[0]["name"] == "metaworld_ml10_train"
