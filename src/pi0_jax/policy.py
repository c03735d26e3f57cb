"""Inference policy: raw robot observations in, robot actions out, exactly as the model was trained.

  policy = Policy.load("exports/demo")                   # written by `python -m pi0_jax.export`
  out = policy.infer({"images": {"image": rgb, "wrist_image": wrist},   # uint8 [h, w, 3], any size
                      "state": state,                                     # float [S]
                      "prompt": "open the drawer"})
  out["actions"]   # float32 [H, A]: the next H actions of the robot, unnormalised
  out["infer_ms"]  # wall time of this call (compilation excluded)

Batched input ([B, h, w, 3] images, [B, S] state, a list of B prompts) gives [B, H, A] actions.

What `infer` does is what the training pipeline (pi0_jax.data.pipeline) did to a frame, minus augmentation:

  images   each camera slot of the model is filled from the raw observation key the dataset's spec names
           (pi0_jax.data.specs; e.g. Meta-World: base_0_rgb <- "image", left_wrist_0_rgb <- "wrist_image");
           resized with padding to the model's resolution (bilinear, aspect kept, zero padding centred:
           `resize_with_pad`, a numpy reimplementation of tf.image.resize_with_pad), rounded to uint8 as
           the pipeline does, then mapped to [-1, 1]; slots the spec leaves empty are zeros and masked out
  state    normalised with the dataset's statistics and norm mode (dims the spec keeps raw pass through),
           then zero-padded to the model's action_dim
  prompt   tokenised in pi0's format (pi0_jax.data.tokenizer.PromptTokenizer) with the exported model
  actions  sampled by the flow (`num_steps` Euler steps), cut to the robot's action dims and unnormalised

This module never imports TensorFlow: MuJoCo's EGL rendering crashes in a process that has, and evaluators run
the policy next to the simulator. The sampler is compiled ahead of time once per (batch size, num_steps) and
cached, so a control loop with a fixed batch compiles once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pi0_jax.data import normalize as normalize_lib
from pi0_jax.model import Observation, Pi0, Pi0Config

__all__ = ["Policy", "resize_with_pad", "to_model_images"]


# --- Images ---------------------------------------------------------------------------------------------


def _bilinear_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices (lower, upper) and weights of one axis, as TF's half-pixel-centre bilinear kernel has them.

  All in float32, in TF's order of operations: x_in = (x_out + 0.5) * (in / out) - 0.5, clamped at the edges.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  x = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(x)
  lower = np.maximum(floor, 0).astype(np.int64)
  upper = np.minimum(np.ceil(x), in_size - 1).astype(np.int64)
  return lower, upper, (x - floor).astype(np.float32)


def _resized_size_and_padding(height: int, width: int, target_height: int, target_width: int):
  """(resized h, w), (pad top, pad left) computed in float32 the way tf.image.resize_with_pad does."""
  f32 = np.float32
  ratio = max(f32(width) / f32(target_width), f32(height) / f32(target_height))
  h_float, w_float = f32(height) / ratio, f32(width) / ratio
  resized = (int(np.floor(h_float)), int(np.floor(w_float)))
  pad = (max(0, int(np.floor((f32(target_height) - h_float) / f32(2)))),
         max(0, int(np.floor((f32(target_width) - w_float) / f32(2)))))
  return resized, pad


def resize_with_pad(images: np.ndarray, target_height: int, target_width: int) -> np.ndarray:
  """tf.image.resize_with_pad in numpy: bilinear resize keeping the aspect ratio, then centred zero padding.

  images: [h, w, C] or [B, h, w, C] of any real dtype (uint8 frames are usual). Returns float32 of shape
  [target_height, target_width, C] (or with the batch axis), pixel values on the input's scale. The arithmetic
  follows TF's kernel (half-pixel centres, no antialiasing, float32 throughout), so results agree with
  TensorFlow's to float32 rounding.
  """
  images = np.asarray(images)
  if images.ndim not in (3, 4):
    raise ValueError(f"resize_with_pad: expected [h, w, C] or [B, h, w, C], got shape {images.shape}.")
  if target_height <= 0 or target_width <= 0:
    raise ValueError(f"resize_with_pad: target size must be positive, got {target_height}x{target_width}.")
  batched = images.ndim == 4
  x = images if batched else images[None]
  b, h, w, c = x.shape
  if h == 0 or w == 0:
    raise ValueError(f"resize_with_pad: empty image of shape {images.shape}.")
  (rh, rw), (pt, pl) = _resized_size_and_padding(h, w, target_height, target_width)
  y_lo, y_hi, y_lerp = _bilinear_axis(h, rh)
  x_lo, x_hi, x_lerp = _bilinear_axis(w, rw)
  # Rows first, from the (small) integer image; only the rows and columns used are ever converted to float.
  rows_lo, rows_hi = x[:, y_lo].astype(np.float32), x[:, y_hi].astype(np.float32)
  xl = x_lerp[None, None, :, None]
  top = rows_lo[:, :, x_lo] + (rows_lo[:, :, x_hi] - rows_lo[:, :, x_lo]) * xl
  bottom = rows_hi[:, :, x_lo] + (rows_hi[:, :, x_hi] - rows_hi[:, :, x_lo]) * xl
  resized = top + (bottom - top) * y_lerp[None, :, None, None]
  out = np.zeros((b, target_height, target_width, c), np.float32)
  out[:, pt:pt + rh, pl:pl + rw] = resized
  return out if batched else out[0]


def to_model_images(images: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [B, h, w, 3] -> uint8 [B, R, R, 3]: resized with padding and rounded, as the training pipeline does."""
  resized = resize_with_pad(images, resolution, resolution)
  return np.round(np.clip(resized, 0.0, 255.0)).astype(np.uint8)


def _model_range(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
  # pi0_jax.data.images.to_model_range, which lives next to TensorFlow code: x / 127.5 - 1, zeros where masked.
  x = images.astype(np.float32) / np.float32(127.5) - np.float32(1)
  return np.where(mask[:, None, None, None], x, np.float32(0))


# --- Loading ---------------------------------------------------------------------------------------------


def _read_json(path: str, what: str) -> Any:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}: {path} does not exist; is this a directory written by pi0_jax.export?")
  with open(path) as f:
    return json.load(f)


def _restore_export_params(directory: str, config: Pi0Config, device) -> dict:
  """The bare params tree of an export, checked against `config` from metadata, placed on `device`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from pi0_jax import weights  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"export params: {directory} does not exist.")
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(directory).item_metadata
  meta = dict(meta.tree if hasattr(meta, "tree") else meta)
  flat = weights.flatten(meta)
  expected = {k: tuple(v.shape) for k, v in weights.flatten(weights.abstract_params(config)).items()}
  weights.check_tree({k: tuple(v.shape) for k, v in flat.items()}, expected, directory,
                     note="the params do not fit model_config.json of the same export")
  sharding = jax.sharding.SingleDeviceSharding(device)
  args = weights.unflatten({k: ocp.ArrayRestoreArgs(sharding=sharding) for k in flat})
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(directory, args=ocp.args.PyTreeRestore(item=weights.unflatten(flat), restore_args=args))


def _dataset_choice(norm_stats: Mapping[str, Any], metadata: Mapping[str, Any], dataset: str | None,
                    path: str) -> tuple[str, dict]:
  """(dataset name, its norm_stats.json entry) for `dataset`, or the only dataset when it is None."""
  per_dataset = dict(norm_stats.get("datasets") or {})
  if not per_dataset:
    if "norm_stats" not in norm_stats:
      raise ValueError(f"{path}: expected {{'datasets': {{name: {{'norm_stats': ...}}}}}} or {{'norm_stats': ...}}, "
                       f"found keys {sorted(norm_stats)}.")
    names = [d.get("name") for d in metadata.get("datasets") or []]
    per_dataset = {(names[0] if len(names) == 1 and names[0] else "default"): dict(norm_stats)}
  if dataset is None:
    if len(per_dataset) != 1:
      raise ValueError(f"This export was trained on {len(per_dataset)} datasets; pass dataset= one of "
                       f"{sorted(per_dataset)} to pick whose norm stats and camera layout to use.")
    dataset = next(iter(per_dataset))
  if dataset not in per_dataset:
    raise ValueError(f"dataset {dataset!r}: {path} has no statistics for it; choices: {sorted(per_dataset)}.")
  entry = per_dataset[dataset]
  if "norm_stats" not in entry or not {"state", "actions"} <= set(entry["norm_stats"]):
    raise ValueError(f"{path}: dataset {dataset!r} needs 'norm_stats' with 'state' and 'actions'.")
  return dataset, entry


def _dataset_layout(metadata: Mapping[str, Any], dataset: str) -> dict:
  """Camera map and fixed prompt of `dataset`: from the export's metadata, else from its DatasetSpec."""
  from pi0_jax.data import specs as specs_lib  # pylint: disable=g-import-not-at-top
  entry = next((d for d in metadata.get("datasets") or [] if d.get("name") == dataset), {})
  spec = specs_lib.DATASETS.get(entry.get("spec") or dataset)
  cameras = entry.get("cameras") or (spec.camera_map if spec else None)
  if not cameras:
    raise ValueError(f"dataset {dataset!r}: the export's metadata.json names no camera keys and there is no "
                     f"DatasetSpec {entry.get('spec') or dataset!r} in pi0_jax.data.specs.DATASETS; pass "
                     "camera_map to Policy(...) directly.")
  return {"cameras": dict(cameras), "prompt": entry.get("prompt", spec.prompt if spec else None),
          "state_dim": entry.get("state_dim", spec.state_dim if spec else None),
          "action_dim": entry.get("action_dim", spec.action_dim if spec else None)}


# --- The policy ----------------------------------------------------------------------------------------------


class Policy:
  """A pi0 model with its data transforms, mapping raw observations to robot actions (module docstring).

  Build one with `Policy.load(export_dir)`, or directly from in-memory pieces:

    config          the Pi0Config
    params          the params tree (numpy or jax arrays; placed on `device`)
    tokenizer       a PromptTokenizer, or any fn(prompt) -> (int32 ids [max_token_len], bool mask [max_token_len])
    norm_stats      {"state": {...}, "actions": {...}} in SPEC form (mean, std, q01, q99 per dim, unpadded)
    camera_map      model camera slot -> raw observation key (None: the slot stays empty)
    norm_mode       "zscore" or "quantile", as in training
    unnormalized_state_dims, unnormalized_action_dims   dims that pass through unnormalised
    default_prompt  used when an observation has no "prompt" (datasets with a fixed prompt)
  """

  def __init__(self, config: Pi0Config, params, *, tokenizer: Callable[[str], tuple[np.ndarray, np.ndarray]],
               norm_stats: Mapping[str, Mapping[str, Any]], camera_map: Mapping[str, str | None],
               norm_mode: str = "zscore", unnormalized_state_dims: Sequence[int] = (),
               unnormalized_action_dims: Sequence[int] = (), default_prompt: str | None = None,
               dataset: str | None = None, num_steps: int = 10, seed: int = 0, device=None,
               metadata: Mapping[str, Any] | None = None, clip_actions: bool = True):
    if norm_mode not in normalize_lib.MODES:
      raise ValueError(f"norm_mode {norm_mode!r}: expected one of {normalize_lib.MODES}.")
    if int(num_steps) < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    self._config = config.replace(activation_batch_axes=())
    self._model = Pi0(self._config)
    self._device = device or jax.devices()[0]
    self._params = jax.device_put(params, self._device)
    self._tokenize = tokenizer.tokenize if hasattr(tokenizer, "tokenize") else tokenizer
    self._token_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self.dataset, self.default_prompt, self.num_steps = dataset, default_prompt, int(num_steps)
    self.metadata = dict(metadata or {})
    self.norm_mode = norm_mode
    self._state_norm = _stats_arrays(norm_stats, "state")
    self._action_norm = _stats_arrays(norm_stats, "actions")
    self.state_dim = int(self._state_norm["mean"].shape[0])
    self._action_dim = int(self._action_norm["mean"].shape[0])
    for what, dim in (("state", self.state_dim), ("action", self._action_dim)):
      if dim > self._config.action_dim:
        raise ValueError(f"norm_stats: {what} has {dim} dims, more than the model's action_dim "
                         f"{self._config.action_dim}.")
    self._state_skip = normalize_lib.skip_mask(self.state_dim, unnormalized_state_dims)
    self._action_skip = normalize_lib.skip_mask(self._action_dim, unnormalized_action_dims)
    # Actions are clipped to the range the robot produced in the training data (the statistics' min/max),
    # when those are known: a flow sample can overshoot it slightly, a robot must not.
    self.action_range = ((self._action_norm["min"], self._action_norm["max"])
                         if clip_actions and "min" in self._action_norm and "max" in self._action_norm else None)
    # Slots the model lacks are dropped, as the training pipeline drops them (it fills config.image_keys only).
    self._camera_map = {slot: camera_map.get(slot) for slot in self._config.image_keys}
    if not any(self._camera_map.values()):
      raise ValueError(f"camera_map {dict(camera_map)} fills none of the model's camera slots "
                       f"{list(self._config.image_keys)}.")
    self._key, self._draws = jax.random.key(seed), 0
    self._compiled: dict[tuple, Any] = {}

  # Construction from an export directory.

  @classmethod
  def load(cls, export_dir: str, *, dataset: str | None = None, num_steps: int = 10, seed: int = 0,
           device=None, clip_actions: bool = True) -> "Policy":
    """Loads what `pi0_jax.export` wrote. `dataset` picks whose statistics and cameras to use (default: the
    only one; an error lists the choices otherwise). The params go to `device` (default: the first device)."""
    from pi0_jax.data.tokenizer import PromptTokenizer  # pylint: disable=g-import-not-at-top
    from pi0_jax.export import FORMAT  # pylint: disable=g-import-not-at-top
    export_dir = os.path.abspath(os.fspath(export_dir))
    if not os.path.isdir(export_dir):
      raise FileNotFoundError(f"export directory {export_dir} does not exist.")
    metadata = _read_json(os.path.join(export_dir, "metadata.json"), "export metadata")
    if int(metadata.get("format", 0)) > FORMAT:
      raise ValueError(f"{export_dir}: export format {metadata.get('format')} is newer than this pi0_jax reads "
                       f"({FORMAT}); update pi0_jax.")
    config = Pi0Config.from_dict(_read_json(os.path.join(export_dir, "model_config.json"), "model config"))
    stats_path = os.path.join(export_dir, "norm_stats.json")
    name, entry = _dataset_choice(_read_json(stats_path, "norm statistics"), metadata, dataset, stats_path)
    layout = _dataset_layout(metadata, name)
    stats = entry["norm_stats"]
    for key, want in (("state", layout["state_dim"]), ("actions", layout["action_dim"])):
      got = len(stats[key]["mean"])
      if want is not None and got != want:
        raise ValueError(f"{stats_path}: dataset {name!r} has {key} statistics for {got} dims, but its spec says "
                         f"{want}.")
    tokenizer = PromptTokenizer(os.path.join(export_dir, "tokenizer.model"), config.max_token_len)
    device = device or jax.devices()[0]
    params = _restore_export_params(os.path.join(export_dir, "params"), config, device)
    return cls(config, params, tokenizer=tokenizer, norm_stats=stats, camera_map=layout["cameras"],
               norm_mode=entry.get("norm_mode", "zscore"),
               unnormalized_state_dims=entry.get("unnormalized_state_dims", ()),
               unnormalized_action_dims=entry.get("unnormalized_action_dims", ()), default_prompt=layout["prompt"],
               dataset=name, num_steps=num_steps, seed=seed, device=device, metadata=metadata,
               clip_actions=clip_actions)

  # Properties.

  @property
  def config(self) -> Pi0Config:
    return self._config

  @property
  def params(self):
    return self._params

  @property
  def action_dim(self) -> int:
    """The robot's action dims: the last axis of `infer`'s actions (the model's own is config.action_dim)."""
    return self._action_dim

  @property
  def action_horizon(self) -> int:
    return self._config.action_horizon

  @property
  def camera_keys(self) -> tuple[str, ...]:
    """The raw observation keys `infer` needs in obs["images"], in the model's slot order."""
    return tuple(k for k in self._camera_map.values() if k is not None)

  @property
  def camera_map(self) -> dict[str, str | None]:
    """Model camera slot -> raw observation key (None: an empty, masked slot)."""
    return dict(self._camera_map)

  @property
  def num_compiled(self) -> int:
    """How many sampler executables have been compiled (one per batch size and num_steps)."""
    return len(self._compiled)

  # Input transforms.

  def _tokens(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    if prompt not in self._token_cache:
      ids, mask = self._tokenize(prompt)
      ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
      want = (self._config.max_token_len,)
      if ids.shape != want or mask.shape != want:
        raise ValueError(f"tokenizer returned shapes {ids.shape}, {mask.shape} for {prompt!r}; expected {want}.")
      self._token_cache[prompt] = (ids, mask)
    return self._token_cache[prompt]

  def _prompts(self, obs: Mapping[str, Any], batch: int, batched: bool) -> list[str]:
    prompt = obs.get("prompt", self.default_prompt)
    if prompt is None:
      raise ValueError("obs['prompt']: missing; expected a str (or, for batched input, a list of "
                       f"{batch} str).")
    if isinstance(prompt, (str, bytes)):
      prompts = [prompt] * batch
    elif batched and isinstance(prompt, Sequence) or isinstance(prompt, np.ndarray):
      prompts = list(np.asarray(prompt, object).reshape(-1))
      if len(prompts) != batch:
        raise ValueError(f"obs['prompt']: {len(prompts)} prompts for a batch of {batch}; expected one str or "
                         f"{batch}.")
    else:
      raise ValueError(f"obs['prompt']: expected a str{' or a list of ' + str(batch) + ' str' if batched else ''}, "
                       f"got {type(prompt).__name__}.")
    out = []
    for p in prompts:
      if isinstance(p, bytes):
        p = p.decode("utf-8")
      if not isinstance(p, str):
        raise ValueError(f"obs['prompt']: expected str prompts, got {type(p).__name__}.")
      out.append(p)
    return out

  def prepare(self, obs: Mapping[str, Any]) -> tuple[Observation, bool]:
    """Raw observation dict -> (the model's Observation as numpy arrays, whether the input was batched)."""
    if not isinstance(obs, Mapping):
      raise ValueError(f"obs: expected a dict with 'images', 'state' and 'prompt', got {type(obs).__name__}.")
    if "state" not in obs:
      raise ValueError(f"obs['state']: missing; expected float [{self.state_dim}] or [batch, {self.state_dim}].")
    state = np.asarray(obs["state"])
    if state.ndim not in (1, 2) or state.shape[-1] != self.state_dim or not (
        np.issubdtype(state.dtype, np.floating) or np.issubdtype(state.dtype, np.integer)):
      raise ValueError(f"obs['state']: shape {state.shape}, dtype {state.dtype}; expected real numbers of shape "
                       f"[{self.state_dim}] or [batch, {self.state_dim}] (dataset {self.dataset!r}).")
    if not np.all(np.isfinite(state)):
      raise ValueError(f"obs['state']: non-finite values in {state.tolist()}.")
    batched = state.ndim == 2
    state = state if batched else state[None]
    batch = state.shape[0]

    raw_images = obs.get("images")
    if not isinstance(raw_images, Mapping):
      raise ValueError(f"obs['images']: expected a dict {{camera key: uint8 image}} with keys "
                       f"{list(self.camera_keys)}, got {type(raw_images).__name__}.")
    r = self._config.image_resolution
    images, masks = {}, {}
    for slot, key in self._camera_map.items():
      if key is None:
        images[slot] = np.zeros((batch, r, r, 3), np.float32)
        masks[slot] = np.zeros((batch,), bool)
        continue
      if key not in raw_images:
        raise ValueError(f"obs['images']: missing camera {key!r} (model slot {slot!r}); expected uint8 images for "
                         f"{list(self.camera_keys)}, got keys {sorted(raw_images)}.")
      image = np.asarray(raw_images[key])
      want = "[batch, h, w, 3]" if batched else "[h, w, 3]"
      if image.dtype != np.uint8:
        raise ValueError(f"obs['images'][{key!r}]: dtype {image.dtype}, expected uint8 {want} (RGB 0..255).")
      if image.ndim != (4 if batched else 3) or image.shape[-1] != 3 or (batched and image.shape[0] != batch):
        raise ValueError(f"obs['images'][{key!r}]: shape {image.shape}, expected uint8 {want}"
                         + (f" with batch {batch} (the state's)" if batched else " (unbatched, like the state)") + ".")
      if image.shape[-3] == 0 or image.shape[-2] == 0:
        raise ValueError(f"obs['images'][{key!r}]: empty image of shape {image.shape}.")
      mask = np.ones((batch,), bool)
      images[slot] = _model_range(to_model_images(image if batched else image[None], r), mask)
      masks[slot] = mask

    tokens = [self._tokens(p) for p in self._prompts(obs, batch, batched)]
    norm_state = normalize_lib.normalize_np(state, self._state_norm, self.norm_mode, self._state_skip)
    padded = np.zeros((batch, self._config.action_dim), np.float32)
    padded[:, :self.state_dim] = norm_state
    observation = Observation(images=images, image_masks=masks, state=padded,
                              tokenized_prompt=np.stack([t for t, _ in tokens]),
                              tokenized_prompt_mask=np.stack([m for _, m in tokens]))
    return observation, batched

  def unnormalize_actions(self, normalized) -> np.ndarray:
    """Model actions [..., action_dim] (normalised, padded) -> robot actions [..., A], unnormalised."""
    actions = np.asarray(normalized, np.float32)[..., :self._action_dim]
    actions = normalize_lib.unnormalize_np(actions, self._action_norm, self.norm_mode, self._action_skip)
    if self.action_range is not None:
      actions = np.clip(actions, *self.action_range)
    return actions

  # Sampling.

  def _executable(self, observation: Observation, noise_or_draw, num_steps: int, rtc: tuple = ()):
    """The compiled sampler for these input shapes: fn(params, observation, noise or draw index, *rtc) -> actions.

    rtc: () or (prev_actions [B, H, action_dim] normalised, inference_delay int32 [B], execution_horizon int32 [B]).
    """
    draw = np.ndim(noise_or_draw) == 0
    leaves = jax.tree.leaves(observation)
    key = (num_steps, draw, bool(rtc), tuple((tuple(x.shape), np.dtype(x.dtype).str) for x in leaves))
    if key not in self._compiled:
      model, config, batch, base_key = self._model, self._config, observation.batch_size, self._key

      def sample(params, obs, noise_or_draw, *rtc):
        noise = noise_or_draw
        kw = dict(zip(("prev_actions", "inference_delay", "execution_horizon"), rtc))
        if draw:  # Draw number i of this policy: noise from fold_in(key(seed), i), made inside the executable.
          noise = jax.random.normal(jax.random.fold_in(base_key, noise_or_draw),
                                    (batch, config.action_horizon, config.action_dim), jnp.float32)
        return model.apply({"params": params}, obs, method="sample_actions", noise=noise, num_steps=num_steps, **kw)

      self._compiled[key] = jax.jit(sample).lower(self._params, observation, noise_or_draw, *rtc).compile()
    return self._compiled[key]

  def _noise(self, noise, batch: int, batched: bool):
    """Checked noise [B, H, action_dim] as float32 numpy, or (noise None) the number of this draw."""
    if noise is None:
      self._draws += 1
      return np.uint32(self._draws - 1)
    shape = (batch, self._config.action_horizon, self._config.action_dim)
    noise = np.asarray(noise, np.float32)
    if not batched and noise.shape == shape[1:]:
      noise = noise[None]
    if noise.shape != shape:
      want = f"{list(shape[1:])} (or {list(shape)})" if not batched else f"{list(shape)}"
      raise ValueError(f"noise: shape {noise.shape}, expected {want}: (batch,) action_horizon, the model's "
                       "action_dim.")
    return noise

  def sample(self, observation: Observation, noise=None, *, num_steps: int | None = None) -> jax.Array:
    """Normalised, padded actions [B, H, action_dim] for a model Observation (see `prepare`).

    `noise` [B, H, action_dim] makes it deterministic; None draws it from the policy's key: the i-th draw of a
    policy uses fold_in(key(seed), i), so a fresh policy with the same seed repeats the same sequence.
    """
    observation.validate(self._config)
    num_steps = self.num_steps if num_steps is None else int(num_steps)
    if num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    noise = self._noise(noise, observation.batch_size, True)
    return self._executable(observation, noise, num_steps)(self._params, observation, noise)

  def _rtc_inputs(self, prev_actions, inference_delay: int, batch: int, batched: bool) -> tuple:
    """Real-time chunking inputs for the sampler from the robot's plan still to come ([n, A] or [B, n, A])."""
    horizon, prev = self._config.action_horizon, np.asarray(prev_actions, np.float32)
    prev = prev if batched else prev[None]
    if prev.ndim != 3 or prev.shape[0] != batch or prev.shape[1] > horizon or prev.shape[2] != self._action_dim:
      raise ValueError(f"prev_actions: shape {np.shape(prev_actions)}, expected [n, {self._action_dim}] (or "
                       f"[{batch}, n, {self._action_dim}]) with n <= action_horizon {horizon}.")
    n, d = prev.shape[1], int(inference_delay)
    limit = min(n, horizon - n) if self._config.rtc_max_delay == 0 else min(n, self._config.rtc_max_delay)
    if not 0 <= d <= limit:
      raise ValueError(f"inference_delay {d}: expected 0 <= d <= {limit} for {n} planned actions (guided RTC needs "
                       "d <= n <= H - d; a model trained for RTC d <= its rtc_max_delay).")
    padded = np.zeros((batch, horizon, self._config.action_dim), np.float32)
    padded[:, :n, :self._action_dim] = normalize_lib.normalize_np(prev, self._action_norm, self.norm_mode,
                                                                  self._action_skip)
    return padded, np.full((batch,), d, np.int32), np.full((batch,), horizon - n, np.int32)

  def infer(self, obs: Mapping[str, Any], *, noise=None, num_steps: int | None = None, prev_actions=None,
            inference_delay: int = 0) -> dict[str, Any]:
    """Raw observation -> {"actions": float32 [H, A] ([B, H, A] for batched input), "infer_ms": float}.

    obs: {"images": {camera key: uint8 [h, w, 3] or [B, h, w, 3]}, "state": [S] or [B, S], "prompt": str or a
    list of B str}; `camera_keys` lists the keys needed (others are ignored). `noise`: [H, action_dim] (or
    [B, H, action_dim]) for a deterministic draw. infer_ms is the wall time of the whole call, measured after
    the result is ready, without the one-off compilation for a new batch size.

    Real-time chunking (pi0_jax.realtime): prev_actions [n, A] (or [B, n, A]), robot units, is the plan still to
    come for this observation's step onwards (n <= H; the execution horizon is H - n) and inference_delay d the
    number of those the robot executes while this call runs; the chunk continues them (sample_actions).
    """
    start = time.perf_counter()
    observation, batched = self.prepare(obs)
    num_steps = self.num_steps if num_steps is None else int(num_steps)
    if num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    noise = self._noise(noise, observation.batch_size, batched)
    rtc = () if prev_actions is None else self._rtc_inputs(prev_actions, inference_delay, observation.batch_size,
                                                           batched)
    compile_start = time.perf_counter()
    run = self._executable(observation, noise, num_steps, rtc)
    compile_s = time.perf_counter() - compile_start
    normalized = run(self._params, observation, noise, *rtc)
    normalized.block_until_ready()
    actions = self.unnormalize_actions(jax.device_get(normalized))
    elapsed = time.perf_counter() - start - compile_s
    return {"actions": actions if batched else actions[0], "infer_ms": 1000.0 * elapsed}


def _stats_arrays(norm_stats: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, np.ndarray]:
  if key not in norm_stats:
    raise ValueError(f"norm_stats: no {key!r} entry; expected {{'state': {{...}}, 'actions': {{...}}}}.")
  stats = {k: np.asarray(v, np.float32) for k, v in norm_stats[key].items() if k != "count"}
  missing = {"mean", "std", "q01", "q99"} - set(stats)
  if missing:
    raise ValueError(f"norm_stats[{key!r}]: missing {sorted(missing)}.")
  lengths = {k: v.shape for k, v in stats.items()}
  if len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
    raise ValueError(f"norm_stats[{key!r}]: every statistic must be one vector of the same length, got {lengths}.")
  return stats
