"""A pi0 policy behind openpi's websocket protocol, so an openpi robot client runs against it unchanged.

The protocol, as `openpi_client.websocket_client_policy.WebsocketClientPolicy` speaks it:

  connect        the server sends one binary frame: msgpack metadata (a dict)
  request        the client sends one binary frame: a msgpack-numpy observation dict (pi0_jax.serve.msgpack_numpy)
  reply          one binary frame: {"actions": float32 [H, A] ([B, H, A] for batched input), "policy_timing":
                 {"infer_ms"}, "server_timing": {"infer_ms", "queue_ms", "server_ms", "prev_total_ms"}}
  error          one text frame (the client raises it as RuntimeError)
  GET /healthz   200 OK, for load balancers and start-up scripts

Errors: a request the policy cannot take (undecodable bytes, missing keys, wrong shapes or dtypes) gets a text
frame "bad request: <what and where>" and the connection stays open for the next request. Anything else (a bug)
gets the traceback as a text frame and the connection is closed with code 1011, as openpi's server does. Either
way the server keeps serving its other clients.

All inference runs on one worker thread, one request at a time in arrival order: the policy compiles once per
batch shape and owns one device, and requests of concurrent clients queue (their wait is `queue_ms`). A client
that disconnects mid-request loses its reply and nothing else. SIGTERM and SIGINT stop the server cleanly: it
stops accepting, closes the open connections (code 1001), lets the request in flight finish and returns.

Observation keys: the request is flattened with "/" between nested keys (openpi's convention), each key is
renamed through a `KeyMap`, and the result is unflattened into what `Policy.infer` takes ({"images": {camera:
image}, "state", "prompt"}). The default map takes the policy's own keys as they are and openpi's flat
"observation/<camera>", "observation/state" keys (openpi's LIBERO client sends those). Optional request fields
go to `Policy.infer` as keyword arguments: "noise" always, "prev_actions" and "inference_delay" (real-time
chunking) only when this version's `Policy.infer` takes them, else the request is refused saying so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import inspect
import itertools
import logging
import signal
import threading
import time
import traceback
from typing import Any, Mapping, Sequence

import numpy as np

from pi0_jax.serve import msgpack_numpy

__all__ = ["BadRequest", "KeyMap", "PolicyServer", "OPTIONAL_FIELDS"]

logger = logging.getLogger(__name__)

# Request fields that are keyword arguments of Policy.infer rather than observation keys.
OPTIONAL_FIELDS = ("noise", "prev_actions", "inference_delay")
_POLICY_KEYS = ("state", "prompt")


class BadRequest(ValueError):
  """The client's request cannot be served; the message says why (sent back as a text frame)."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "/"))
    else:
      out[key] = v
  return out


class KeyMap:
  """Renames a request's flattened keys to `Policy.infer`'s ("images/<camera>", "state", "prompt").

  `renames` maps request key -> policy key. Request keys that are already policy keys pass as they are;
  other keys are ignored (clients often send more than a policy uses), and a missing one is reported by the
  policy's own check, with this map and the keys received appended.
  """

  def __init__(self, renames: Mapping[str, str], camera_keys: Sequence[str]):
    self.camera_keys = tuple(camera_keys)
    wanted = {f"images/{k}" for k in self.camera_keys} | set(_POLICY_KEYS)
    for src, dst in renames.items():
      if dst not in wanted:
        raise ValueError(f"key map {src!r} -> {dst!r}: the policy takes {sorted(wanted)}.")
    self.renames = dict(renames)
    self._wanted = wanted

  @classmethod
  def default(cls, camera_keys: Sequence[str]) -> "KeyMap":
    """Policy keys as they are, plus openpi's flat "observation/<camera>" and "observation/state"."""
    renames = {f"observation/{k}": f"images/{k}" for k in camera_keys}
    return cls({**renames, "observation/state": "state"}, camera_keys)

  @classmethod
  def parse(cls, specs: Sequence[str], camera_keys: Sequence[str]) -> "KeyMap":
    """From "request_key=policy_key" strings (the --key_map flag); empty: the default map."""
    if not specs:
      return cls.default(camera_keys)
    pairs = [s.split("=", 1) for s in specs]
    bad = [s for s, p in zip(specs, pairs) if len(p) != 2 or not p[0] or not p[1]]
    if bad:
      raise ValueError(f"key map entries {bad}: expected request_key=policy_key, e.g. "
                       "observation/image=images/image.")
    return cls(dict(pairs), camera_keys)

  def apply(self, request: Mapping[str, Any]) -> dict[str, Any]:
    """Request dict -> {"images": {...}, "state": ..., "prompt": ...} (only the keys present)."""
    obs: dict[str, Any] = {"images": {}}
    for key, value in _flatten(request).items():
      target = self.renames.get(key, key if key in self._wanted else None)
      if target is None:
        continue
      if target.startswith("images/"):
        obs["images"][target[len("images/"):]] = value
      else:
        obs[target] = value
    return obs

  def describe(self) -> dict[str, str]:
    return {**{k: k for k in sorted(self._wanted)}, **self.renames}


def _policy_kwargs(policy) -> set[str]:
  """Which OPTIONAL_FIELDS this policy's infer accepts (by signature: real-time chunking may be absent)."""
  params = inspect.signature(policy.infer).parameters
  if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return set(OPTIONAL_FIELDS)
  return {f for f in OPTIONAL_FIELDS if f in params}


class PolicyServer:
  """Serves `policy` (a pi0_jax.policy.Policy, or anything with its `infer`) over openpi's websocket protocol.

  serve_forever() blocks until SIGTERM/SIGINT (in the main thread) or stop() (from any thread); `port` is the
  bound port once `ready` is set (pass port=0 to let the OS pick one).
  """

  def __init__(self, policy, *, host: str = "0.0.0.0", port: int = 8000, key_map: KeyMap | None = None,
               metadata: Mapping[str, Any] | None = None, max_message_bytes: int | None = 256 << 20):
    self._policy = policy
    self._host, self._port = host, port
    self.key_map = key_map or KeyMap.default(policy.camera_keys)
    self._accepted = _policy_kwargs(policy)
    self._max_size = max_message_bytes
    self.metadata = {**self._default_metadata(), **dict(metadata or {})}
    self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pi0-infer")
    self._ids = itertools.count()
    self.ready = threading.Event()
    self._loop: asyncio.AbstractEventLoop | None = None
    self._stop: asyncio.Event | None = None
    self.served = 0  # Replies sent.

  def _default_metadata(self) -> dict[str, Any]:
    p = self._policy
    meta = {"server": "pi0_jax", "camera_keys": list(p.camera_keys), "key_map": self.key_map.describe(),
            "optional_fields": sorted(self._accepted)}
    for name in ("dataset", "state_dim", "action_dim", "action_horizon", "num_steps", "default_prompt"):
      if hasattr(p, name):
        meta[name] = getattr(p, name)
    step = (getattr(p, "metadata", None) or {}).get("step")
    if step is not None:
      meta["export_step"] = step
    return meta

  @property
  def port(self) -> int:
    return self._port

  # Requests.

  def parse(self, message: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A received frame -> (observation for Policy.infer, keyword arguments, the request's flattened keys);
    BadRequest if it cannot be."""
    if isinstance(message, str):
      raise BadRequest("expected a binary frame of msgpack-numpy, got a text frame.")
    try:
      request = msgpack_numpy.unpackb(message)
    except msgpack_numpy.DecodeError as e:
      raise BadRequest(f"undecodable frame of {len(message)} bytes: {e}") from None
    if not isinstance(request, Mapping) or not all(isinstance(k, str) for k in request):
      raise BadRequest(f"expected a msgpack map with str keys (the observation dict), got {type(request).__name__}.")
    refused = [f for f in OPTIONAL_FIELDS if f in request and f not in self._accepted]
    if refused:
      raise BadRequest(f"fields {refused}: this server's Policy.infer does not take them (it takes "
                       f"{sorted(self._accepted)}); real-time chunking needs a pi0_jax whose Policy.infer has "
                       "prev_actions and inference_delay.")
    kwargs = {f: request[f] for f in OPTIONAL_FIELDS if f in request}
    rest = {k: v for k, v in request.items() if k not in OPTIONAL_FIELDS}
    return self.key_map.apply(rest), kwargs, sorted(_flatten(rest))

  def _infer(self, obs: dict[str, Any], kwargs: dict[str, Any], submitted: float) -> tuple[dict, float, float]:
    """On the worker thread: (Policy.infer's result, queue wait in s, infer wall time in s)."""
    start = time.perf_counter()
    result = self._policy.infer(obs, **kwargs)
    return result, start - submitted, time.perf_counter() - start

  async def _serve_one(self, message: Any, received: float, prev_total_ms: float | None) -> tuple[bytes, dict]:
    """One request -> (the packed reply, its server timing); BadRequest for the client's mistakes."""
    obs, kwargs, keys = self.parse(message)
    loop = asyncio.get_running_loop()
    try:
      result, queue_s, infer_s = await loop.run_in_executor(self._executor, self._infer, obs, kwargs,
                                                            time.perf_counter())
    except ValueError as e:  # Policy's input checks: they name the key and the expected value.
      raise BadRequest(f"{e} (request keys {keys}; key map {self.key_map.renames})") from None
    reply = {k: v for k, v in result.items() if k != "infer_ms"}
    reply["actions"] = np.asarray(reply["actions"], np.float32)
    reply["policy_timing"] = {"infer_ms": float(result.get("infer_ms", 1e3 * infer_s))}
    timing = {"infer_ms": 1e3 * infer_s, "queue_ms": 1e3 * queue_s}
    if prev_total_ms is not None:
      timing["prev_total_ms"] = prev_total_ms
    timing["server_ms"] = 1e3 * (time.perf_counter() - received)
    reply["server_timing"] = timing
    return msgpack_numpy.packb(reply), timing

  async def _handler(self, ws) -> None:
    import websockets  # pylint: disable=g-import-not-at-top
    client = f"{ws.remote_address[0]}:{ws.remote_address[1]}" if ws.remote_address else "?"
    logger.info("client %s connected", client)
    prev_total_ms = None
    try:
      await ws.send(msgpack_numpy.packb(self.metadata))
      while True:
        message = await ws.recv()
        received, rid = time.perf_counter(), next(self._ids)
        try:
          packed, timing = await self._serve_one(message, received, prev_total_ms)
        except BadRequest as e:
          logger.warning("client %s request %d: bad request: %s", client, rid, e)
          await ws.send(f"bad request: {e}")
          continue
        except Exception:  # pylint: disable=broad-except
          logger.exception("client %s request %d failed", client, rid)
          await ws.send(traceback.format_exc())
          await ws.close(code=1011, reason="Internal server error; traceback in the previous frame.")
          return
        await ws.send(packed)
        self.served += 1
        prev_total_ms = 1e3 * (time.perf_counter() - received)
        logger.info("client %s request %d: server %.1f ms (queue %.1f, infer %.1f)", client, rid,
                    timing["server_ms"], timing["queue_ms"], timing["infer_ms"])
    except websockets.ConnectionClosed:
      logger.info("client %s disconnected", client)

  # Running.

  async def run(self, install_signal_handlers: bool = False) -> None:
    """Serves until stop() (or SIGTERM/SIGINT when `install_signal_handlers`)."""
    from websockets.asyncio import server as ws_server  # pylint: disable=g-import-not-at-top
    self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
    if install_signal_handlers:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._loop.add_signal_handler(sig, self._on_signal, sig)
    async with ws_server.serve(self._handler, self._host, self._port, compression=None, max_size=self._max_size,
                               process_request=_health_check) as server:
      self._port = server.sockets[0].getsockname()[1]
      logger.info("serving %s on ws://%s:%d", self.metadata.get("dataset") or "policy", self._host, self._port)
      self.ready.set()
      await self._stop.wait()
      logger.info("stopping: closing %d connection(s)", len(server.connections))
      server.close(close_connections=True)
      await server.wait_closed()
    self._executor.shutdown(wait=True)
    logger.info("stopped after %d replies", self.served)

  def _on_signal(self, sig) -> None:
    logger.info("%s received", signal.Signals(sig).name)
    self._stop.set()

  def serve_forever(self) -> None:
    """Blocks serving; SIGTERM/SIGINT stop it when called from the main thread."""
    asyncio.run(self.run(install_signal_handlers=threading.current_thread() is threading.main_thread()))

  def stop(self) -> None:
    """Thread-safe: asks a running server to stop (serve_forever then returns)."""
    if self._loop is not None and self._stop is not None:
      self._loop.call_soon_threadsafe(self._stop.set)


def _health_check(connection, request):
  """GET /healthz answers 200 OK; every other path goes on to the websocket handshake."""
  if request.path == "/healthz":
    return connection.respond(http.HTTPStatus.OK, "OK\n")
  return None
