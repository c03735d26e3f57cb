"""Test setup: 8 simulated CPU devices, so sharding runs for real."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MUJOCO_GL", "egl")

# The files that run real multi-process training (minutes each) start first, one per worker, so that they overlap
# with the many short files instead of ending the run one after the other (launch/test.sh keeps this order with
# --no-loadscope-reorder).
_LONG_FIRST = ("test_train_loop.py", "test_train_preemption.py", "test_evaluate.py", "test_export_policy.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return _LONG_FIRST.index(name) if name in _LONG_FIRST else len(_LONG_FIRST)
  items.sort(key=rank)  # Stable: the order within a file and among the other files is kept.
