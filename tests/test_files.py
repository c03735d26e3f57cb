"""pi0_jax.files: JSON round trip, numpy values, atomic local writes, errors that name the file; the path helpers."""

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


def test_paths_local_and_urls(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert files.absolute("gs://b/runs/x") == "gs://b/runs/x" and files.is_url("gs://b") and not files.is_url("a/b")
  assert files.absolute("runs/x") == str(tmp_path / "runs" / "x")
  assert files.relative("gs://b/out/gifs/a.gif", "gs://b/out/") == "gifs/a.gif"
  assert files.relative(str(tmp_path / "out" / "a.gif"), str(tmp_path)) == "out/a.gif"
  files.makedirs("d/e")
  files.makedirs("d/e")  # Exists already: fine.
  files.write_text("d/e/t.txt", "hi")
  files.write_bytes("d/b.bin", b"\x00\x01")
  files.copy("d/b.bin", "d/e/c.bin")
  assert files.listdir("d") == ["b.bin", "e"] and files.listdir("d/e") == ["c.bin", "t.txt"]
  assert files.isdir("d/e") and files.isfile("d/e/t.txt") and not files.isfile("d/e")
  assert files.read_bytes("d/e/c.bin") == b"\x00\x01" and files.read_bytes("d/e/t.txt") == b"hi"
  files.rmtree("d/e")
  files.rmtree("d/e")  # Missing: fine.
  assert files.listdir("d") == ["b.bin"] and not (tmp_path / "gs:").exists()
