"""A local Google Cloud Storage for tests: gs:// URLs that TensorFlow's gfile, etils.epath and Orbax/TensorStore
all really read and write, offline.

One child process runs two servers:
  emulator  gcp-storage-emulator (pure Python, in memory), serving the GCS JSON API over plain HTTP. Four fixes
            are applied to it here: an empty upload is an empty object (TF writes "dir/" markers that way), a
            body sent chunked *and* with a Content-Length is read as chunked (RFC 9112 6.3; TF's curl sends both),
            a download names the object's generation in x-goog-generation as GCS does (TensorStore's conditional
            reads of OCDBT manifests need it), and the URLs it hands out (resumable upload sessions) name the
            server, not the Host header.
  TLS proxy TensorFlow's GCS filesystem has no endpoint setting: it always calls https://www.googleapis.com. It
            honours HTTPS_PROXY and CURL_CA_BUNDLE, so the proxy answers CONNECT, ends TLS with a certificate
            made for the test (openssl) and pipes the plain requests to the emulator.
TensorStore (Orbax's array I/O) goes to the emulator directly (TENSORSTORE_GCS_HTTP_URL); google-cloud-storage,
where installed, through STORAGE_EMULATOR_HOST. GOOGLE_AUTH_TOKEN_FOR_TESTING skips the credential lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading

BUCKET = "pi0-test-bucket"
_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def _patch_emulator():
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects

  media_upload = objects._media_upload

  def empty_ok(request, response, storage):
    if request.data is None:
      request._data = b""
    return media_upload(request, response, storage)

  read_raw = server._read_raw_data

  def chunked_first(handler):
    if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
      del handler.headers["Content-Length"]
    return read_raw(handler)

  def with_generation(request, response, storage, *args, **kwargs):
    objects.download(request, response, storage, *args, **kwargs)
    with contextlib.suppress(Exception):  # Not found: download answered 404 already.
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = obj["generation"]
      response["x-goog-metageneration"] = obj["metageneration"]

  for _, methods in server.HANDLERS:
    for method, handler in list(methods.items()):
      if handler is objects.download:
        methods[method] = with_generation
  objects._media_upload = empty_ok
  server._read_raw_data = chunked_first
  server.Request.base_url = property(lambda self: "http://%s:%d" % tuple(self._server_address[:2]))
  server.Request.full_url = property(lambda self: self.base_url + self._path)
  return server


def _pipe(src, dst):
  try:
    while data := src.recv(1 << 16):
      dst.sendall(data)
  except OSError:
    pass
  finally:
    for s in (src, dst):
      with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)


def _proxy(emulator_port: int, cert: str, key: str) -> socketserver.ThreadingTCPServer:
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(cert, key)

  class Handler(socketserver.BaseRequestHandler):
    def handle(self):
      head = b""
      while b"\r\n\r\n" not in head:
        chunk = self.request.recv(4096)
        if not chunk:
          return
        head += chunk
      target = head.split(b"\r\n", 1)[0].split()
      if target[0] != b"CONNECT" or target[1].split(b":")[0].decode() not in _HOSTS:
        self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        return
      self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
      tls = context.wrap_socket(self.request, server_side=True)
      upstream = socket.create_connection(("127.0.0.1", emulator_port))
      back = threading.Thread(target=_pipe, args=(upstream, tls), daemon=True)
      back.start()
      _pipe(tls, upstream)
      back.join()

  class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True

  return Server(("127.0.0.1", 0), Handler)


def _serve(workdir: str):
  """Child process: starts both servers, prints their ports as one JSON line, serves until stdin closes."""
  import logging
  logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # Request lines; stderr is os.devnull unless debugging.
  server = _patch_emulator()
  emulator = server.create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
  emulator.start()
  emulator_port = emulator._api._httpd.server_address[1]
  proxy = _proxy(emulator_port, os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem"))
  threading.Thread(target=proxy.serve_forever, daemon=True).start()
  print(json.dumps({"emulator": emulator_port, "proxy": proxy.server_address[1]}), flush=True)
  sys.stdin.read()
  proxy.shutdown()
  emulator.stop()


def available() -> str | None:
  """Why the emulator cannot run here, or None."""
  try:
    import gcp_storage_emulator  # noqa: F401
  except ImportError:
    return "gcp-storage-emulator is not installed (pip install -e .[test])"
  if shutil.which("openssl") is None:
    return "no openssl binary to make the proxy's TLS certificate"
  return None


@contextlib.contextmanager
def serve(workdir: str):
  """Runs the emulator and proxy in a child process; yields the environment variables that point gs:// at it.

  The caller sets them before the first gs:// access of its process (TensorFlow and TensorStore read them when
  they first open a GCS path) and passes them to any child process.
  """
  cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
  names = ",".join(f"DNS:{h}" for h in _HOSTS)
  subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days",
                  "1", "-subj", "/CN=pi0-jax-test-gcs", "-addext", f"subjectAltName={names}",
                  "-addext", "basicConstraints=critical,CA:TRUE"], check=True, capture_output=True)
  child = subprocess.Popen([sys.executable, __file__, workdir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=open(os.environ.get("GCS_EMULATOR_LOG", os.devnull), "w"), text=True)
  try:
    ports = json.loads(child.stdout.readline())
    proxy = f"http://127.0.0.1:{ports['proxy']}"
    yield {"HTTPS_PROXY": proxy, "https_proxy": proxy, "CURL_CA_BUNDLE": cert,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
           "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{ports['emulator']}",
           "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{ports['emulator']}"}
  finally:
    if child.poll() is not None:  # Any gs:// failure above then has this cause.
      print(f"gcs_emulator: the server process exited early, status {child.returncode}", file=sys.stderr)
    child.stdin.close()
    try:
      child.wait(timeout=10)
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()


if __name__ == "__main__":
  _serve(sys.argv[1])
