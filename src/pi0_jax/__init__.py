"""pi0-jax: the pi0 vision-language-action flow model in JAX/Flax."""

__version__ = "0.1.0"
