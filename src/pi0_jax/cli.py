"""The commands' shared entry: `python -m pi0_jax.<module>` and the console scripts in setup.cfg."""

from __future__ import annotations

import sys
from typing import Callable


def run(main: Callable, define_flags: Callable[[], None] | None, module: str) -> None:
  """Defines the module's flags and runs `main` under absl.

  absl's --help lists the flags of the module that argv[0] names; a console script's argv[0] is its wrapper
  script, so it is pointed at the module that defines the flags.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  if module != "__main__":
    sys.argv[0] = module
  if define_flags is not None:
    define_flags()
  app.run(main)
