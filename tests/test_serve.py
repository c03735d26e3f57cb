"""pi0_jax.serve: openpi's own client (openpi_client.WebsocketClientPolicy) against our server, real sockets.

The export is an untrained tiny pi0 written through the real export path (pi0_jax.serve.untrained). The server
runs in a thread of this process (so its Policy can be asked for the reference actions), and once as a
subprocess to check `python -m pi0_jax.serve` and its SIGTERM shutdown.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy
import websockets
from websockets.sync import client as ws_client

from pi0_jax.policy import Policy
from pi0_jax.serve import KeyMap, PolicyServer, msgpack_numpy
from pi0_jax.serve.untrained import write_untrained_export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return write_untrained_export(str(tmp_path_factory.mktemp("serve") / "export"), preset="tiny")


@contextlib.contextmanager
def _running(server: PolicyServer):
  """Runs `server` in a thread on a free port; stops it (and checks it stopped) on exit."""
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  assert server.ready.wait(60)
  try:
    yield server
  finally:
    server.stop()
    thread.join(60)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def served(export_dir):
  """(server, policy) with the server running in a thread."""
  policy = Policy.load(export_dir)
  with _running(PolicyServer(policy, host="127.0.0.1", port=0)) as server:
    yield server, policy


def _obs(rng: np.random.Generator, prompt: str = "push the puck") -> dict:
  """An observation as openpi's LIBERO client sends it: flat "observation/..." keys, raw frames."""
  return {"observation/image": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
          "observation/wrist_image": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
          "observation/state": rng.normal(size=4), "prompt": prompt}


def _native(obs: dict) -> dict:
  return {"images": {"image": obs["observation/image"], "wrist_image": obs["observation/wrist_image"]},
          "state": obs["observation/state"], "prompt": obs["prompt"]}


def _client(server) -> WebsocketClientPolicy:
  return WebsocketClientPolicy(host="127.0.0.1", port=server.port)


def test_msgpack_numpy_matches_openpi_client():
  msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float32(2.5), "p": "hi",
         "n": [1, np.int8(3)], "e": np.zeros((0, 3), np.uint8), "d": {"b": np.array([True, False])}}
  assert msgpack_numpy.packb(msg) == openpi_msgpack.packb(msg)  # Byte for byte.
  for decoded in (msgpack_numpy.unpackb(openpi_msgpack.packb(msg)), openpi_msgpack.unpackb(msgpack_numpy.packb(msg))):
    np.testing.assert_array_equal(decoded["a"], msg["a"])
    assert decoded["a"].dtype == np.float32 and decoded["s"] == 2.5 and decoded["s"].dtype == np.float32
    assert decoded["e"].shape == (0, 3) and decoded["d"]["b"].tolist() == [True, False] and decoded["p"] == "hi"
  lie = msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 5, b"dtype": "<f4", b"shape": [2]})
  obj = msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]})
  for data, match in [(b"\xc1garbage", "not a msgpack message"), (lie, r"5 bytes, but shape \[2\] of float32 needs 8"),
                      (obj, "object, void and complex"), (b"", "not a msgpack message")]:
    with pytest.raises(msgpack_numpy.DecodeError, match=match):
      msgpack_numpy.unpackb(data)
  with pytest.raises(TypeError, match="cannot be sent"):
    msgpack_numpy.packb({"x": np.array([object()])})


def test_key_map():
  km = KeyMap.default(["image", "wrist_image"])
  obs = km.apply({"observation": {"image": 1, "state": 2}, "observation/wrist_image": 3, "prompt": "p", "extra": 4})
  assert obs == {"images": {"image": 1, "wrist_image": 3}, "state": 2, "prompt": "p"}
  assert km.apply({"images": {"image": 5}, "state": 6}) == {"images": {"image": 5}, "state": 6}
  custom = KeyMap.parse(["cam_high=images/image", "qpos=state"], ["image"])
  assert custom.apply({"cam_high": 1, "qpos": 2}) == {"images": {"image": 1}, "state": 2}
  with pytest.raises(ValueError, match=r"expected request_key=policy_key"):
    KeyMap.parse(["qpos"], ["image"])
  with pytest.raises(ValueError, match=r"'qpos' -> 'joints': the policy takes \['images/image', 'prompt', 'state'\]"):
    KeyMap.parse(["qpos=joints"], ["image"])


def test_openpi_client_gets_policy_infer(served):
  server, policy = served
  client = _client(server)
  meta = client.get_server_metadata()
  assert meta["server"] == "pi0_jax" and meta["camera_keys"] == ["image", "wrist_image"]
  assert meta["action_horizon"] == 4 and meta["action_dim"] == 4 and meta["state_dim"] == 4
  rng = np.random.default_rng(0)
  noise = rng.normal(size=(4, 8)).astype(np.float32)
  obs = _obs(rng)
  reply = client.infer({**obs, "noise": noise})
  compiled = policy.num_compiled
  again = client.infer({**obs, "noise": noise})
  assert policy.num_compiled == compiled  # The same shapes: no new compilation.
  want = policy.infer(_native(obs), noise=noise)["actions"]  # The server is idle: its policy is ours to call.
  assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (4, 4)
  np.testing.assert_array_equal(reply["actions"], want)
  np.testing.assert_array_equal(again["actions"], want)
  timing = again["server_timing"]
  assert set(timing) == {"infer_ms", "queue_ms", "server_ms", "prev_total_ms"}
  assert 0 < timing["infer_ms"] <= timing["server_ms"] and timing["queue_ms"] >= 0
  assert set(reply["server_timing"]) == {"infer_ms", "queue_ms", "server_ms"}  # No previous request yet.
  assert 0 < again["policy_timing"]["infer_ms"] <= timing["infer_ms"]
  # The policy's own key names work as well, nested as Policy.infer takes them.
  np.testing.assert_array_equal(client.infer({**_native(obs), "noise": noise})["actions"], want)


def test_real_time_chunking_through_the_socket_equals_policy_infer(served):
  """A robot's executor sends the plan still to come and the delay; the server runs guided RTC on them."""
  server, policy = served
  client = _client(server)
  rng = np.random.default_rng(5)
  obs, noise = _obs(rng), rng.normal(size=(4, 8)).astype(np.float32)
  prev = rng.normal(size=(3, 4)).astype(np.float32)  # 3 actions of the last chunk still to come, robot units.
  reply = client.infer({**obs, "noise": noise, "prev_actions": prev, "inference_delay": 1})
  want = policy.infer(_native(obs), noise=noise, prev_actions=prev, inference_delay=1)["actions"]
  np.testing.assert_array_equal(reply["actions"], want)
  plain = policy.infer(_native(obs), noise=noise)["actions"]
  # Guidance pulls the first (delayed) action toward the plan: closer than the unguided chunk.
  assert np.abs(want[0] - prev[0]).max() < np.abs(plain[0] - prev[0]).max()


def test_bad_requests_get_errors_and_the_server_keeps_serving(served):
  server, policy = served
  rng = np.random.default_rng(1)
  noise = rng.normal(size=(4, 8)).astype(np.float32)
  good = {**_obs(rng), "noise": noise}
  compiled = policy.num_compiled
  client = _client(server)
  cases = [
      ({k: v for k, v in good.items() if k != "observation/wrist_image"},
       r"missing camera 'wrist_image'.*request keys \['observation/image', 'observation/state', 'prompt'\]"),
      ({**good, "observation/state": np.zeros(5)}, r"obs\['state'\]: shape \(5,\)"),
      ({**good, "observation/image": good["observation/image"].astype(np.float32)},
       r"obs\['images'\]\['image'\]: dtype float32, expected uint8"),
      ({**good, "noise": np.zeros((3, 8))}, r"noise: shape \(3, 8\)"),
  ]
  if "prev_actions" not in inspect.signature(policy.infer).parameters:
    cases.append(({**good, "prev_actions": np.zeros((4, 4))},
                  r"fields \['prev_actions'\]: this server's Policy.infer does not take them"))
  for request, match in cases:
    with pytest.raises(RuntimeError, match="bad request: .*" + match):
      client.infer(request)
  # Undecodable bytes and text frames, from a bare websocket client; its connection stays usable.
  with ws_client.connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as ws:
    ws.recv()  # Metadata.
    ws.send(b"\xc1 not msgpack")
    assert ws.recv().startswith("bad request: undecodable frame of 13 bytes")
    ws.send("hello")
    assert ws.recv() == "bad request: expected a binary frame of msgpack-numpy, got a text frame."
    ws.send(msgpack_numpy.packb([1, 2]))
    assert "expected a msgpack map with str keys" in ws.recv()
    ws.send(msgpack_numpy.packb(good))
    np.testing.assert_array_equal(msgpack_numpy.unpackb(ws.recv())["actions"],
                                  policy.infer(_native(good), noise=noise)["actions"])
  assert policy.num_compiled == compiled + (compiled == 0)  # No error reached the compiler.
  # The erring client and a second one are both served.
  second = _client(server)
  np.testing.assert_array_equal(second.infer(good)["actions"], client.infer(good)["actions"])


def test_optional_fields_pass_through_when_infer_takes_them(served, export_dir):
  """A Policy whose infer has the real-time-chunking arguments gets them; parse() only, nothing compiles."""

  class RTCPolicy(Policy):

    def infer(self, obs, *, noise=None, prev_actions=None, inference_delay=None, num_steps=None):
      return super().infer(obs, noise=noise, num_steps=num_steps)

  server = PolicyServer(RTCPolicy.load(export_dir), port=0)
  assert server.metadata["optional_fields"] == ["inference_delay", "noise", "prev_actions"]
  prev = np.ones((4, 4), np.float32)
  obs, kwargs, keys = server.parse(msgpack_numpy.packb({**_obs(np.random.default_rng(2)), "prev_actions": prev,
                                                        "inference_delay": 2}))
  assert sorted(kwargs) == ["inference_delay", "prev_actions"] and kwargs["inference_delay"] == 2
  np.testing.assert_array_equal(kwargs["prev_actions"], prev)
  assert sorted(obs) == ["images", "prompt", "state"] and sorted(obs["images"]) == ["image", "wrist_image"]
  assert keys == ["observation/image", "observation/state", "observation/wrist_image", "prompt"]


def test_internal_error_sends_the_traceback_and_closes_like_openpi(export_dir):
  """A failure that is not the request's fault: traceback as text, close code 1011; other clients go on."""

  class BrokenPolicy(Policy):

    def infer(self, obs, *, noise=None, num_steps=None):
      raise RuntimeError("the policy broke")

  with _running(PolicyServer(BrokenPolicy.load(export_dir), host="127.0.0.1", port=0)) as server:
    for _ in range(2):  # The second client finds the server still up.
      client = _client(server)
      with pytest.raises(RuntimeError, match=r"(?s)Traceback .*RuntimeError: the policy broke"):
        client.infer(_obs(np.random.default_rng(4)))
      with pytest.raises(websockets.ConnectionClosedError, match="1011"):
        client._ws.recv(timeout=10)  # pylint: disable=protected-access


def test_client_disconnecting_mid_request(served):
  server, policy = served
  rng = np.random.default_rng(3)
  good = {**_obs(rng), "noise": rng.normal(size=(4, 8)).astype(np.float32)}
  served_before = server.served
  for _ in range(3):  # Send and hang up before the reply: the server's send hits a closed connection.
    ws = ws_client.connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None)
    ws.recv()
    ws.send(msgpack_numpy.packb(good))
    ws.close()
  client = _client(server)
  np.testing.assert_array_equal(client.infer(good)["actions"],
                                policy.infer(_native(good), noise=good["noise"])["actions"])
  assert server.served <= served_before + 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_subprocess_server_stops_cleanly_on_sigterm(export_dir):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen([sys.executable, "-m", "pi0_jax.serve", f"--checkpoint={export_dir}", f"--port={port}",
                           "--host=127.0.0.1", "--nowarmup"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 120
    while True:
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
          assert r.status == 200 and r.read() == b"OK\n"
        break
      except OSError:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.5)
    ws = ws_client.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None)
    assert msgpack_numpy.unpackb(ws.recv())["dataset"] == "serve_untrained"
    ws.send(b"\xc1")
    assert ws.recv().startswith("bad request: undecodable")
    proc.send_signal(signal.SIGTERM)  # With the client still connected.
    out, _ = proc.communicate(timeout=60)
    with pytest.raises(Exception, match="1001"):  # The server said goodbye: going away.
      ws.recv(timeout=10)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM received" in out and "stopping: closing 1 connection(s)" in out and "stopped after 0 replies" in out
