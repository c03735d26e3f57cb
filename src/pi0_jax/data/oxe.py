"""Open X-Embodiment (OXE) datasets as DatasetSpecs: the standardisation of each, written down as data.

Every entry maps one OXE RLDS dataset (TFDS name, features as published in the TFDS catalog) onto pi0's
inputs in one common convention, the one Octo's OXE configs and standardisation transforms use (facts
carried over here; the code is this project's):

  cameras   the third-person ("primary") camera -> base_0_rgb, the wrist camera -> left_wrist_0_rgb;
            right_wrist_0_rgb stays empty. A second third-person camera is recorded (`secondary`) but
            not fed (pi0's slots are one base and two wrist views).
  state     the dataset's proprioception in the layout of `state_encoding`:
              pos_euler  EEF xyz + roll/pitch/yaw (+ gripper)      pos_quat  EEF xyz + quaternion (+ gripper)
              joint      joint angles (+ gripper)                  none      no proprioception (state = padding)
  action    7 dims [3 x EEF translation, 3 x EEF rotation (rpy), 1 x gripper] (`action_encoding`
            "eef_delta"; DROID's are EEF velocities, "eef_velocity"); the gripper dim is passed through
            unnormalised.
  gripper   ONE convention for every dataset: 1 = open, 0 = closed, absolute (relative open/close commands
            are integrated, inverted conventions flipped, continuous ones clipped to [0, 1]).
  language  the published instruction key. Octo blanks the instructions it judged uninformative
            (`octo_blanks_language`); pi0 trains on prompts, so they are kept here.

Where Octo's transform draws random numbers (DROID's exterior-camera swap) it is left out: the stream must
be a pure function of the seed. Sizes are the published train-split episode counts (TFDS catalog), the
mixture's default n where the data is not local (configs/pi0_oxe_pretrain.py).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from pi0_jax.data.specs import DatasetSpec


class _LazyTensorFlow:
  """TensorFlow, imported on first use: the table is read by TF-free processes (pi0_jax.policy, configs)."""

  def __getattr__(self, name):
    import tensorflow  # pylint: disable=g-import-not-at-top
    return getattr(tensorflow, name)


tf = _LazyTensorFlow()

# --- Gripper and rotation conventions (TF ops on [T, ...] tensors) -----------------------------------


def invert_gripper(x: tf.Tensor) -> tf.Tensor:
  """1 = closed -> 1 = open (and back)."""
  return 1.0 - x


def relative_to_absolute_gripper(rel: tf.Tensor) -> tf.Tensor:
  """Relative commands [T] (+1 close, -1 open, |x| <= 0.1 no change) -> absolute [T] (1 open, 0 closed).

  Each step holds the last command given; before the first command the gripper is in the state opposite
  to it (a first "close" means it was open); with no command at all it is open throughout.
  """
  rel = tf.cast(rel, tf.float32)
  command = tf.where(rel > 0.1, -1, tf.where(rel < -0.1, 1, 0))  # +1 open, -1 closed, 0 hold.
  given = tf.not_equal(command, 0)
  first = tf.gather(command, tf.argmax(tf.cast(given, tf.int32), output_type=tf.int32))
  start = tf.where(tf.reduce_any(given), -first, 1)
  held = tf.scan(lambda carry, c: tf.where(tf.equal(c, 0), carry, c), command, initializer=start)
  return tf.cast(held, tf.float32) / 2 + 0.5


def quaternion_to_euler(q: tf.Tensor) -> tf.Tensor:
  """Quaternions [..., 4] as (x, y, z, w) -> extrinsic x-y-z Euler angles (roll, pitch, yaw) [..., 3]."""
  q = tf.cast(q, tf.float32)
  x, y, z, w = tf.unstack(q, axis=-1)
  roll = tf.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
  pitch = tf.asin(tf.clip_by_value(2 * (w * y - z * x), -1.0, 1.0))
  yaw = tf.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
  return tf.stack([roll, pitch, yaw], axis=-1)


def _col(x: tf.Tensor) -> tf.Tensor:
  x = tf.cast(x, tf.float32)
  return x[:, None] if x.shape.rank == 1 else x


def _cat(*parts) -> tf.Tensor:
  return tf.concat([_col(p) for p in parts], axis=-1)


def _with(steps: dict, action=None, **observation) -> dict:
  """A copy of the steps with a new action and added observation keys."""
  out = dict(steps, observation=dict(steps["observation"], **observation))
  if action is not None:
    out["action"] = action
  return out


# --- Per-dataset transforms (Octo's standardisations; raw steps -> steps with a 7-d "action") ----------


def rt1_transform(steps: dict) -> dict:
  """world_vector + rotation_delta + relative gripper_closedness_action [T, 1] (fractal, kuka)."""
  a = steps["action"]
  return _with(steps, _cat(a["world_vector"], a["rotation_delta"],
                           relative_to_absolute_gripper(a["gripper_closedness_action"][:, 0])))


def bridge_transform(steps: dict) -> dict:
  """OXE's Bridge V2 copy: the first step's action is all zeros, so it is dropped; translation and rotation
  are relabelled from the reached states (state[t+1] - state[t]), which drops the last step too."""
  steps = tf.nest.map_structure(lambda x: x[1:], steps)
  a, state = steps["action"], steps["observation"]["state"]
  gripper = tf.cast(a["open_gripper"], tf.float32)[:-1]
  moved = state[1:, :6] - state[:-1, :6]
  steps = tf.nest.map_structure(lambda x: x[:-1], steps)
  return _with(steps, _cat(moved, gripper))


def taco_play_transform(steps: dict) -> dict:
  # Octo clips the last dim to [0, 1], reading it in CALVIN's convention (1 open, -1 close); the TFDS
  # description states the opposite sign. Octo's reading is the one carried over.
  obs, a = steps["observation"], steps["action"]["rel_actions_world"]
  return _with(steps, _cat(a[:, :6], tf.clip_by_value(a[:, -1:], 0, 1)),
               state_eef=obs["robot_obs"][:, :6], state_gripper=obs["robot_obs"][:, 7:8])


def jaco_play_transform(steps: dict) -> dict:
  obs, a = steps["observation"], steps["action"]
  pose = obs["end_effector_cartesian_pos"]
  return _with(steps, _cat(a["world_vector"], tf.zeros_like(a["world_vector"]),
                           relative_to_absolute_gripper(a["gripper_closedness_action"][:, 0])),
               state_eef=pose[:, :6], state_gripper=pose[:, -1:])


def berkeley_cable_routing_transform(steps: dict) -> dict:
  a = steps["action"]  # No gripper command: the cable stays gripped (0 = closed).
  return _with(steps, _cat(a["world_vector"], a["rotation_delta"], tf.zeros_like(a["world_vector"][:, :1])))


def closed_is_one_transform(steps: dict) -> dict:
  """world_vector + rotation_delta + gripper_closedness_action in [0, 1] with 1 = closed, flipped."""
  a = steps["action"]
  return _with(steps, _cat(a["world_vector"], a["rotation_delta"],
                           invert_gripper(tf.clip_by_value(_col(a["gripper_closedness_action"]), 0, 1))))


def berkeley_autolab_ur5_transform(steps: dict) -> dict:
  a = steps["action"]
  return _with(steps, _cat(a["world_vector"], a["rotation_delta"],
                           relative_to_absolute_gripper(a["gripper_closedness_action"])),
               state=steps["observation"]["robot_state"][:, 6:14])  # EEF xyz + quaternion + gripper.


def toto_transform(steps: dict) -> dict:
  a = steps["action"]
  return _with(steps, _cat(a["world_vector"], a["rotation_delta"], a["open_gripper"]))


def language_table_transform(steps: dict) -> dict:
  """2-d EEF translation -> 7 dims (no rotation, gripper always open); instructions are stored as
  zero-padded UTF-8 code points (int32 [512])."""
  a = steps["action"]
  text = tf.strings.unicode_encode(steps["observation"]["instruction"], output_encoding="UTF-8")
  text = tf.strings.split(text, "\x00")[:, :1].to_tensor(default_value="")[:, 0]
  out = _with(steps, _cat(a, tf.zeros_like(a), tf.zeros_like(a), tf.ones_like(a[:, :1])))
  out["language_instruction"] = text
  return out


def closed_is_one_7d_transform(steps: dict) -> dict:
  """7-d action whose last dim is a [0, 1] gripper with 1 = closed: clipped and flipped."""
  a = steps["action"]
  return _with(steps, _cat(a[:, :6], invert_gripper(tf.clip_by_value(a[:, -1:], 0, 1))))


def stanford_hydra_transform(steps: dict) -> dict:
  a, state = steps["action"], steps["observation"]["state"]
  return _with(steps, _cat(a[:, :6], invert_gripper(a[:, -1:])),
               eef_state=_cat(state[:, :3], state[:, 7:10]), gripper_state=state[:, -3:-2])


def austin_buds_transform(steps: dict) -> dict:
  out = closed_is_one_7d_transform(steps)
  return _with(out, state=steps["observation"]["state"][:, :8])  # Joints + gripper.


def furniture_bench_transform(steps: dict) -> dict:
  a, state = steps["action"], steps["observation"]["state"]
  return _with(steps, _cat(a[:, :3], quaternion_to_euler(a[:, 3:7]),
                           invert_gripper(tf.clip_by_value(a[:, -1:], 0, 1))),
               state=_cat(state[:, :7], state[:, -1:]))


def dlr_edan_shared_control_transform(steps: dict) -> dict:
  a = steps["action"]
  return _with(steps, _cat(a[:, :6], invert_gripper(a[:, -1:])))


def iamlab_cmu_pickup_insert_transform(steps: dict) -> dict:
  a, state = steps["action"], steps["observation"]["state"]
  return _with(steps, _cat(a[:, :3], quaternion_to_euler(a[:, 3:7]), a[:, 7:8]),
               joint_state=state[:, :7], gripper_state=state[:, 7:8])


def utaustin_mutex_transform(steps: dict) -> dict:
  out = closed_is_one_7d_transform(steps)
  return _with(out, state=steps["observation"]["state"][:, :8])


def berkeley_fanuc_manipulation_transform(steps: dict) -> dict:
  """No gripper command is stored: the (flipped) gripper state stands in for it."""
  state = steps["observation"]["state"]
  gripper = state[:, 6:7]
  return _with(steps, _cat(steps["action"], invert_gripper(gripper)), joint_state=state[:, :6],
               gripper_state=gripper)


def droid_transform(steps: dict) -> dict:
  """EEF velocities in the robot's base frame + gripper (DROID stores 1 = closed)."""
  a = steps["action_dict"]
  return _with(steps, _cat(a["cartesian_velocity"][:, :6], invert_gripper(tf.cast(a["gripper_position"], tf.float32))))


# --- The table ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OxeDataset:
  """One OXE dataset: its spec plus the published facts it encodes."""

  name: str
  spec: DatasetSpec
  primary: str | None  # Third-person camera key.
  secondary: str | None  # A second third-person camera (recorded, not fed).
  wrist: str | None
  state_encoding: str  # pos_euler | pos_quat | joint | none
  action_encoding: str  # eef_delta | eef_velocity
  # Published train-split episodes: TFDS catalog pages; those of roboturk, berkeley_autolab_ur5 and toto
  # (whose pages list no splits) from the OXE dataset overview. Only weights of remote data use them.
  episodes: int
  octo_blanks_language: bool = False


def _entry(name: str, *, primary: str, wrist: str | None = None, secondary: str | None = None,
           state_keys: tuple[str, ...], state_encoding: str, state_dim: int, transform, language: str,
           episodes: int, action_encoding: str = "eef_delta", octo_blanks_language: bool = False) -> OxeDataset:
  spec = DatasetSpec(cameras={"base_0_rgb": primary, "left_wrist_0_rgb": wrist, "right_wrist_0_rgb": None},
                     state_keys=state_keys, action_key="action", instruction_key=language, transform=transform,
                     state_dim=state_dim, action_dim=7, unnormalized_action_dims=(6,))
  return OxeDataset(name=name, spec=spec, primary=primary, secondary=secondary, wrist=wrist,
                    state_encoding=state_encoding, action_encoding=action_encoding, episodes=episodes,
                    octo_blanks_language=octo_blanks_language)


_OBS_LANG = "observation/natural_language_instruction"  # RT-X conversions keep it in the observation.
_LANG = "language_instruction"  # Datasets "converted externally to RLDS" keep it in the step.

OXE: Mapping[str, OxeDataset] = {e.name: e for e in (
    _entry("fractal20220817_data", primary="image", state_keys=("base_pose_tool_reached", "gripper_closed"),
           state_encoding="pos_quat", state_dim=8, transform=rt1_transform, language=_OBS_LANG,
           episodes=87_212),
    _entry("bridge", primary="image", state_keys=("state",), state_encoding="pos_euler", state_dim=7,
           transform=bridge_transform, language=_OBS_LANG, episodes=25_460),
    _entry("kuka", primary="image", state_keys=("clip_function_input/base_pose_tool_reached", "gripper_closed"),
           state_encoding="pos_quat", state_dim=8, transform=rt1_transform, language=_OBS_LANG, episodes=580_392,
           octo_blanks_language=True),
    _entry("taco_play", primary="rgb_static", wrist="rgb_gripper", state_keys=("state_eef", "state_gripper"),
           state_encoding="pos_euler", state_dim=7, transform=taco_play_transform, language=_OBS_LANG,
           episodes=3_242),
    _entry("jaco_play", primary="image", wrist="image_wrist", state_keys=("state_eef", "state_gripper"),
           state_encoding="pos_euler", state_dim=7, transform=jaco_play_transform, language=_OBS_LANG,
           episodes=976),
    _entry("berkeley_cable_routing", primary="image", secondary="top_image", wrist="wrist45_image",
           state_keys=("robot_state",), state_encoding="joint", state_dim=7,
           transform=berkeley_cable_routing_transform, language=_OBS_LANG, episodes=1_482,
           octo_blanks_language=True),
    _entry("roboturk", primary="front_rgb", state_keys=(), state_encoding="none", state_dim=0,
           transform=closed_is_one_transform, language=_OBS_LANG, episodes=1_796, octo_blanks_language=True),
    _entry("viola", primary="agentview_rgb", wrist="eye_in_hand_rgb", state_keys=("joint_states", "gripper_states"),
           state_encoding="joint", state_dim=8, transform=closed_is_one_transform, language=_OBS_LANG, episodes=135,
           octo_blanks_language=True),
    _entry("berkeley_autolab_ur5", primary="image", wrist="hand_image", state_keys=("state",),
           state_encoding="pos_quat", state_dim=8, transform=berkeley_autolab_ur5_transform, language=_OBS_LANG,
           episodes=896),
    _entry("toto", primary="image", state_keys=("state",), state_encoding="joint", state_dim=7,
           transform=toto_transform, language=_OBS_LANG, episodes=902, octo_blanks_language=True),
    _entry("language_table", primary="rgb", state_keys=("effector_translation",), state_encoding="pos_euler",
           state_dim=2, transform=language_table_transform, language=_LANG, episodes=442_226),
    _entry("stanford_hydra_dataset_converted_externally_to_rlds", primary="image", wrist="wrist_image",
           state_keys=("eef_state", "gripper_state"), state_encoding="pos_euler", state_dim=7,
           transform=stanford_hydra_transform, language=_LANG, episodes=570, octo_blanks_language=True),
    _entry("austin_buds_dataset_converted_externally_to_rlds", primary="image", wrist="wrist_image",
           state_keys=("state",), state_encoding="joint", state_dim=8, transform=austin_buds_transform,
           language=_LANG, episodes=50, octo_blanks_language=True),
    _entry("furniture_bench_dataset_converted_externally_to_rlds", primary="image", wrist="wrist_image",
           state_keys=("state",), state_encoding="pos_quat", state_dim=8, transform=furniture_bench_transform,
           language=_LANG, episodes=5_100),
    _entry("austin_sailor_dataset_converted_externally_to_rlds", primary="image", wrist="wrist_image",
           state_keys=("state",), state_encoding="pos_quat", state_dim=8, transform=closed_is_one_7d_transform,
           language=_LANG, episodes=240, octo_blanks_language=True),
    _entry("austin_sirius_dataset_converted_externally_to_rlds", primary="image", wrist="wrist_image",
           state_keys=("state",), state_encoding="pos_quat", state_dim=8, transform=closed_is_one_7d_transform,
           language=_LANG, episodes=559, octo_blanks_language=True),
    _entry("dlr_edan_shared_control_converted_externally_to_rlds", primary="image", state_keys=("state",),
           state_encoding="pos_euler", state_dim=7, transform=dlr_edan_shared_control_transform, language=_LANG,
           episodes=104),
    _entry("iamlab_cmu_pickup_insert_converted_externally_to_rlds", primary="image", wrist="wrist_image",
           state_keys=("joint_state", "gripper_state"), state_encoding="joint", state_dim=8,
           transform=iamlab_cmu_pickup_insert_transform, language=_LANG, episodes=631),
    _entry("utaustin_mutex", primary="image", wrist="wrist_image", state_keys=("state",), state_encoding="joint",
           state_dim=8, transform=utaustin_mutex_transform, language=_LANG, episodes=1_500,
           octo_blanks_language=True),
    _entry("berkeley_fanuc_manipulation", primary="image", wrist="wrist_image",
           state_keys=("joint_state", "gripper_state"), state_encoding="joint", state_dim=7,
           transform=berkeley_fanuc_manipulation_transform, language=_LANG, episodes=415),
    _entry("droid", primary="exterior_image_1_left", secondary="exterior_image_2_left", wrist="wrist_image_left",
           state_keys=("cartesian_position", "gripper_position"), state_encoding="pos_euler", state_dim=7,
           transform=droid_transform, language=_LANG, episodes=92_233, action_encoding="eef_velocity"),
)}

OXE_SPECS: Mapping[str, DatasetSpec] = {name: e.spec for name, e in OXE.items()}
