"""`python -m pi0_jax.train --config=configs/pi0_demo.py --workdir=DIR` (see pi0_jax.train.loop)."""

from absl import app

from pi0_jax.train.loop import main

if __name__ == "__main__":
  app.run(main)
