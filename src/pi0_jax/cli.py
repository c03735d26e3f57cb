"""The commands' shared entry: `python -m pi0_jax.<module>` and the console scripts in setup.cfg.

Every command goes through `run`, so all of them behave alike:

- `--help` (also `-h`, `-?`, `--helpshort`) prints the module's description with its usage examples and the
  module's flags, and exits 0; `--helpfull` lists every flag.
- An error the user can fix prints one line, `<command>: error: <message>`, and exits 1: a `UserError` (the
  project's `DataError`, `ParamTreeMismatchError`, ...), a `ValueError` (the project raises it for a bad
  setting, with a message naming the setting and the expected value), an OSError (a missing or unwritable
  file, a config file that does not load), or a usage error (also a --config.FIELD override of no field).
  `--verbose` (or PI0_VERBOSE=1) prints the traceback as well. Anything else is a bug and always shows its
  traceback.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import traceback
from typing import Callable

_HELP_ARGS = {"-h", "-?", "--help", "-help", "--helpshort", "-helpshort"}
_HELPFULL_ARGS = {"--helpfull", "-helpfull"}


class UserError(Exception):
  """An error the user can fix (a flag, config, dataset or file): commands print its message alone."""


# What the commands report in one line. OSError: a missing, unreadable or unwritable file (its message names
# it), a config file that failed to load, a full disk, an unreachable bucket.
USER_ERRORS = (UserError, ValueError, OSError)


def run(main: Callable, define_flags: Callable[[], None] | None, module: str, *,
        description_from: str | None = None) -> None:
  """Defines the module's flags and runs `main(argv)` under absl, reporting user errors in one line.

  absl's --help lists the flags of the module that argv[0] names; a console script's argv[0] is its wrapper
  script, so it is pointed at the module that defines the flags. The help text is the docstring of `__main__`
  (`python -m`) or else of `description_from` (default: `module`).
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  command = _command_name(module)
  if module != "__main__":
    sys.argv[0] = module
  if define_flags is not None:
    define_flags()
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "On an error, print the traceback too (also: PI0_VERBOSE=1).",
                      module_name=sys.argv[0])
  args = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
  wanted = {a for a in args if a in _HELP_ARGS | _HELPFULL_ARGS}
  if wanted:
    doc = sys.modules["__main__"].__doc__ or importlib.import_module(description_from or module).__doc__
    try:
      print_help(doc, full=bool(wanted & _HELPFULL_ARGS))
      sys.stdout.flush()
    except BrokenPipeError:  # `--help | head`
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  app.run(functools.partial(_main_reporting_errors, main, command),
          flags_parser=functools.partial(_parse_flags, command))


def print_help(doc: str | None, *, full: bool = False) -> None:
  """The description (with its examples) and the flags of the module that sys.argv[0] names."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  print((doc or f"USAGE: {sys.argv[0]} [flags]").strip("\n"))
  print("\nflags:")
  print((flags.FLAGS.get_help() if full else flags.FLAGS.main_module_help()).rstrip("\n"))
  if not full:
    print("\nTry --helpfull to get a list of all flags.")


def _parse_flags(command: str, argv: list[str]) -> list[str]:
  """absl's parser; a --config.FIELD=VALUE override of a field the config lacks (ml_collections raises
  AttributeError or KeyError there, which absl does not catch) is a usage error too."""
  from absl import app  # pylint: disable=g-import-not-at-top
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    field = str(e.args[0] if e.args else e).strip("'\" ")
    overridden = {name for a in argv if a.startswith("--config.") for name in a.split("=")[0].split(".")[1:]}
    if field not in overridden:  # Raised elsewhere, e.g. by the config file's own code: a bug, not a typo.
      raise
    _report(command, UserError(f"no config field {field!r} (in a --config.FIELD=VALUE override)"), "Try --help.")
    sys.exit(1)


def _main_reporting_errors(main: Callable, command: str, argv) -> None:
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  try:
    main(argv)
  except app.UsageError as e:
    _report(command, e, "Try --help.")
    sys.exit(e.exitcode)
  except USER_ERRORS as e:
    verbose = flags.FLAGS.verbose or os.environ.get("PI0_VERBOSE", "0") not in ("", "0")
    _report(command, e, None if verbose else "Run with --verbose for the traceback.", verbose=verbose)
    sys.exit(1)


def _report(command: str, error: BaseException, hint: str | None, *, verbose: bool = False) -> None:
  if verbose:
    traceback.print_exception(error, file=sys.stderr)
  message = str(error) or type(error).__name__
  if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
    message = f"{message}: {error.filename}"
  print(f"{command}: error: {message}" + (f" ({hint})" if hint else ""), file=sys.stderr)


def _command_name(module: str) -> str:
  """`pi0-train` for a console script, `python -m pi0_jax.train` otherwise."""
  script = os.path.basename(sys.argv[0])
  if script.startswith("pi0-"):
    return script
  spec = getattr(sys.modules["__main__"], "__spec__", None)
  name = spec.name if spec is not None else module
  return f"python -m {name.removesuffix('.__main__')}"
