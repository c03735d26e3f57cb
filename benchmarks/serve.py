"""Load test of pi0_jax.serve: N concurrent openpi clients on localhost sockets against a server process.

The server is `python -m pi0_jax.serve` in its own process, serving an untrained export of --preset
(pi0_jax.serve.untrained). Each client is openpi's WebsocketClientPolicy in a thread of this process, sending
its own observations (distinct prompts, states, frames and noise) back to back for --duration_s. Every reply is
checked against the actions `Policy.infer` gives in this process for that client's observation with the same
noise: a reply equal to its own request's actions counts as correct, one equal to another request's as mixed
up, a request without a reply as lost. The protocol's overhead, with one client: the round trip minus
`Policy.infer` on the same observations in a fresh process of its own (timed just before, with the server idle),
and per request the round trip minus the server's own `Policy.infer` call (server_timing.infer_ms).

  python benchmarks/serve.py --preset=tiny --clients=1,4,8 --duration_s=20 --out=benchmarks/results/serve.json
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PRESET = flags.DEFINE_string("preset", "tiny", "Pi0Config preset of the untrained export (tiny or demo).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Serve this export instead of an untrained --preset.")
_CLIENTS = flags.DEFINE_list("clients", ["1", "4", "8"], "Numbers of concurrent clients, one run each.")
_DURATION = flags.DEFINE_float("duration_s", 20.0, "Seconds each run sends requests.")
_IMAGE = flags.DEFINE_integer("image_size", 224, "Side of the square uint8 frames sent (openpi clients send 224).")
_OBS_PER_CLIENT = flags.DEFINE_integer("obs_per_client", 3, "Distinct observations each client cycles through.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/serve.json", "JSON output ('' to skip).")


def _observations(policy, clients: int, per_client: int, size: int) -> list[list[dict]]:
  """Distinct requests per client, with the noise that makes their actions deterministic."""
  from pi0_jax.serve.untrained import PROMPTS  # pylint: disable=g-import-not-at-top
  out = []
  for c in range(clients):
    rng = np.random.default_rng(1000 + c)
    out.append([{"observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                 "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                 "observation/state": rng.normal(size=policy.state_dim).astype(np.float32),
                 "prompt": PROMPTS[(c + i) % len(PROMPTS)],
                 "noise": rng.normal(size=(policy.action_horizon, policy.config.action_dim)).astype(np.float32)}
                for i in range(per_client)])
  return out


def _native(request: dict) -> dict:
  return {"images": {"image": request["observation/image"], "wrist_image": request["observation/wrist_image"]},
          "state": request["observation/state"], "prompt": request["prompt"]}


def _start_server(checkpoint: str, log_path: str) -> tuple[subprocess.Popen, int]:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, "-m", "pi0_jax.serve", f"--checkpoint={checkpoint}", f"--port={port}",
                           "--host=127.0.0.1"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  import urllib.request  # pylint: disable=g-import-not-at-top
  deadline = time.time() + 600
  while True:
    try:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
        return proc, port
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        raise RuntimeError(f"server did not start; see {log_path}") from None
      time.sleep(0.5)


def _client_loop(port: int, requests: list[dict], expected: list[np.ndarray], everyone: list[np.ndarray],
                 stop_at: float, record: dict) -> None:
  """One robot: sends its requests in turn until stop_at, checking each reply against its own expectation."""
  from openpi_client.websocket_client_policy import WebsocketClientPolicy  # pylint: disable=g-import-not-at-top
  client = WebsocketClientPolicy(host="127.0.0.1", port=port)
  i = 0
  while time.perf_counter() < stop_at:
    k = i % len(requests)
    record["sent"] += 1
    start = time.perf_counter()
    try:
      reply = client.infer(requests[k])
    except Exception as e:  # pylint: disable=broad-except
      record["errors"].append(repr(e)[:300])
      break
    record["rtt_ms"].append(1e3 * (time.perf_counter() - start))
    for key in ("server_ms", "queue_ms", "infer_ms"):
      record[key].append(reply["server_timing"][key])
    actions = reply["actions"]
    if np.array_equal(actions, expected[k]):
      record["correct"] += 1
    elif any(np.array_equal(actions, other) for other in everyone):
      record["mixed_up"] += 1
    else:
      record["wrong"] += 1
    i += 1
  client._ws.close()  # pylint: disable=protected-access


def _percentiles(xs: list[float]) -> dict:
  if not xs:
    return {}
  a = np.asarray(xs)
  return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
          "n": len(xs)}


def run_load(port: int, observations: list[list[dict]], expected: list[list[np.ndarray]], duration_s: float) -> dict:
  clients = len(observations)
  everyone = [a for per_client in expected for a in per_client]
  records = [{"sent": 0, "correct": 0, "mixed_up": 0, "wrong": 0, "errors": [], "rtt_ms": [], "server_ms": [],
              "queue_ms": [], "infer_ms": []} for _ in range(clients)]
  stop_at = time.perf_counter() + duration_s
  threads = [threading.Thread(target=_client_loop, args=(port, observations[c], expected[c], everyone, stop_at,
                                                          records[c])) for c in range(clients)]
  start = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  elapsed = time.perf_counter() - start
  merged = {k: [x for r in records for x in r[k]] for k in ("rtt_ms", "server_ms", "queue_ms", "infer_ms")}
  # Per request: what the round trip costs beyond the server's own Policy.infer call (same request, same load).
  merged["rtt_minus_server_infer_ms"] = [a - b for a, b in zip(merged["rtt_ms"], merged["infer_ms"])]
  replies = sum(len(r["rtt_ms"]) for r in records)
  return {"clients": clients, "duration_s": elapsed, "requests": sum(r["sent"] for r in records), "replies": replies,
          "throughput_rps": replies / elapsed, "correct": sum(r["correct"] for r in records),
          "mixed_up": sum(r["mixed_up"] for r in records), "wrong": sum(r["wrong"] for r in records),
          "lost": sum(r["sent"] for r in records) - replies, "errors": [e for r in records for e in r["errors"]],
          "per_client_replies": [len(r["rtt_ms"]) for r in records],
          **{f"{k}": _percentiles(v) for k, v in merged.items()}}


# In-process Policy.infer, timed in a fresh process that imports what the server imports and nothing more (this
# one has run the export, which loads TensorFlow and its thread pools, and hosts the client threads).
_IN_PROCESS = """
import json, sys, time
import numpy as np
from pi0_jax.policy import Policy
checkpoint, arrays, repeats = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3])
prompts = json.loads(sys.argv[4])
policy = Policy.load(checkpoint)
requests = [({"images": {"image": arrays[f"image{i}"], "wrist_image": arrays[f"wrist{i}"]}, "state": arrays[f"state{i}"],
              "prompt": p}, arrays[f"noise{i}"]) for i, p in enumerate(prompts)]
policy.infer(requests[0][0], noise=requests[0][1])
times = []
for i in range(repeats):
  obs, noise = requests[i % len(requests)]
  start = time.perf_counter()
  policy.infer(obs, noise=noise)
  times.append(1e3 * (time.perf_counter() - start))
  time.sleep(0.002)  # Spaced like a client's requests: a busy loop fares worse on a contended CPU's scheduler.
print(json.dumps(times))
"""


def in_process_ms(checkpoint: str, requests: list[dict], repeats: int, tmp: str) -> list[float]:
  """Wall times of Policy.infer on `requests` (after a warm-up call) in a fresh process on the same CPUs."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, "requests.npz")
  np.savez(path, **{f"{name}{i}": r[key] for i, r in enumerate(requests) for name, key in (
      ("image", "observation/image"), ("wrist", "observation/wrist_image"), ("state", "observation/state"),
      ("noise", "noise"))})
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run([sys.executable, "-c", _IN_PROCESS, checkpoint, path, str(repeats),
                      json.dumps([r["prompt"] for r in requests])], env=env, cwd=ROOT, capture_output=True, text=True,
                     timeout=600, check=True)
  return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv) -> None:
  del argv
  import common  # pylint: disable=g-import-not-at-top
  from pi0_jax.policy import Policy  # pylint: disable=g-import-not-at-top
  from pi0_jax.serve.untrained import write_untrained_export  # pylint: disable=g-import-not-at-top
  counts = [int(c) for c in _CLIENTS.value]
  from pi0_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint = _CHECKPOINT.value or write_untrained_export(os.path.join(tmp, "export"), preset=_PRESET.value)
    policy = Policy.load(checkpoint)
    observations = _observations(policy, max(counts), _OBS_PER_CLIENT.value, _IMAGE.value)
    expected = [[policy.infer(_native(r), noise=r["noise"])["actions"] for r in per] for per in observations]
    proc, port = _start_server(checkpoint, os.path.join(tmp, "server.log"))
    try:
      run_load(port, observations[:1], expected[:1], 2.0)  # Warm-up: the server compiles the noise path.
      # In-process Policy.infer on the first client's requests, while the server idles, just before the runs.
      local = in_process_ms(checkpoint, observations[0], 400, tmp)
      runs = []
      for n in counts:
        runs.append(run_load(port, observations[:n], expected[:n], _DURATION.value))
        r = runs[-1]
        print(f"{n} client(s): {r['throughput_rps']:.1f} req/s, round trip p50 {r['rtt_ms']['p50']:.1f} ms "
              f"p99 {r['rtt_ms']['p99']:.1f} ms, correct {r['correct']}/{r['replies']}, lost {r['lost']}, "
              f"mixed up {r['mixed_up']}")
    finally:
      proc.send_signal(signal.SIGTERM)
      exit_code = proc.wait(timeout=120)
  one = runs[0] if counts[0] == 1 else None
  overhead = None
  if one:
    overhead = {"round_trip_p50_ms": one["rtt_ms"]["p50"], "in_process_infer_p50_ms": statistics.median(local),
                "round_trip_minus_in_process_p50_ms": one["rtt_ms"]["p50"] - statistics.median(local),
                "round_trip_minus_server_infer_p50_ms": one["rtt_minus_server_infer_ms"]["p50"],
                "server_side_overhead_p50_ms": one["server_ms"]["p50"] - one["infer_ms"]["p50"]}
    print(f"protocol overhead (1 client, p50): round trip {overhead['round_trip_p50_ms']:.2f} ms vs in-process "
          f"Policy.infer {overhead['in_process_infer_p50_ms']:.2f} ms; round trip minus the server's own infer, "
          f"per request: {overhead['round_trip_minus_server_infer_p50_ms']:.2f} ms")
  payload = {"machine": common.machine(), "preset": _PRESET.value if not _CHECKPOINT.value else _CHECKPOINT.value,
             "image_size": _IMAGE.value, "cameras": 2, "duration_s": _DURATION.value,
             "note": ("CPU shared with other jobs (load average before/after in cpu_load_avg); clients are threads of "
                      "the benchmark process, on the same CPUs as the server process. Untrained weights: latency "
                      "does not depend on them. The in-process baseline runs in its own time window, so on a shared "
                      "CPU it moves with the load; overhead.round_trip_minus_server_infer_p50_ms compares the "
                      "same requests and is the robust protocol overhead."),
             "cpu_load_avg": {"before": load_before, "after": os.getloadavg()},
             "server_exit_code": exit_code, "runs": runs, "in_process_infer_ms": _percentiles(local),
             "overhead": overhead}
  common.write_json(_OUT.value, payload)
  if exit_code != 0 or any(r["lost"] or r["mixed_up"] or r["wrong"] or r["errors"] for r in runs):
    sys.exit("serve benchmark: lost, mixed-up or wrong replies, or an unclean server exit (see the JSON).")


if __name__ == "__main__":
  app.run(main)
