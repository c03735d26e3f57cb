"""Batches: the model's Observation exactly; camera slots, images at eval, augmentation, determinism, config."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import test_data_helpers as helpers
from pi0_jax.data import images, pipeline
from pi0_jax.model.config import DEFAULT_IMAGE_KEYS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  train = [helpers.marked_episode(6, i, image_size=32, instruction=f"task number {i % 2}") for i in range(4)]
  return helpers.write(root, "pi0_test_pipeline", train, val=train[:1]), train, root


def _make(d, root, config, *, train=True, global_batch=4, seed=0, **overrides):
  make = pipeline.make_train_data if train else pipeline.make_eval_data
  return make(helpers.data_config({"p": d}, root / "stats", **overrides), config, global_batch=global_batch,
              seed=seed, tokenize_fn=helpers.fake_tokenize(config.max_token_len))


def test_batch_is_exactly_the_models_observation(dataset):
  d, train, root = dataset
  config = helpers.tiny_config()
  batch = _make(d, root, config).next_host_batch()
  obs = batch["observation"]
  obs.validate(config)
  b, h, a, r = 4, config.action_horizon, config.action_dim, config.image_resolution
  assert set(batch) == {"observation", "actions", "action_pad_mask", "action_dim_mask", "dataset_index"}
  want = {"actions": ((b, h, a), np.float32), "action_pad_mask": ((b, h), np.bool_),
          "action_dim_mask": ((b, a), np.bool_), "dataset_index": ((b,), np.int32)}
  for key, (shape, dtype) in want.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  assert set(obs.images) == set(config.image_keys) == set(obs.image_masks)
  for slot in config.image_keys:
    assert obs.images[slot].shape == (b, r, r, 3) and obs.images[slot].dtype == np.float32
    assert obs.image_masks[slot].dtype == np.bool_ and obs.image_masks[slot].all()
    assert obs.images[slot].min() >= -1 and obs.images[slot].max() <= 1 and obs.images[slot].std() > 0.05
  assert obs.state.dtype == np.float32 and obs.tokenized_prompt.dtype == np.int32
  assert obs.tokenized_prompt_mask.dtype == np.bool_
  np.testing.assert_array_equal(obs.tokenized_prompt[:, 0], 2)  # The stand-in tokenizer's BOS: prompts arrived.


def test_empty_camera_slot_is_zero_and_masked(dataset):
  d, _, root = dataset
  config = helpers.tiny_config(image_keys=DEFAULT_IMAGE_KEYS)  # The Meta-World spec leaves the right wrist empty.
  obs = _make(d, root, config).next_host_batch()["observation"]
  obs.validate(config)
  np.testing.assert_array_equal(obs.images["right_wrist_0_rgb"], 0)
  np.testing.assert_array_equal(obs.image_masks["right_wrist_0_rgb"], False)
  assert obs.image_masks["base_0_rgb"].all() and obs.image_masks["left_wrist_0_rgb"].all()


def test_eval_images_are_the_stored_pixels(dataset):
  """No augmentation at evaluation: at the stored resolution, images are exactly uint8 / 127.5 - 1."""
  d, train, root = dataset
  config = helpers.tiny_config()
  assert config.image_resolution == 32
  batch = _make(d, root, config, train=False, global_batch=6,
                datasets=[dict(name="p", dir=d, spec=helpers.SPEC, eval_split="train")]).next_host_batch()
  first = train[0]["observation"]
  as_model = lambda x: x.astype(np.float32) / np.float32(127.5) - np.float32(1)  # noqa: E731
  np.testing.assert_array_equal(batch["observation"].images["base_0_rgb"], as_model(first["image"]))
  np.testing.assert_array_equal(batch["observation"].images["left_wrist_0_rgb"], as_model(first["wrist_image"]))


def test_resize_with_pad_keeps_aspect_ratio():
  wide = np.full((16, 32, 3), 200, np.uint8)
  out = images.decode_and_resize(tf.io.encode_png(wide), tf.constant(True), 32).numpy()
  np.testing.assert_array_equal(out[:8], 0)  # Black bars above and below.
  np.testing.assert_array_equal(out[24:], 0)
  np.testing.assert_allclose(out[8:24], 200, atol=1e-3)
  empty = images.decode_and_resize(tf.constant(""), tf.constant(False), 32).numpy()
  np.testing.assert_array_equal(empty, np.zeros((32, 32, 3)))


def _augmenter(image, params=images.AugmentParams()):
  """frame seed -> {slot: augmented image}, for a base, a wrist and an empty slot all showing `image`."""
  encoded = tf.io.encode_png(image)
  slots = {"base_0_rgb": encoded, "left_wrist_0_rgb": encoded, "right_wrist_0_rgb": tf.constant("")}
  masks = {"base_0_rgb": tf.constant(True), "left_wrist_0_rgb": tf.constant(True),
           "right_wrist_0_rgb": tf.constant(False)}
  fn = tf.function(lambda seed: images.process_frame_images(slots, masks, resolution=image.shape[0],
                                                            frame_seed=seed, params=params))
  return lambda seed: {k: images.to_model_range(v.numpy()[None], [masks[k].numpy()])[0]
                       for k, v in fn(tf.constant(seed, tf.int64)).items()}


def _augmented(image, seed, params=images.AugmentParams()):
  return _augmenter(image, params)(seed)


def test_augmentation_geometry_only_off_the_wrist():
  yy, xx = np.mgrid[:32, :32]
  gray = np.repeat(((np.sin(xx / 2.0) * np.cos(yy / 3.0) + 1) * 100 + 20)[..., None], 3, -1).astype(np.uint8)
  original = gray[..., 0].astype(np.float64).ravel()
  out = _augmented(gray, [1, 2])
  # On a gray image the photometric ops are affine per pixel: the wrist camera's pixels stay perfectly
  # correlated with the original (no crop, no rotation); the scene camera's are moved.
  wrist = np.corrcoef(original, out["left_wrist_0_rgb"][..., 0].ravel())[0, 1]
  scene = np.corrcoef(original, out["base_0_rgb"][..., 0].ravel())[0, 1]
  assert wrist > 0.9999 and scene < 0.99, (wrist, scene)
  np.testing.assert_array_equal(out["right_wrist_0_rgb"], 0)  # An empty slot stays exactly zero.
  assert all(v.min() >= -1 and v.max() <= 1 for v in out.values())
  again = _augmented(gray, [1, 2])
  other = _augmented(gray, [1, 3])
  np.testing.assert_array_equal(again["base_0_rgb"], out["base_0_rgb"])
  assert not np.allclose(other["base_0_rgb"], out["base_0_rgb"])


def test_every_op_has_its_own_seed():
  """Brightness and contrast draws are independent across frames, and neither moves when the other is off."""
  image = np.full((32, 32, 3), 0.4, np.float32)
  image[:, 16:] = 0.6  # Two gray levels: the mean reads the brightness delta, their gap the contrast factor.
  no_contrast = dataclasses.replace(images.AugmentParams(), contrast=(1.0, 1.0))
  wrist = 1  # Slots sorted: base, left wrist, right wrist. Wrist cameras get photometric ops only.
  runner = lambda p: tf.function(lambda seed: images.augment(  # noqa: E731
      tf.constant(image), images.op_seeds(seed, 3)[wrist], p, geometric=False))
  full, partial = runner(images.AugmentParams()), runner(no_contrast)
  deltas, factors, deltas_alone = [], [], []
  for i in range(100):
    y = full(tf.constant([i, 7])).numpy()[..., 0]
    deltas.append(y.mean() - 0.5)
    factors.append((y[:, 16:].mean() - y[:, :16].mean()) / 0.2)
    deltas_alone.append(partial(tf.constant([i, 7])).numpy().mean() - 0.5)
  deltas, factors = np.array(deltas), np.array(factors)
  assert 0.15 < deltas.max() <= 0.2 + 1e-6 and -0.2 - 1e-6 <= deltas.min() < -0.15
  assert 1.15 < factors.max() <= 1.2 + 1e-4 and 0.8 - 1e-4 <= factors.min() < 0.85
  assert abs(np.corrcoef(deltas, factors)[0, 1]) < 0.3  # One shared seed would make this +-1.
  np.testing.assert_allclose(deltas_alone, deltas, atol=1e-5)
  seeds = images.op_seeds(tf.constant([3, 4]), 3).numpy().reshape(-1, 2)
  assert len({tuple(s) for s in seeds}) == 3 * 6  # A distinct seed per (slot, op).


def test_same_seed_same_stream(dataset):
  d, _, root = dataset
  config = helpers.tiny_config()
  a, b, c = (_make(d, root, config, seed=s) for s in (11, 11, 12))
  for _ in range(2):
    first = a.next_host_batch()
    helpers.assert_batches_equal(first, b.next_host_batch())
  assert not np.array_equal(first["observation"].images["base_0_rgb"],
                            c.next_host_batch()["observation"].images["base_0_rgb"])


def test_config_errors_name_the_field(dataset):
  d, _, root = dataset
  config = helpers.tiny_config()
  with pytest.raises(ValueError, match=r"unknown fields \['shuffle_bufer'\]"):
    _make(d, root, config, shuffle_bufer=10)
  with pytest.raises(ValueError, match="norm_mode 'minmax'"):
    _make(d, root, config, norm_mode="minmax")
  with pytest.raises(ValueError, match=r"datasets\[0\] \('p'\): give `dir` or `data_dir`"):
    _make(d, root, config, datasets=[dict(name="p")])
  with pytest.raises(ValueError, match="No standardisation spec for dataset 'p'"):
    _make(d, root, config, datasets=[dict(name="p", dir=d)])


def test_data_dir_and_version_lookup(dataset):
  d, _, root = dataset
  config = helpers.tiny_config()
  data = _make(d, root, config, datasets=[dict(name="pi0_test_pipeline", data_dir=str(root), spec=helpers.SPEC)])
  assert data.plans[0].identity["version"] == "1.0.0"
  data.next_host_batch()["observation"].validate(config)
  by_name = _make(d, root, config, datasets=[dict(name="p", dir=str(root / "pi0_test_pipeline"), spec=helpers.SPEC)])
  assert by_name.plans[0].identity == data.plans[0].identity
  with pytest.raises(FileNotFoundError, match="holds no dataset_info.json"):
    _make(d, root, config, datasets=[dict(name="p", dir=str(root), spec=helpers.SPEC)])


def test_warp_and_colour_matrix_identities():
  rng = np.random.default_rng(1)
  image = tf.constant(rng.uniform(size=(16, 16, 3)), tf.float32)
  same = images.warp(image, images.warp_matrix(16, 1.0, tf.zeros([2]), tf.constant(0.0)))
  np.testing.assert_allclose(same.numpy(), image.numpy(), atol=1e-6)
  np.testing.assert_allclose(images.colour_matrix(tf.constant(1.0), tf.constant(0.0)).numpy(), np.eye(3), atol=1e-5)
  gray = (image @ images.colour_matrix(tf.constant(0.0), tf.constant(0.3))).numpy()
  luma = image.numpy() @ np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-5)  # No chroma left: gray.
  # A crop keeping half of each side at offset (8, 0), unrotated, shows the top-right quarter enlarged.
  quarter = images.warp(image, images.warp_matrix(16, 0.5, tf.constant([8.0, 0.0]), tf.constant(0.0))).numpy()
  np.testing.assert_allclose(quarter[0, 0], image.numpy()[0, 8], atol=1e-6)


def test_config_tokenizer_gives_pi0_prompts(dataset, tmp_path):
  """With config.data.tokenizer set, prompts go through PromptTokenizer ([BOS] + prompt + "\\n", padded)."""
  tokenizer = pytest.importorskip("pi0_jax.data.tokenizer")
  d, train, root = dataset
  path = str(tmp_path / "tokenizer.model")
  tokenizer.train_tokenizer([f"task number {i} with words like push pick open close" for i in range(40)], path)
  config = helpers.tiny_config(max_token_len=12)
  data = pipeline.make_eval_data(
      helpers.data_config({"p": d}, root / "stats", tokenizer=path,
                          datasets=[dict(name="p", dir=d, spec=helpers.SPEC, eval_split="train")]),
      config, global_batch=6)
  obs = data.next_host_batch()["observation"]
  want_ids, want_mask = tokenizer.PromptTokenizer(path, 12).tokenize("task number 0")
  np.testing.assert_array_equal(obs.tokenized_prompt, np.tile(want_ids, (6, 1)))
  np.testing.assert_array_equal(obs.tokenized_prompt_mask, np.tile(want_mask, (6, 1)))
  assert obs.tokenized_prompt[0, 0] == tokenizer.BOS_ID and 2 < want_mask.sum() < 12
  data.write_assets(str(tmp_path / "assets"))
  assert (tmp_path / "assets" / "tokenizer.model").read_bytes() == open(path, "rb").read()


def test_loss_on_a_pipeline_batch(dataset):
  """A global sharded batch from the pipeline goes straight into the model's loss (8 devices, data axis)."""
  import jax
  import jax.numpy as jnp
  from pi0_jax.model import Pi0
  from pi0_jax.train import sharding
  import model_utils

  d, _, root = dataset
  config = helpers.tiny_config()
  mesh = sharding.make_mesh([("data", -1)])
  pipe = pipeline.make_train_data(helpers.data_config({"p": d}, root / "stats"), config, global_batch=8, mesh=mesh,
                                  data_axes=("data",), seed=0, tokenize_fn=helpers.fake_tokenize(config.max_token_len))
  batch = pipe.next_batch()
  assert isinstance(batch["actions"], jax.Array) and len(batch["actions"].sharding.device_set) == 8
  params = model_utils.init_params(config)
  loss = jax.jit(lambda p, b: Pi0(config).apply(p, b["observation"], b["actions"], method="compute_loss",
                                                rng=jax.random.key(0), action_pad_mask=b["action_pad_mask"],
                                                action_dim_mask=b["action_dim_mask"]))(params, batch)
  assert loss.shape == (8, config.action_horizon)
  assert bool(jnp.all(jnp.isfinite(loss))) and float(jnp.sum(loss)) > 0
  # Steps past an episode's end contribute nothing.
  np.testing.assert_array_equal(np.asarray(loss)[~np.asarray(batch["action_pad_mask"])], 0)
