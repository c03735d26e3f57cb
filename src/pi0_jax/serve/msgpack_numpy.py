"""msgpack with numpy arrays, in the wire format of openpi's client (`openpi_client.msgpack_numpy`).

An array travels as a map {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": [...]}, a
numpy scalar as {b"__npgeneric__": True, b"data": scalar, b"dtype": dtype.str}; the keys are msgpack bin, not
str. No pickle anywhere, so a server can decode what any client sends: object, void and complex dtypes are
refused both ways, and a decoded array's byte count must match its shape and dtype. Anything malformed raises
`DecodeError` with what was wrong.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

__all__ = ["DecodeError", "packb", "unpackb"]

_ARRAY, _SCALAR = b"__ndarray__", b"__npgeneric__"
_REFUSED_KINDS = ("O", "V", "c")


class DecodeError(ValueError):
  """The bytes are not a msgpack-numpy message."""


def _encode(obj: Any) -> Any:
  if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
    raise TypeError(f"msgpack_numpy: dtype {obj.dtype} cannot be sent (object, void and complex are refused).")
  if isinstance(obj, np.ndarray):
    return {_ARRAY: True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
            b"shape": list(obj.shape)}
  if isinstance(obj, np.generic):
    return {_SCALAR: True, b"data": obj.item(), b"dtype": obj.dtype.str}
  raise TypeError(f"msgpack_numpy: cannot encode {type(obj).__name__}.")


def _dtype(spec: Any) -> np.dtype:
  if not isinstance(spec, (str, bytes)):
    raise DecodeError(f"array dtype: expected a numpy dtype string such as '<f4', got {spec!r}.")
  try:
    dtype = np.dtype(spec.decode() if isinstance(spec, bytes) else spec)
  except (TypeError, ValueError, UnicodeDecodeError) as e:
    raise DecodeError(f"array dtype {spec!r}: not a numpy dtype ({e}).") from None
  if dtype.kind in _REFUSED_KINDS:
    raise DecodeError(f"array dtype {dtype}: object, void and complex arrays are refused.")
  return dtype


def _decode(obj: dict) -> Any:
  if _ARRAY in obj:
    dtype, shape, data = _dtype(obj.get(b"dtype")), obj.get(b"shape"), obj.get(b"data")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d >= 0 for d in shape):
      raise DecodeError(f"array shape: expected a list of non-negative ints, got {shape!r}.")
    if not isinstance(data, bytes):
      raise DecodeError(f"array data: expected bytes, got {type(data).__name__}.")
    want = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(data) != want:
      raise DecodeError(f"array data: {len(data)} bytes, but shape {list(shape)} of {dtype} needs {want}.")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
  if _SCALAR in obj:
    try:
      return _dtype(obj.get(b"dtype")).type(obj.get(b"data"))
    except (TypeError, ValueError, OverflowError) as e:
      raise DecodeError(f"numpy scalar {obj!r}: {e}") from None
  return obj


def packb(obj: Any) -> bytes:
  """obj (dicts, lists, str, numbers, numpy arrays and scalars) -> msgpack bytes."""
  return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
  """msgpack bytes -> the object, arrays as read-only numpy views of the message; DecodeError if malformed."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise DecodeError(f"expected a binary frame, got {type(data).__name__}.")
  try:
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
  except DecodeError:
    raise
  except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
    raise DecodeError(f"not a msgpack message ({type(e).__name__}: {e}).") from None
