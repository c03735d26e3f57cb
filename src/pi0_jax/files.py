"""The project's one path layer: files and directories through etils.epath, which opens local paths and bucket
URLs (gs://) alike, so workdirs, exports and reports may live in a bucket.

Every reader of the project's small JSON files (export metadata, model configs, norm statistics, build
reports) goes through `read_json`: a missing or malformed file is one clear error naming the file and what it
should have been.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["absolute", "copy", "exists", "is_url", "isdir", "isfile", "json_default", "listdir", "makedirs",
           "read_bytes", "read_json", "relative", "rmtree", "write_bytes", "write_json", "write_text"]


def _path(path: str | os.PathLike):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path)


def is_url(path: str | os.PathLike) -> bool:
  """True for a bucket URL (gs://bucket/...), which os.path must never touch."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """A local path made absolute; a URL unchanged (os.path.abspath would turn gs://b into $PWD/gs:/b)."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


def relative(path: str, start: str) -> str:
  """`path` relative to the directory `start` it lies under (os.path.relpath for local paths)."""
  if is_url(path):
    prefix = start.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path
  return os.path.relpath(path, start)


def exists(path: str | os.PathLike) -> bool:
  return _path(path).exists()


def isdir(path: str | os.PathLike) -> bool:
  return _path(path).is_dir()


def isfile(path: str | os.PathLike) -> bool:
  return _path(path).is_file()


def listdir(path: str | os.PathLike) -> list[str]:
  """The names in a directory (no trailing slashes, whatever the object store returns)."""
  return sorted(p.name for p in _path(path).iterdir())


def makedirs(path: str | os.PathLike) -> None:
  """Creates `path` and its parents if missing (object stores have no directories; this is then a no-op there)."""
  _path(path).mkdir(parents=True, exist_ok=True)


def rmtree(path: str | os.PathLike) -> None:
  """Removes a directory tree if it exists."""
  _path(path).rmtree(missing_ok=True)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Copies one file, overwriting `dst`, between any two of local disk and buckets."""
  _path(src).copy(_path(dst), overwrite=True)


def read_bytes(path: str | os.PathLike) -> bytes:
  return _path(path).read_bytes()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  _path(path).write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  _path(path).write_text(text)


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
  if is_url(path):
    p.write_text(text)  # Object stores write whole objects.
    return
  tmp = p.with_name(p.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, p)
