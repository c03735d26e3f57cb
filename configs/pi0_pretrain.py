"""Full-size pi0 pre-training on an RLDS mixture on a TPU pod (v5e-256 by default).

  python -m pi0_jax.train --config=configs/pi0_pretrain.py --workdir=gs://bucket/pi0 --distributed
  python -m pi0_jax.aot --config=configs/pi0_pretrain.py --topology=v5e:16x16

arg: comma-separated key=value: data_dir (TFDS root of the RLDS datasets), paligemma (path of a
PaliGemma .npz to start from), batch (global batch).
"""

import ml_collections

from pi0_jax.train import defaults
from pi0_jax.model.config import get_preset


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  c = defaults.base_config()
  c.model = ml_collections.ConfigDict(get_preset("pi0").to_dict())
  # 256 chips as 16 x 16 FSDP: two FSDP axes let SigLIP's 1152- and 4304-wide weights split 16 ways each.
  c.mesh = [["data", 1], ["fsdp", 16], ["fsdp2", -1]]
  c.data_axes = ("data", "fsdp", "fsdp2")
  c.fsdp_axes = ("fsdp", "fsdp2")
  c.global_batch = int(args.get("batch", 1024))
  c.total_steps = 700_000
  c.optimizer.update(peak_lr=2.5e-5, warmup_steps=1000, decay_steps=700_000, end_lr=2.5e-6)
  c.ema_decay = 0.99
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.keep_every = 50_000
  c.distributed = True
  c.init.paligemma_npz = args.get("paligemma")
  data_dir = args.get("data_dir", "gs://your-bucket/rlds")
  c.data = defaults.data_config(
      # n^0.43 weights by default; give `weight` to override a dataset's.
      datasets=[dict(name=name, data_dir=data_dir) for name in ("metaworld_ml10_train",)],
      shuffle_buffer=250_000, augment=True, norm_mode="zscore", num_parallel_calls=64,
      tokenizer=args.get("tokenizer", "paligemma_tokenizer.model"))
  return c
