"""Pre-train pi0 (see pi0_jax.train.loop).

  python -m pi0_jax.train --config=configs/pi0_demo.py:data_dir=data/metaworld --workdir=runs/demo/train
  python -m pi0_jax.train --config=configs/pi0_oxe_pretrain.py:data_dir=gs://b/rlds --workdir=gs://b/run --distributed

Any config field can be overridden, e.g. --config.global_batch=64 --config.optimizer.peak_lr=1e-4. A run resumes
from the latest complete checkpoint in --workdir; SIGTERM saves the current step and exits 0.
"""

from pi0_jax.train.loop import cli

if __name__ == "__main__":
  cli()
