"""The trainer's command line with test hooks: `python tests/train_launcher.py --config=... --workdir=... [hooks]`.

--record_batches writes one JSON line per step to WORKDIR/batches.jsonl (process 0): a fingerprint of the
step's global batch, so tests compare data order across a resume or process counts. --kill_after_step=N makes
the process SIGKILL itself right after step N (its checkpoint maybe still being written), like a lost machine.
"""

from __future__ import annotations

import json
import os
import signal

from absl import app, flags

from pi0_jax.train import loop

_RECORD = flags.DEFINE_bool("record_batches", False, "Write WORKDIR/batches.jsonl: step -> batch fingerprint.")
_KILL = flags.DEFINE_integer("kill_after_step", None, "SIGKILL this process right after this step.")


def batch_fingerprint(actions) -> float:
  """A position-weighted sum of the (global) actions: equal streams give equal sequences."""
  import jax
  import jax.numpy as jnp

  def fingerprint(a):
    weights = 1.0 + jnp.arange(a.size).reshape(a.shape) % 7
    return jnp.sum(a.astype(jnp.float32) * weights)

  replicated = jax.sharding.NamedSharding(actions.sharding.mesh, jax.sharding.PartitionSpec())
  return float(jax.jit(fingerprint, out_shardings=replicated)(actions))


class LauncherHooks(loop.Hooks):

  def __init__(self, workdir: str, record: bool, kill_after: int | None):
    self.path = os.path.join(workdir, "batches.jsonl") if record else None
    self.kill_after = kill_after

  def on_step(self, step, batch, state):
    del state
    if self.path:
      import jax
      value = batch_fingerprint(batch["actions"])  # Every process joins the computation.
      if jax.process_index() == 0:
        with open(self.path, "a") as f:
          f.write(json.dumps({"step": step, "fingerprint": value}) + "\n")
    if step == self.kill_after:
      os.kill(os.getpid(), signal.SIGKILL)


def main(argv):
  hooks = LauncherHooks(flags.FLAGS.workdir, _RECORD.value, _KILL.value)
  loop.main(argv, hooks=hooks)


if __name__ == "__main__":
  app.run(main)
