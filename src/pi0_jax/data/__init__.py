"""RLDS/TFDS input pipeline for pi0 (see pipeline.py for the stages) and the Meta-World demo datasets.

Modules: specs (per-dataset standardisation specs, resolved from the config), oxe (the Open X-Embodiment
table), rlds (reading), traj (trajectory transforms),
normalize / stats (normalisation statistics), mixture, images (decode and augment), hosts (per-process
batches, global arrays), validate (bad input), config (the data config), pipeline (assembly and
iterator state), synthetic (tiny RLDS datasets for tests and benchmarks).

Nothing is imported here, so that `import pi0_jax.data.<module>` pulls in TensorFlow only where needed.
"""
