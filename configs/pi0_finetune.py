"""Fine-tune a pi0 on a new dataset, from an export, a training run, openpi params or a PaliGemma `.npz`.

  python -m pi0_jax.train --config=configs/pi0_finetune.py:export=exports/demo,model=demo,train=lora,\
dataset=/data/mw/metaworld_ml10_train/1.0.0,tokenizer=/data/mw/tokenizer.model --workdir=runs/ft

arg: comma-separated key=value:
  export / workdir / openpi / paligemma   where to start (one of them; none: a fresh init). A LoRA model starting
                         from base weights gets fresh factors. workdir_ema=1 takes a run's EMA params.
  model                  Pi0Config preset (pi0_jax.model.PRESETS; default pi0); it must fit the source's tree.
  train                  full (default), action_expert (only expert 1 and the state/action/time heads) or lora
                         (only the LoRA factors): optimizer.trainable. With action_expert or lora the frozen
                         weights are stored in bf16 (optimizer.frozen_dtype; frozen_dtype=float32 keeps f32).
  lora                   both / paligemma / action_expert / none: which experts carry LoRA (default: both with
                         train=lora, else none). pi0 uses openpi's gemma_2b_lora / gemma_300m_lora (ranks 16 / 32,
                         alpha = rank); other presets rank=`rank` (default 16) with alpha=`alpha` (default rank).
  norm_stats             own (default: the new dataset's statistics) or init (the export's or run's statistics).
  dataset, name, spec    the dataset (a prepared TFDS directory), its name in reports, its standardisation spec.
  tokenizer, stats_dir, steps, batch, lr
"""

import dataclasses
import os

import ml_collections

from pi0_jax.model.config import GEMMA_VARIANTS, get_preset
from pi0_jax.train import defaults

_SOURCES = {"export": "export", "workdir": "workdir", "openpi": "openpi_params", "paligemma": "paligemma_npz"}


def _with_lora(model, which: str, rank: int, alpha: float):
  """The model preset with LoRA on the experts `which` names (openpi's variants where the sizes are openpi's)."""
  experts = {"both": (0, 1), "paligemma": (0,), "action_expert": (1,), "none": ()}[which]
  changes = {}
  for i in experts:
    field = ("paligemma_variant", "action_expert_variant")[i]
    name = getattr(model, field)
    if isinstance(name, str) and f"{name}_lora" in GEMMA_VARIANTS:
      changes[field] = f"{name}_lora"
    else:
      changes[field] = dataclasses.asdict(dataclasses.replace(model.gemma_configs[i], lora_rank=rank,
                                                              lora_alpha=alpha))
  return model.replace(**changes)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  c = defaults.base_config()
  train = args.get("train", "full")
  rank = int(args.get("rank", 16))
  model = _with_lora(get_preset(args.get("model", "pi0")), args.get("lora", "both" if train == "lora" else "none"),
                     rank, float(args.get("alpha", rank)))
  c.model = ml_collections.ConfigDict(model.to_dict())
  c.mesh = [["data", 1], ["fsdp", -1]]
  c.global_batch = int(args.get("batch", 32))
  c.total_steps = int(args.get("steps", 30_000))
  # The defaults' AdamW and schedule shape (pi0's recipe), decayed over this run.
  c.optimizer.update(peak_lr=float(args.get("lr", 2.5e-5)), warmup_steps=min(1000, c.total_steps // 10),
                     decay_steps=c.total_steps, end_lr=float(args.get("lr", 2.5e-5)) / 10, trainable=train,
                     frozen_dtype=args.get("frozen_dtype", None if train == "full" else "bfloat16"))
  c.ema_decay = None
  c.checkpoint_every = 1000
  for key, field in _SOURCES.items():
    c.init[field] = args.get(key) or None
  c.init.ema = bool(int(args.get("workdir_ema", 0)))
  norm_stats = None
  if args.get("norm_stats", "own") == "init":
    if args.get("export"):
      norm_stats = os.path.join(args["export"], "norm_stats.json")
    elif args.get("workdir"):
      norm_stats = os.path.join(args["workdir"], "assets", "norm_stats.json")
    else:
      raise ValueError("norm_stats=init needs export= or workdir= (openpi params and PaliGemma files hold none).")
  dataset = args.get("dataset", "")
  name = args.get("name") or (os.path.basename(os.path.dirname(dataset.rstrip("/"))) if dataset else "dataset")
  c.data = defaults.data_config(
      datasets=[dict(name=name, dir=dataset, spec=args.get("spec", name))],
      shuffle_buffer=10_000, augment=True, norm_mode="zscore", norm_stats=norm_stats, num_parallel_calls=4,
      tokenizer=args.get("tokenizer"), stats_dir=args.get("stats_dir"))
  return c
