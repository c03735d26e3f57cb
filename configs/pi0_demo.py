"""A small pi0 pre-trained on the Meta-World ML10 demo datasets, sized for 2 CPU cores.

  python -m pi0_jax.train --config=configs/pi0_demo.py --workdir=runs/demo
  python -m pi0_jax.train --config=configs/pi0_demo.py:steps=2000 --workdir=runs/demo --config.global_batch=64

arg: comma-separated key=value: steps (total steps), data_dir (where build_metaworld wrote the datasets).
"""

import ml_collections

from pi0_jax.train import defaults
from pi0_jax.model.config import get_preset


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  c = defaults.base_config()
  c.model = ml_collections.ConfigDict(get_preset("demo").to_dict())
  c.global_batch = 32
  c.total_steps = int(args.get("steps", 1500))
  c.optimizer.update(peak_lr=3e-4, warmup_steps=min(100, c.total_steps // 10), decay_steps=c.total_steps, end_lr=3e-5,
                     weight_decay=1e-4)
  c.ema_decay = None
  c.log_every = 25
  c.checkpoint_every = 250
  c.data = defaults.data_config(
      datasets=[dict(name="metaworld_ml10_train", dir=f"{args.get('data_dir', 'data/metaworld')}/metaworld_ml10_train")],
      shuffle_buffer=2000, augment=True, norm_mode="zscore", num_parallel_calls=2,
      tokenizer=f"{args.get('data_dir', 'data/metaworld')}/tokenizer.model")
  return c
