"""Full-size pi0 (the pod settings of configs/pi0_oxe_pretrain.py) trained on Meta-World ML10 alone: a
pipeline and sharding check at full size on data anyone can build (pi0-build-metaworld), not a pre-training
mixture; for that see configs/pi0_oxe_pretrain.py.

  python -m pi0_jax.train --config=configs/pi0_metaworld_full.py:data_dir=gs://b/metaworld --workdir=gs://b/mw
  python -m pi0_jax.aot --config=configs/pi0_metaworld_full.py --topology=v5e:16x16

arg: comma-separated key=value: data_dir (TFDS root holding metaworld_ml10_train/), paligemma (PaliGemma
.npz to start from), tokenizer, batch (global batch).
"""

import importlib.util
import os

import ml_collections


def _oxe_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pi0_oxe_pretrain.py")
  spec = importlib.util.spec_from_file_location("pi0_oxe_pretrain", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  base = _oxe_config()
  c = base.pod_config(args)
  c.data = base.data_config([dict(name="metaworld_ml10_train", data_dir=args.get("data_dir", "gs://your-bucket/rlds"))],
                            args)
  return c
