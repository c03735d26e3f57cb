"""Full-size pi0 pre-training on the Open X-Embodiment mixture (pi0_jax.data.oxe) on a TPU pod (v5e-256).

  python -m pi0_jax.train --config=configs/pi0_oxe_pretrain.py:data_dir=gs://b/oxe --workdir=gs://b/pi0 --distributed
  python -m pi0_jax.aot --config=configs/pi0_oxe_pretrain.py --topology=v5e:16x16

arg: comma-separated key=value: data_dir (TFDS root holding <dataset>/<version>/ for each OXE dataset),
paligemma (PaliGemma .npz to start from), tokenizer, batch (global batch), datasets (a '+'-joined subset of
pi0_jax.data.oxe.OXE; default all 21).

Mixture weights are n ** 0.43 (pi0). With a local data_dir, n is the frames the pipeline counts in each
training split; otherwise (e.g. gs://) n is each dataset's published episode count (pi0_jax.data.oxe), so
the weights are known before any host opens the data.
"""

import os

import ml_collections

from pi0_jax.data import mixture, oxe
from pi0_jax.model.config import get_preset
from pi0_jax.train import defaults


def pod_config(args: dict) -> ml_collections.ConfigDict:
  """Full pi0 on 256 chips (16 x 16 FSDP), pi0's optimiser and schedule; data left to the caller."""
  c = defaults.base_config()
  c.model = ml_collections.ConfigDict(get_preset("pi0").to_dict())
  # Two FSDP axes let SigLIP's 1152- and 4304-wide weights split 16 ways each.
  c.mesh = (("data", 1), ("fsdp", 16), ("fsdp2", -1))
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
  return c


def data_config(datasets: list, args: dict, **overrides) -> ml_collections.ConfigDict:
  """The pod's input pipeline. The data position is the batch count (iterator_state="replay"): a checkpoint
  never holds the 250k-frame shuffle buffer."""
  return defaults.data_config(
      datasets=datasets, shuffle_buffer=250_000, iterator_state="replay", augment=True, norm_mode="zscore",
      num_parallel_calls=64, tokenizer=args.get("tokenizer", "paligemma_tokenizer.model"), **overrides)


def oxe_datasets(names, data_dir: str, exponent: float = mixture.DEFAULT_EXPONENT) -> list:
  local = "://" not in data_dir and all(os.path.isdir(os.path.join(data_dir, n)) for n in names)
  return [dict(name=n, data_dir=data_dir, weight=None if local else float(oxe.OXE[n].episodes) ** exponent)
          for n in names]


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  c = pod_config(args)
  names = args["datasets"].split("+") if args.get("datasets") else list(oxe.OXE)
  unknown = sorted(set(names) - set(oxe.OXE))
  if unknown:
    raise ValueError(f"configs/pi0_oxe_pretrain.py: datasets {unknown} are not in pi0_jax.data.oxe.OXE "
                     f"({sorted(oxe.OXE)}).")
  c.data = data_config(oxe_datasets(names, args.get("data_dir", "gs://your-bucket/oxe")), args)
  return c
