"""JSON files read and written through etils.epath, which opens local paths and bucket URLs (gs://) alike.

Every reader of the project's small JSON files (export metadata, model configs, norm statistics, build
reports) goes through `read_json`: a missing or malformed file is one clear error naming the file and what it
should have been.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["exists", "json_default", "read_json", "write_json"]


def _path(path: str | os.PathLike):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path)


def exists(path: str | os.PathLike) -> bool:
  return _path(path).exists()


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> Any:
  """The JSON in `path`; FileNotFoundError / ValueError name `what` it should be, `path`, and `hint` if any."""
  p = _path(path)
  if not p.is_file():
    raise FileNotFoundError(f"{what}: {path} does not exist" + (f" ({hint})" if hint else "") + ".")
  try:
    return json.loads(p.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{what}: {path} is not valid JSON ({e}).") from None


def json_default(x):
  """json.dump's fallback: numpy scalars and arrays as Python values, tuples and sets as lists, else repr."""
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (tuple, set)):
    return list(x)
  return repr(x)


def write_json(path: str | os.PathLike, blob: Any, *, sort_keys: bool = True) -> None:
  """Writes `blob` as indented JSON. Local files are replaced atomically (a reader never sees half a file)."""
  text = json.dumps(blob, indent=2, sort_keys=sort_keys, default=json_default) + "\n"
  p = _path(path)
  if isinstance(path, str) and "://" in path:
    p.write_text(text)  # Object stores write whole objects.
    return
  tmp = p.with_name(p.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, p)
