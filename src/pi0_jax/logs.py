"""Console logging: keep the commands' own messages readable.

Orbax logs every phase of every save and TFDS every dataset it opens, at INFO level, through absl's handler.
`quiet_libraries()` drops those INFO records (their WARNING and ERROR records still show); the project's own
INFO messages stay. `--verbosity=1` or PI0_VERBOSE_LIBRARIES=1 keeps everything.
"""

from __future__ import annotations

import logging as _logging
import os

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
