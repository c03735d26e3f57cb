"""Serves an export to openpi robot clients: `python -m pi0_jax.serve --checkpoint=EXPORT --port=8000`.

The export (written by `python -m pi0_jax.export`) is loaded once; the sampler is compiled at start-up for
batch 1 (--warmup) and on first use for any other batch size. The protocol and error handling are in
pi0_jax.serve.server. SIGTERM or Ctrl-C stop it cleanly (exit status 0).
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "The export directory to serve (written by pi0_jax.export).")
  flags.DEFINE_string("host", "0.0.0.0", "Interface to listen on.")
  flags.DEFINE_integer("port", 8000, "TCP port (0: any free port, printed at start).")
  flags.DEFINE_string("dataset", None, "Whose norm stats and cameras to use, for an export of a mixture.")
  flags.DEFINE_integer("num_steps", 10, "Flow-matching Euler steps per sample.")
  flags.DEFINE_integer("seed", 0, "Seed of the policy's noise draws.")
  flags.DEFINE_list("key_map", [], "request_key=policy_key renames, e.g. observation/image=images/image,"
                    "observation/state=state (policy keys: images/<camera>, state, prompt). Default: the policy's "
                    "own keys plus openpi's observation/<camera> and observation/state.")
  flags.DEFINE_bool("warmup", True, "Compile the batch-1 sampler before accepting clients.")
  flags.DEFINE_integer("max_message_mb", 256, "Largest request frame accepted, in MiB.")


def warm_up(policy) -> float:
  """Compiles the batch-1 sampler with a blank observation; returns the seconds it took."""
  start = time.perf_counter()
  image = np.zeros((policy.config.image_resolution, policy.config.image_resolution, 3), np.uint8)
  obs = {"images": {k: image for k in policy.camera_keys}, "state": np.zeros(policy.state_dim, np.float32),
         "prompt": policy.default_prompt or ""}
  policy.infer(obs)  # The path robots use: noise drawn by the policy.
  return time.perf_counter() - start


def main(argv) -> None:
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from pi0_jax import logs  # pylint: disable=g-import-not-at-top
  from pi0_jax.policy import Policy  # pylint: disable=g-import-not-at-top
  from pi0_jax.serve.server import KeyMap, PolicyServer  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f.checkpoint:
    raise app.UsageError("--checkpoint=EXPORT_DIR is required (a directory written by pi0_jax.export).")
  logs.quiet_libraries()
  logging.getLogger().setLevel(logging.INFO)
  try:
    policy = Policy.load(f.checkpoint, dataset=f.dataset, num_steps=f.num_steps, seed=f.seed)
    key_map = KeyMap.parse(f.key_map, policy.camera_keys)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"pi0_jax.serve: {e}")
  if f.warmup:
    logging.info("compiled the batch-1 sampler in %.1f s", warm_up(policy))
  server = PolicyServer(policy, host=f.host, port=f.port, key_map=key_map,
                        max_message_bytes=f.max_message_mb << 20)
  server.serve_forever()


def cli() -> None:
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.serve`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(main, _define_flags, __name__)


if __name__ == "__main__":
  cli()
