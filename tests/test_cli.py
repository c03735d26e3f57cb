"""The commands' edges (pi0_jax.cli): --help, one-line user errors, --verbose, compile logs, no TPU probe noise."""

from __future__ import annotations

import ast
import configparser
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import pi0_jax
from pi0_jax import cli, logs

REPO = pathlib.Path(__file__).resolve().parents[1]


def _console_scripts() -> dict[str, str]:
  """{script: "module:function"} from setup.cfg, so every console script is covered."""
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  lines = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
  return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


SCRIPTS = _console_scripts()


def _env(**extra) -> dict[str, str]:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path]), "TF_CPP_MIN_LOG_LEVEL": "3"}
  env.pop("PI0_VERBOSE", None)
  return {**env, **extra}


def _script(name: str, *args: str, **env) -> subprocess.CompletedProcess:
  """Runs console script `name` as its installed wrapper does (argv[0] is the script's path), from this tree."""
  module, function = SCRIPTS[name].split(":")
  argv = [f"/venv/bin/{name}", *args]
  code = f"import sys; sys.argv = {argv!r}; from {module} import {function}; sys.exit({function}())"
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(**env), timeout=300)


def _description(name: str) -> str:
  """The docstring of the script's module, read without importing it (importing defines its flags)."""
  module = SCRIPTS[name].split(":")[0]
  if module == "pi0_jax.train.loop":  # `python -m pi0_jax.train`'s usage is its __main__'s.
    module = "pi0_jax.train.__main__"
  path = REPO / "src" / (module.replace(".", "/") + ".py")
  return ast.get_docstring(ast.parse(path.read_text()), clean=False)


def test_every_console_script_is_tested():
  assert set(SCRIPTS) == {"pi0-train", "pi0-export", "pi0-evaluate", "pi0-aot", "pi0-stats", "pi0-tokenizer",
                          "pi0-build-metaworld", "pi0-weights", "pi0-serve"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_0_with_description_and_flags(name):
  proc = _script(name, "--help")
  assert proc.returncode == 0, proc.stderr[-2000:]
  doc = _description(name)
  assert proc.stdout.startswith(doc.strip("\n").splitlines()[0]), proc.stdout[:300]
  assert "python -m pi0_jax." in proc.stdout  # The usage examples.
  assert "\nflags:\n" in proc.stdout and "--[no]verbose" in proc.stdout
  assert "Traceback" not in proc.stderr


def test_installed_console_scripts_help_exits_0():
  """The wrappers pip wrote next to this python (an editable install; PYTHONPATH puts this tree first)."""
  bin_dir = pathlib.Path(sys.executable).parent
  installed = [name for name in sorted(SCRIPTS) if (bin_dir / name).exists()]
  if not installed:
    pytest.skip(f"no console scripts installed in {bin_dir}")
  for name in installed:
    proc = subprocess.run([str(bin_dir / name), "--help"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith(_description(name).strip("\n").splitlines()[0]), (
        name, proc.stderr[-2000:])


@pytest.mark.parametrize("module, flag", [("pi0_jax.train", "--workdir"), ("pi0_jax.evaluate", "--checkpoint")])
def test_python_m_help_exits_0(module, flag):
  proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=_env(),
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"python -m {module} --" in proc.stdout and f"\n  {flag}: " in proc.stdout


def _error_lines(proc) -> list[str]:
  return [line for line in proc.stderr.splitlines() if line.strip()]


def test_corrupt_npz_is_one_line_naming_the_file_and_verbose_adds_the_traceback(tmp_path):
  bad = tmp_path / "paligemma.npz"
  bad.write_bytes(b"not a zip archive")
  message = (f"pi0-weights: error: {bad}: not a readable .npz (a zip archive of .npy arrays): File is not a zip "
             "file; an incomplete download?")
  proc = _script("pi0-weights", "--check", f"--npz={bad}")
  assert proc.returncode == 1
  assert _error_lines(proc) == [f"{message} (Run with --verbose for the traceback.)"], proc.stderr
  proc = _script("pi0-weights", "--check", f"--npz={bad}", "--verbose")
  assert proc.returncode == 1
  assert "Traceback (most recent call last)" in proc.stderr and "zipfile.BadZipFile" in proc.stderr
  assert _error_lines(proc)[-1] == message


def test_missing_file_and_usage_errors_are_one_line(tmp_path):
  missing = tmp_path / "no_run"
  proc = _script("pi0-export", f"--workdir={missing}", f"--out={tmp_path / 'export'}")
  assert proc.returncode == 1
  assert _error_lines(proc) == [f"pi0-export: error: workdir {missing} does not exist. (Run with --verbose for the "
                                "traceback.)"]
  proc = _script("pi0-export", f"--workdir={missing}")
  assert proc.returncode == 1
  assert _error_lines(proc) == ["pi0-export: error: --workdir and --out are required. (Try --help.)"]


def test_bad_config_is_one_line(tmp_path):
  proc = _script("pi0-train", f"--config={REPO / 'configs/pi0_tiny.py'}", "--config.optimizer.no_such_field=1",
                 f"--workdir={tmp_path}")
  assert proc.returncode == 1
  assert _error_lines(proc) == ["pi0-train: error: no config field 'no_such_field' (in a --config.FIELD=VALUE "
                                "override) (Try --help.)"]
  proc = _script("pi0-train", f"--config={tmp_path / 'missing_config.py'}", f"--workdir={tmp_path}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("pi0-train: error: ") and str(tmp_path / "missing_config.py") in proc.stderr


def test_project_errors_are_user_errors_and_bugs_keep_their_traceback():
  from pi0_jax.data.validate import DataError
  from pi0_jax.weights import ParamTreeMismatchError
  assert issubclass(DataError, cli.UserError) and issubclass(ParamTreeMismatchError, cli.UserError)
  assert issubclass(DataError, ValueError)  # Library callers catching ValueError still do.
  code = textwrap.dedent("""
      import sys
      from pi0_jax import cli
      from pi0_jax.data.validate import DataError
      def main(argv):
        raise {}
      sys.argv = ["/venv/bin/pi0-x"]
      cli.run(main, None, "__main__")
  """)
  data_error = 'DataError("dataset \'d\' episode 3: key \'action\' has shape (7,), expected (4,)")'
  proc = subprocess.run([sys.executable, "-c", code.format(data_error)], capture_output=True, text=True,
                        env=_env(), timeout=120)
  assert proc.returncode == 1
  assert _error_lines(proc) == ["pi0-x: error: dataset 'd' episode 3: key 'action' has shape (7,), expected (4,) "
                                "(Run with --verbose for the traceback.)"]
  proc = subprocess.run([sys.executable, "-c", code.format(data_error)], capture_output=True, text=True,
                        env=_env(PI0_VERBOSE="1"), timeout=120)
  assert proc.returncode == 1 and "Traceback" in proc.stderr and "DataError: dataset 'd'" in proc.stderr
  assert _error_lines(proc)[-1] == "pi0-x: error: dataset 'd' episode 3: key 'action' has shape (7,), expected (4,)"
  proc = subprocess.run([sys.executable, "-c", code.format('RuntimeError("a bug")')], capture_output=True,
                        text=True, env=_env(), timeout=120)
  assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr


def test_compile_is_logged_with_its_duration(caplog):
  import jax
  import jax.numpy as jnp
  caplog.set_level(logging.INFO, logger="pi0_jax")
  with logs.compiling("the doubler"):
    jax.jit(lambda x: 2 * x).lower(jnp.ones(3)).compile()
  inc = logs.log_first_call(jax.jit(lambda x: x + 1), "the incrementer")
  assert float(inc(jnp.ones(3))[0]) == 2.0 and float(inc(jnp.ones(3))[0]) == 2.0
  messages = [r.getMessage() for r in caplog.records if r.name == "pi0_jax"]
  assert len(messages) == 4, messages  # The second call of `inc` logs nothing.
  assert messages[0] == "compiling the doubler ..." and messages[2].startswith("compiling the incrementer")
  for m in (messages[1], messages[3]):
    assert m.startswith("compiled the ") and m.endswith(" s") and float(m.split(" in ")[-1][:-2]) >= 0
  assert all(r.filename == "test_cli.py" for r in caplog.records[:2])  # Attributed to the caller.


TPU_NOISE = ("TPU_WORKER_HOSTNAMES", "host bounds", "libtpu")


@pytest.mark.parametrize("order", ["jax_first", "pi0_jax_first"])
def test_no_tpu_probe_on_a_host_without_tpu(order):
  """A fresh python importing pi0_jax and running a computation prints none of libtpu's start-up errors."""
  if pi0_jax._tpu_attached() or any(os.path.exists(p) for p in pi0_jax._GPU_DEVICE_FILES):
    pytest.skip("this host has an accelerator: JAX_PLATFORMS is left to JAX")
  imports = "import jax, jax.numpy as jnp; import pi0_jax" if order == "jax_first" else (
      "import pi0_jax; import jax, jax.numpy as jnp")
  code = f"{imports}; print(float(jnp.ones(3).sum()), jax.default_backend(), jax.config.jax_platforms)"
  env = _env()
  for name in ("JAX_PLATFORMS", "JAX_FORCE_TPU_INIT", "TPU_SKIP_MDS_QUERY", "TF_CPP_MIN_LOG_LEVEL"):
    env.pop(name, None)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["3.0", "cpu", "cpu"]
  assert not [line for line in proc.stderr.splitlines() if any(n in line for n in TPU_NOISE)], proc.stderr


def test_explicit_jax_platforms_is_kept():
  code = "import os; import pi0_jax; print(os.environ['JAX_PLATFORMS'])"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=_env(JAX_PLATFORMS="cpu,tpu"), timeout=60)
  assert proc.stdout.strip() == "cpu,tpu", proc.stderr
