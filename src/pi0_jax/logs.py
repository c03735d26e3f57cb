"""Console logging: keep the commands' own messages readable, and say when they are compiling.

Orbax logs every phase of every save and TFDS every dataset it opens, at INFO level, through absl's handler.
`quiet_libraries()` drops those INFO records (their WARNING and ERROR records still show); the project's own
INFO messages stay. `--verbosity=1` or PI0_VERBOSE_LIBRARIES=1 keeps everything.
"""

from __future__ import annotations

import contextlib
import functools
import logging as _logging
import os
import time
from typing import Callable

LIBRARY_PATHS = ("/orbax/", "/tensorflow_datasets/", "/tensorflow/")


class _QuietLibraries(_logging.Filter):

  def filter(self, record) -> bool:
    return record.levelno >= _logging.WARNING or not any(p in record.pathname for p in LIBRARY_PATHS)


def quiet_libraries() -> None:
  """Installs the filter on absl's handler (once)."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  if os.environ.get("PI0_VERBOSE_LIBRARIES") == "1" or logging.get_verbosity() > logging.INFO:
    return
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


@contextlib.contextmanager
def compiling(what: str):
  """Logs "compiling <what> ..." then "compiled <what> in N s" around a compile.

  The first compile of a large model takes minutes with no other output; without these lines it looks like
  a hang. Nothing is logged after the block when it raises.
  """
  log = _logging.getLogger("pi0_jax")
  log.info("compiling %s ...", what, stacklevel=3)
  start = time.perf_counter()
  yield
  log.info("compiled %s in %.1f s", what, time.perf_counter() - start, stacklevel=3)


def log_first_call(fn: Callable, what: str) -> Callable:
  """`fn` (a jitted function) whose first call, which traces and compiles it, is logged by `compiling`.

  For functions compiled implicitly at their first call; the time includes that call's run.
  """
  called = False

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    nonlocal called
    if called:
      return fn(*args, **kwargs)
    called = True
    import jax  # pylint: disable=g-import-not-at-top
    with compiling(f"{what} (with its first run)"):
      return jax.block_until_ready(fn(*args, **kwargs))

  return wrapped
