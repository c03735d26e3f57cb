"""Every `--config.*` override the README and launch scripts show parses with the real flag parser and configs;
bad values are refused with one message before anything is built."""

from __future__ import annotations

import glob
import os
import re

import pytest
from absl import flags
from ml_collections import config_flags

from pi0_jax.train import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
_FLAG = re.compile(r"--config\.([\w.]+)=(\"[^\"]*\"|'[^']*'|[^\s`]+)")
# Overrides users reach for that the docs do not spell out (each once failed: a None default or a list field).
EXTRA = ["--config.ema_decay=0.99", "--config.data.skip_bad_episodes=True", "--config.init.openpi_params=",
         "--config.device_peak_flops=1e12", "--config.optimizer.freeze=.*img.*", "--config.data.min_episode_length=1"]


def _documented_flags() -> list[str]:
  found = []
  for path in [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "launch", "*.sh"))]:
    with open(path) as f:
      for key, value in _FLAG.findall(f.read()):
        if value != "...":  # The README's generic `--config.x.y=...`.
          found.append((key, value[1:-1] if value[:1] in "\"'" else value))
  return found


def _parse(config_file: str, *overrides: str):
  argv = ["train", f"--config={config_file}", *overrides]
  fv = flags.FlagValues()  # The trainer's flag, as pi0_jax.train.loop defines it, on its own FlagValues.
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return holder.value


def _sample(value, config, key):
  """A shell variable ($batch) becomes a value of the field's type."""
  if "$" not in value:
    return value
  current = config
  for name in key.split("."):
    current = current[name]
  return {bool: "True", int: "4", float: "0.5"}.get(type(current), "/tmp/x")


def test_docs_show_overrides():
  keys = {k for k, _ in _documented_flags()}
  assert {"global_batch", "total_steps", "init.paligemma_npz", "mesh"} <= keys


@pytest.mark.parametrize("config_file", CONFIGS, ids=os.path.basename)
def test_every_documented_override_parses(config_file):
  base = _parse(config_file)
  assert validate.config_problems(base) == [], config_file
  documented = [(k, _sample(v, base, k)) for k, v in _documented_flags()]
  extra = [tuple(f[len("--config."):].split("=", 1)) for f in EXTRA]
  for key, value in documented + extra:
    config = _parse(config_file, f"--config.{key}={value}")
    got = config
    for name in key.split("."):
      got = got[name]
    if key == "mesh":
      assert got == (("data", 2), ("fsdp", -1))
    elif key != "init.openpi_params":
      assert str(got) == value or got == type(got)(value), (key, value, got)
  assert _parse(config_file, "--config.ema_decay=0.99").ema_decay == pytest.approx(0.99)
  assert _parse(config_file, "--config.data.skip_bad_episodes=True").data.skip_bad_episodes is True


def test_data_defaults_reach_the_pipeline_settings():
  from pi0_jax.data import config as data_config
  from pi0_jax.model.config import get_preset
  c = _parse(CONFIGS[0], "--config.data.skip_bad_episodes=True", "--config.data.min_episode_length=2")
  settings = data_config.settings_from_config(c.data, get_preset("tiny"), seed=3)
  assert settings.skip_bad_episodes is True and settings.min_episode_length == 2 and settings.seed == 3


@pytest.mark.parametrize("override, message", [
    ("--config.checkpoint_every=0", r"config.checkpoint_every=0: expected an integer >= 1"),
    ("--config.log_every=-1", r"config.log_every=-1: expected an integer >= 1"),
    ("--config.global_batch=0", r"config.global_batch=0: expected an integer >= 1"),
    ("--config.total_steps=0", r"config.total_steps=0: expected an integer >= 1"),
    ("--config.grad_accum_steps=0", r"config.grad_accum_steps=0"),
    ("--config.keep_checkpoints=0", r"config.keep_checkpoints=0"),
    ("--config.ema_decay=1.5", r"config.ema_decay=1.5: expected a float in \[0, 1\)"),
    ("--config.mesh=(('data', 0), ('fsdp', -1))", r"config.mesh=.*sizes must be integers >= 1"),
    ("--config.mesh=(('x', 2), ('fsdp', -1))", r"config.data_axes=\('data', 'fsdp'\) names \['data'\]"),
    ("--config.preemption_sync=never", r"config.preemption_sync='never': expected 'auto', 'sync_point' or"),
])
def test_bad_values_are_refused_before_anything_is_built(override, message, tmp_path):
  from pi0_jax.train import loop
  config = _parse(os.path.join(ROOT, "configs", "pi0_tiny.py"), override)
  with pytest.raises(ValueError, match=message):
    loop.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")  # Refused before the workdir, data or model exist.


def test_one_message_lists_every_problem():
  config = _parse(os.path.join(ROOT, "configs", "pi0_tiny.py"), "--config.checkpoint_every=0", "--config.log_every=0")
  with pytest.raises(ValueError) as e:
    validate.check_config(config)
  assert "checkpoint_every=0" in str(e.value) and "log_every=0" in str(e.value)


def test_two_init_sources_are_refused_before_anything_is_built(tmp_path):
  from pi0_jax.train import loop
  config = _parse(os.path.join(ROOT, "configs", "pi0_tiny.py"), "--config.init.openpi_params=/ckpt/pi0_base",
                  "--config.init.export=/exports/run")
  with pytest.raises(ValueError, match=r"config.init: \['openpi_params', 'export'\] are set"):
    loop.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
