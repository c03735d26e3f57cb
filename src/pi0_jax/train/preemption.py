"""When to stop after a SIGTERM (a preemption notice), decided the same way, at the same step, on every host.

On a pod the hosts get the signal at different moments. If each acted on its own flag, one host could enter
the checkpoint save (a collective) while another starts the next step, and the job would hang until killed.
So the stop is agreed:

  one process        the local flag, read at every step (no collective).
  "sync_point"       (default on TPU) JAX's preemption service: the coordination service propagates the notice
                     in the background and `reached_preemption_sync_point(step)`, called at every step, turns
                     True on every host at the same step (the largest step any host had reached, plus one).
                     The service handles SIGTERM itself, so no Python handler is installed.
  "allreduce"        (default elsewhere) a Python SIGTERM handler sets a local flag, and every `every` steps
                     (the trainer passes log_every) the hosts take the max of their flags with one small
                     all-gather. Between those steps nothing is exchanged: no host sync per step; a stop
                     comes at most `every` steps after the signal.
"""

from __future__ import annotations

import signal

import jax
import numpy as np

MODES = ("auto", "sync_point", "allreduce")


class StopAgreement:
  """`should_stop(step)`: True on every process at the same step once any process got SIGTERM.

  `start()` installs the SIGTERM handler and `close()` restores the previous one (or use it as a context
  manager); call `should_stop` on every process after every step, with the same step numbers.
  """

  def __init__(self, every: int = 1, mode: str = "auto"):
    if mode not in MODES:
      raise ValueError(f"config.preemption_sync={mode!r}: expected one of {MODES}.")
    if every < 1:
      raise ValueError(f"StopAgreement(every={every}): expected >= 1.")
    multi = jax.process_count() > 1
    if mode == "auto":
      mode = "sync_point" if jax.devices()[0].platform == "tpu" else "allreduce"
    self.mode = mode if multi else "local"
    self.every = every
    self.signalled = False  # This process's own SIGTERM (not used by "sync_point").
    self._previous = None

  def start(self) -> StopAgreement:
    """Installs the SIGTERM handler (not in "sync_point" mode: JAX's service has its own)."""
    if self.mode != "sync_point":
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def close(self) -> None:
    """Puts the previous SIGTERM handler back."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self) -> StopAgreement:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.close()

  def _on_sigterm(self, *_) -> None:
    self.signalled = True

  def should_stop(self, step: int) -> bool:
    if self.mode == "local":
      return self.signalled
    if self.mode == "sync_point":
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(step))
    if step % self.every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.max(multihost_utils.process_allgather(np.asarray(self.signalled, np.int32))))
