"""JSON helpers: round trip, numpy values, atomic local writes, and errors that name the file."""

import json

import numpy as np
import pytest

from pi0_jax import files


def test_round_trip_numpy_values_and_no_temporary_left(tmp_path):
  path = tmp_path / "blob.json"
  files.write_json(str(path), {"b": np.float32(1.5), "a": np.arange(3), "t": (1, 2), "n": np.int64(7)})
  assert files.read_json(str(path), "blob") == {"a": [0, 1, 2], "b": 1.5, "n": 7, "t": [1, 2]}
  assert list(path.read_text())[:3] == list('{\n ') and path.read_text().endswith("}\n")
  assert [p.name for p in tmp_path.iterdir()] == ["blob.json"]
  files.write_json(str(path), {"z": 1, "a": 2}, sort_keys=False)
  assert list(json.loads(path.read_text())) == ["z", "a"]


def test_errors_name_what_and_where(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"model config: .*missing.json does not exist \(is it an export\?\)\."):
    files.read_json(str(tmp_path / "missing.json"), "model config", "is it an export?")
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match=r"norm statistics: .*bad.json is not valid JSON"):
    files.read_json(str(bad), "norm statistics")
