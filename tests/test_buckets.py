"""Workdirs, exports and evaluation reports in a bucket (gs://), against a local GCS emulator (tests/gcs_emulator.py).

The gs:// URLs here go through the same clients as on a TPU VM: TensorFlow's GCS filesystem (under etils.epath,
pi0_jax.files), TensorStore's GCS driver (Orbax's arrays) and, for Orbax's CheckpointManager, google-cloud-storage;
only the server is local. A tiny pi0 trains 2 steps on local disk and is exported to a bucket; the policy loaded
from the bucket must act exactly as the same export loaded from local disk. Training itself into a bucket needs
google-cloud-storage (Orbax lists checkpoint steps on gs:// with it); that test is skipped where it is missing.
"""

import json
import os
import urllib.parse
import urllib.request

import numpy as np
import pytest

import gcs_emulator
import test_data_helpers as helpers
from pi0_jax import export as export_lib, files
from pi0_jax.data import tokenizer as tokenizer_lib
from pi0_jax.evaluate import report as report_lib, rollout
from pi0_jax.policy import Policy
from test_export_policy import INSTRUCTIONS, _config

BUCKET = f"gs://{gcs_emulator.BUCKET}"
# The emulator does not implement GCS's generation preconditions (ifGenerationMatch), on which TensorStore's OCDBT
# manifest writes rely: under concurrent writes it can answer one that TensorStore rejects ("Malformed
# StorageGeneration", a ValueError out of Orbax). Seen on a train state's checkpoint and once on an export; only
# that error is tolerated, any other failure fails.
ORBAX_ON_EMULATOR = pytest.mark.xfail(raises=ValueError, strict=False,
                                      reason="emulator lacks GCS generation preconditions (OCDBT manifest writes)")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator's environment, set in this process (tests take it after local_run: it starts when first used)."""
  why = gcs_emulator.available()
  if why:
    pytest.skip(why)
  with gcs_emulator.serve(str(tmp_path_factory.mktemp("gcs"))) as env, pytest.MonkeyPatch.context() as mp:
    for k, v in env.items():
      mp.setenv(k, v)
    yield env


def _objects(env, prefix: str) -> list[str]:
  """The object names under `prefix`, asked of the emulator itself (not through any client under test)."""
  query = urllib.parse.urlencode({"prefix": prefix})
  with urllib.request.urlopen(f"{env['TENSORSTORE_GCS_HTTP_URL']}/storage/v1/b/{gcs_emulator.BUCKET}/o?{query}") as r:
    return sorted(item["name"] for item in json.load(r).get("items", []))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
  from pi0_jax.train import loop
  root = tmp_path_factory.mktemp("bucket_run")
  episodes = [helpers.marked_episode(8, i, image_size=32, instruction=INSTRUCTIONS[i % 2]) for i in range(4)]
  data_dir = helpers.write(root, "pi0_test_bucket", episodes, val=episodes[:1])
  tokenizer = str(root / "tokenizer.model")
  tokenizer_lib.train_tokenizer(INSTRUCTIONS, tokenizer, vocab_size=64)
  config = _config(data_dir, tokenizer, root / "stats")
  workdir = str(root / "workdir")
  loop.run(config, workdir)
  local_export = export_lib.export(workdir, str(root / "export"))
  return {"root": root, "config": config, "workdir": workdir, "export": local_export}


def _actions(export_dir: str) -> np.ndarray:
  policy = Policy.load(export_dir)
  cfg = policy.config
  rng = np.random.default_rng(0)
  frame = lambda: rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
  obs = {"images": {"image": frame(), "wrist_image": frame()}, "state": np.array([1.5, -0.3, 0.2, 0.9]),
         "prompt": "push the puck"}
  noise = rng.normal(size=(cfg.action_horizon, cfg.action_dim)).astype(np.float32)
  return np.asarray(policy.infer(obs, noise=noise)["actions"])


@ORBAX_ON_EMULATOR
def test_export_to_bucket_loads_and_acts_like_local(local_run, gcs, monkeypatch):
  monkeypatch.chdir(local_run["root"])  # Where a URL mistaken for a relative path would land (./gs:/...).
  url = f"{BUCKET}/exports/demo"
  assert export_lib.export(local_run["workdir"], url) == url  # No os.path.abspath on the URL.
  names = _objects(gcs, "exports/demo/")
  for name in ("metadata.json", "model_config.json", "norm_stats.json", "tokenizer.model"):
    assert f"exports/demo/{name}" in names
  assert any(n.startswith("exports/demo/params/") for n in names)  # Orbax's arrays, via TensorStore.
  assert not os.path.exists(local_run["root"] / "gs:") and not os.path.exists("gs:")
  assert files.listdir(url) == ["metadata.json", "model_config.json", "norm_stats.json", "params", "tokenizer.model"]
  assert files.read_bytes(f"{url}/tokenizer.model") == files.read_bytes(f"{local_run['export']}/tokenizer.model")
  metadata = export_lib.read_export_metadata(url)
  assert metadata["workdir"] == local_run["workdir"] and metadata["step"] == 2

  np.testing.assert_array_equal(_actions(url), _actions(local_run["export"]))

  with pytest.raises(FileExistsError, match="already holds an export"):
    export_lib.export(local_run["workdir"], url)
  with pytest.raises(FileNotFoundError, match=f"export directory {BUCKET}/exports/none does not exist"):
    Policy.load(f"{BUCKET}/exports/none")


def test_evaluation_report_and_gifs_to_bucket(gcs):
  out = f"{BUCKET}/eval/demo"
  records = [{"kind": "policy", "task": t, "success": s, "first_success_step": 3 if s else None, "steps": 4,
              "return": 1.0, "infer_ms_median": 1.0} for t, s in [("reach-v3", True), ("push-v3", False)]]
  summary = rollout.summarize(records, ["reach-v3", "push-v3"])
  report_lib.plot_success(summary, f"{out}/{report_lib.SUCCESS_PNG}")
  gif = f"{out}/gifs/policy_reach-v3_ep000.gif"
  rollout.write_gif(gif, [np.full((8, 8, 3), v, np.uint8) for v in (0, 255)])
  paths = report_lib.write_report(out, {"export": {"dir": f"{BUCKET}/exports/demo"}, "closed_loop": None,
                                        "offline": None})
  assert paths["json"] == f"{out}/report.json" and files.relative(gif, out) == "gifs/policy_reach-v3_ep000.gif"
  assert files.read_json(paths["json"], "report")["export"]["dir"] == f"{BUCKET}/exports/demo"
  assert files.read_bytes(paths["markdown"]).decode().count("Skipped.") == 2
  assert files.read_bytes(f"{out}/{report_lib.SUCCESS_PNG}")[:8] == b"\x89PNG\r\n\x1a\n"
  assert files.read_bytes(gif)[:6] == b"GIF89a"
  stored = [n for n in _objects(gcs, "eval/demo/") if not n.endswith("/")]  # Less the directory markers.
  assert stored == ["eval/demo/gifs/policy_reach-v3_ep000.gif", "eval/demo/report.json", "eval/demo/report.md",
                    f"eval/demo/{report_lib.SUCCESS_PNG}"]


@ORBAX_ON_EMULATOR
def test_train_into_bucket_then_export_and_act(local_run, gcs):
  pytest.importorskip("google.cloud.storage", reason="Orbax's CheckpointManager lists gs:// steps with "
                      "google-cloud-storage (pip install -e .[tpu])")
  from pi0_jax.train import loop
  workdir, out = f"{BUCKET}/runs/demo", f"{BUCKET}/exports/from_bucket_run"
  loop.run(local_run["config"], workdir)
  names = _objects(gcs, "runs/demo/")
  assert "runs/demo/config.json" in names and "runs/demo/assets/norm_stats.json" in names
  assert any(n.startswith("runs/demo/checkpoints/2/state/") for n in names)
  assert export_lib.export(workdir, out) == out
  assert export_lib.read_export_metadata(out)["workdir"] == workdir
  # Same config, data and seed: the run in the bucket trained to the same params as the local one.
  np.testing.assert_array_equal(_actions(out), _actions(local_run["export"]))
