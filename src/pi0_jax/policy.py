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
           pi0_jax.data.image_ops, a numpy reimplementation of tf.image.resize_with_pad), rounded to uint8 as
           the pipeline does, then mapped to [-1, 1]; slots the spec leaves empty are zeros and masked out
  state    normalised with the dataset's statistics and norm mode (dims the spec keeps raw pass through),
           then zero-padded to the model's action_dim
  prompt   tokenised in pi0's format (pi0_jax.data.tokenizer.PromptTokenizer) with the exported model
  actions  sampled by the flow (`num_steps` Euler steps), cut to the robot's action dims and unnormalised

The module reads in three parts: loading an export (`Policy.load`), observation preparation (`prepare` and
the functions before the class), and the inference core (`sample`, `infer`: one compiled sampler per input
shape). This module never imports TensorFlow: MuJoCo's EGL rendering crashes in a process that has, and evaluators run
the policy next to the simulator. The sampler is compiled ahead of time once per (batch size, num_steps) and
cached, so a control loop with a fixed batch compiles once.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pi0_jax import export as export_lib, files, logs
from pi0_jax.data import normalize as normalize_lib
from pi0_jax.data.image_ops import resize_with_pad, to_model_images, to_model_range
from pi0_jax.data.tokenizer import TokenCache
from pi0_jax.model import Observation, Pi0, Pi0Config

__all__ = ["Policy", "resize_with_pad", "to_model_images"]


# --- Loading ---------------------------------------------------------------------------------------------


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


def _read_export(export_dir: str, dataset: str | None) -> dict[str, Any]:
  """Everything but the params of an export, checked: config, metadata, the dataset's stats and layout."""
  if not files.isdir(export_dir):
    raise FileNotFoundError(f"export directory {export_dir} does not exist.")
  metadata = export_lib.read_export_metadata(export_dir)
  if int(metadata.get("format", 0)) > export_lib.FORMAT:
    raise ValueError(f"{export_dir}: export format {metadata.get('format')} is newer than this pi0_jax reads "
                     f"({export_lib.FORMAT}); update pi0_jax.")
  config = Pi0Config.from_dict(export_lib.read_export_json(export_dir, "model_config.json"))
  stats_path = os.path.join(export_dir, "norm_stats.json")
  name, entry = export_lib.norm_stats_entry(export_lib.read_export_json(export_dir, "norm_stats.json"), dataset,
                                            metadata=metadata, path=stats_path)
  layout = _dataset_layout(metadata, name)
  for key, want in (("state", layout["state_dim"]), ("actions", layout["action_dim"])):
    got = len(entry["norm_stats"][key]["mean"])
    if want is not None and got != want:
      raise ValueError(f"{stats_path}: dataset {name!r} has {key} statistics for {got} dims, but its spec says "
                       f"{want}.")
  return {"config": config, "metadata": metadata, "dataset": name, "entry": entry, "layout": layout}


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


# --- Observation preparation: raw observation -> model inputs, checked -----------------------------------


def _state_batch(obs: Mapping[str, Any], state_dim: int, dataset: str | None) -> tuple[np.ndarray, bool]:
  """obs["state"] as [B, S] and whether it came batched."""
  if "state" not in obs:
    raise ValueError(f"obs['state']: missing; expected float [{state_dim}] or [batch, {state_dim}].")
  state = np.asarray(obs["state"])
  if state.ndim not in (1, 2) or state.shape[-1] != state_dim or not (
      np.issubdtype(state.dtype, np.floating) or np.issubdtype(state.dtype, np.integer)):
    raise ValueError(f"obs['state']: shape {state.shape}, dtype {state.dtype}; expected real numbers of shape "
                     f"[{state_dim}] or [batch, {state_dim}] (dataset {dataset!r}).")
  if not np.all(np.isfinite(state)):
    raise ValueError(f"obs['state']: non-finite values in {state.tolist()}.")
  batched = state.ndim == 2
  return (state if batched else state[None]), batched


def _prompts(obs: Mapping[str, Any], default: str | None, batch: int, batched: bool) -> list[str]:
  """obs["prompt"] (or the dataset's fixed prompt) as B str."""
  prompt = obs.get("prompt", default)
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


def _camera_image(raw_images: Mapping[str, Any], key: str, batch: int, batched: bool) -> np.ndarray:
  """One raw camera frame (or batch of frames), checked: uint8 [B, h, w, 3]."""
  image = np.asarray(raw_images[key])
  want = "[batch, h, w, 3]" if batched else "[h, w, 3]"
  if image.dtype != np.uint8:
    raise ValueError(f"obs['images'][{key!r}]: dtype {image.dtype}, expected uint8 {want} (RGB 0..255).")
  if image.ndim != (4 if batched else 3) or image.shape[-1] != 3 or (batched and image.shape[0] != batch):
    raise ValueError(f"obs['images'][{key!r}]: shape {image.shape}, expected uint8 {want}"
                     + (f" with batch {batch} (the state's)" if batched else " (unbatched, like the state)") + ".")
  if image.shape[-3] == 0 or image.shape[-2] == 0:
    raise ValueError(f"obs['images'][{key!r}]: empty image of shape {image.shape}.")
  return image if batched else image[None]


def _model_images(raw_images, camera_map: Mapping[str, str | None], resolution: int, batch: int,
                  batched: bool) -> tuple[dict, dict]:
  """({slot: float32 [B, R, R, 3] in [-1, 1]}, {slot: bool [B]}): filled slots resized, empty ones zero."""
  keys = [k for k in camera_map.values() if k is not None]
  if not isinstance(raw_images, Mapping):
    raise ValueError(f"obs['images']: expected a dict {{camera key: uint8 image}} with keys {keys}, got "
                     f"{type(raw_images).__name__}.")
  images, masks = {}, {}
  for slot, key in camera_map.items():
    masks[slot] = np.full((batch,), key is not None)
    if key is None:
      images[slot] = np.zeros((batch, resolution, resolution, 3), np.float32)
    elif key not in raw_images:
      raise ValueError(f"obs['images']: missing camera {key!r} (model slot {slot!r}); expected uint8 images for "
                       f"{keys}, got keys {sorted(raw_images)}.")
    else:
      frames = to_model_images(_camera_image(raw_images, key, batch, batched), resolution)
      images[slot] = to_model_range(frames, masks[slot])
  return images, masks


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
    self._config = config.replace(activation_batch_axes=())
    self._model = Pi0(self._config)
    self._device = device or jax.devices()[0]
    self._params = jax.device_put(params, self._device)
    self._tokens = TokenCache(tokenizer, self._config.max_token_len)
    self.dataset, self.default_prompt, self.num_steps = dataset, default_prompt, _check_steps(num_steps)
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

  @classmethod
  def load(cls, export_dir: str, *, dataset: str | None = None, num_steps: int = 10, seed: int = 0,
           device=None, clip_actions: bool = True) -> "Policy":
    """Loads what `pi0_jax.export` wrote. `dataset` picks whose statistics and cameras to use (default: the
    only one; an error lists the choices otherwise). The params go to `device` (default: the first device)."""
    from pi0_jax.data.tokenizer import PromptTokenizer  # pylint: disable=g-import-not-at-top
    export_dir = files.absolute(export_dir)
    found = _read_export(export_dir, dataset)
    config, entry, layout = found["config"], found["entry"], found["layout"]
    device = device or jax.devices()[0]
    params = export_lib.load_params(export_lib.params_dir(export_dir), config, device=device,
                                    note="the params do not fit model_config.json of the same export")
    return cls(config, params, tokenizer=PromptTokenizer(os.path.join(export_dir, "tokenizer.model"),
                                                         config.max_token_len),
               norm_stats=entry["norm_stats"], camera_map=layout["cameras"],
               norm_mode=entry.get("norm_mode", "zscore"),
               unnormalized_state_dims=entry.get("unnormalized_state_dims", ()),
               unnormalized_action_dims=entry.get("unnormalized_action_dims", ()), default_prompt=layout["prompt"],
               dataset=found["dataset"], num_steps=num_steps, seed=seed, device=device,
               metadata=found["metadata"], clip_actions=clip_actions)

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

  # Input and output transforms.

  def prepare(self, obs: Mapping[str, Any]) -> tuple[Observation, bool]:
    """Raw observation dict -> (the model's Observation as numpy arrays, whether the input was batched)."""
    if not isinstance(obs, Mapping):
      raise ValueError(f"obs: expected a dict with 'images', 'state' and 'prompt', got {type(obs).__name__}.")
    state, batched = _state_batch(obs, self.state_dim, self.dataset)
    batch = state.shape[0]
    images, masks = _model_images(obs.get("images"), self._camera_map, self._config.image_resolution, batch,
                                  batched)
    ids, token_masks = self._tokens.batch(_prompts(obs, self.default_prompt, batch, batched))
    padded = np.zeros((batch, self._config.action_dim), np.float32)
    padded[:, :self.state_dim] = normalize_lib.normalize_np(state, self._state_norm, self.norm_mode,
                                                            self._state_skip)
    observation = Observation(images=images, image_masks=masks, state=padded, tokenized_prompt=ids,
                              tokenized_prompt_mask=token_masks)
    return observation, batched

  def unnormalize_actions(self, normalized) -> np.ndarray:
    """Model actions [..., action_dim] (normalised, padded) -> robot actions [..., A], unnormalised."""
    actions = np.asarray(normalized, np.float32)[..., :self._action_dim]
    actions = normalize_lib.unnormalize_np(actions, self._action_norm, self.norm_mode, self._action_skip)
    if self.action_range is not None:
      actions = np.clip(actions, *self.action_range)
    return actions

  # Inference core.

  def _executable(self, observation: Observation, noise_or_draw, num_steps: int, rtc: tuple = (),
                  mode: str | None = None):
    """The compiled sampler for these input shapes: fn(params, observation, noise or draw index, *rtc) -> actions.

    rtc: () or (prev_actions [B, H, action_dim] normalised, inference_delay int32 [B], execution_horizon int32 [B]);
    mode: its RTC mode ("guided" or "trained").
    """
    draw = np.ndim(noise_or_draw) == 0
    leaves = jax.tree.leaves(observation)
    mode = mode if rtc else None
    key = (num_steps, draw, mode, tuple((tuple(x.shape), np.dtype(x.dtype).str) for x in leaves))
    if key not in self._compiled:
      model, config, batch, base_key = self._model, self._config, observation.batch_size, self._key

      def sample(params, obs, noise_or_draw, *rtc):
        noise = noise_or_draw
        kw = dict(zip(("prev_actions", "inference_delay", "execution_horizon"), rtc), **({"mode": mode} if rtc else {}))
        if draw:  # Draw number i of this policy: noise from fold_in(key(seed), i), made inside the executable.
          noise = jax.random.normal(jax.random.fold_in(base_key, noise_or_draw),
                                    (batch, config.action_horizon, config.action_dim), jnp.float32)
        return model.apply({"params": params}, obs, method="sample_actions", noise=noise, num_steps=num_steps, **kw)

      with logs.compiling(f"the sampler (batch {batch}, {num_steps} steps)"):
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
    num_steps = _check_steps(self.num_steps if num_steps is None else num_steps)
    noise = self._noise(noise, observation.batch_size, True)
    return self._executable(observation, noise, num_steps)(self._params, observation, noise)

  def _rtc_inputs(self, prev_actions, inference_delay: int, batch: int, batched: bool, mode: str) -> tuple:
    """Real-time chunking inputs for the sampler from the robot's plan still to come ([n, A] or [B, n, A])."""
    horizon, prev = self._config.action_horizon, np.asarray(prev_actions, np.float32)
    prev = prev if batched else prev[None]
    if prev.ndim != 3 or prev.shape[0] != batch or prev.shape[1] > horizon or prev.shape[2] != self._action_dim:
      raise ValueError(f"prev_actions: shape {np.shape(prev_actions)}, expected [n, {self._action_dim}] (or "
                       f"[{batch}, n, {self._action_dim}]) with n <= action_horizon {horizon}.")
    n, d = prev.shape[1], int(inference_delay)
    limit = min(n, horizon - n) if mode == "guided" else min(n, self._config.rtc_max_delay)
    if not 0 <= d <= limit:
      raise ValueError(f"inference_delay {d}: expected 0 <= d <= {limit} for {n} planned actions (guided RTC needs "
                       "d <= n <= H - d; a model trained for RTC d <= its rtc_max_delay).")
    padded = np.zeros((batch, horizon, self._config.action_dim), np.float32)
    padded[:, :n, :self._action_dim] = normalize_lib.normalize_np(prev, self._action_norm, self.norm_mode,
                                                                  self._action_skip)
    return padded, np.full((batch,), d, np.int32), np.full((batch,), horizon - n, np.int32)

  def infer(self, obs: Mapping[str, Any], *, noise=None, num_steps: int | None = None, prev_actions=None,
            inference_delay: int = 0, rtc_mode: str | None = None) -> dict[str, Any]:
    """Raw observation -> {"actions": float32 [H, A] ([B, H, A] for batched input), "infer_ms": float}.

    obs: {"images": {camera key: uint8 [h, w, 3] or [B, h, w, 3]}, "state": [S] or [B, S], "prompt": str or a
    list of B str}; `camera_keys` lists the keys needed (others are ignored). `noise`: [H, action_dim] (or
    [B, H, action_dim]) for a deterministic draw. infer_ms is the wall time of the whole call, measured after
    the result is ready, without the one-off compilation for a new batch size.

    Real-time chunking (pi0_jax.realtime): prev_actions [n, A] (or [B, n, A]), robot units, is the plan still to
    come for this observation's step onwards (n <= H; the execution horizon is H - n) and inference_delay d the
    number of those the robot executes while this call runs; the chunk continues them (sample_actions).
    rtc_mode: "guided" or "trained" (default: "trained" for a model with rtc_max_delay > 0, else "guided").
    """
    start = time.perf_counter()
    observation, batched = self.prepare(obs)
    num_steps = _check_steps(self.num_steps if num_steps is None else num_steps)
    noise = self._noise(noise, observation.batch_size, batched)
    mode = rtc_mode or ("trained" if self._config.rtc_max_delay > 0 else "guided")
    if mode not in ("guided", "trained") or (mode == "trained" and self._config.rtc_max_delay == 0):
      raise ValueError(f"rtc_mode {rtc_mode!r}: expected 'guided', or 'trained' for a model with rtc_max_delay > 0 "
                       f"(this one: {self._config.rtc_max_delay}).")
    rtc = () if prev_actions is None else self._rtc_inputs(prev_actions, inference_delay, observation.batch_size,
                                                           batched, mode)
    compile_start = time.perf_counter()
    run = self._executable(observation, noise, num_steps, rtc, mode)
    compile_s = time.perf_counter() - compile_start
    normalized = run(self._params, observation, noise, *rtc)
    normalized.block_until_ready()
    actions = self.unnormalize_actions(jax.device_get(normalized))
    elapsed = time.perf_counter() - start - compile_s
    return {"actions": actions if batched else actions[0], "infer_ms": 1000.0 * elapsed}


def _check_steps(num_steps) -> int:
  if int(num_steps) < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  return int(num_steps)
