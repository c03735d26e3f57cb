"""Simulated environments: Meta-World (envs.metaworld), shared by the demo builder and the evaluator.

Nothing is imported here: MuJoCo and Meta-World load only when an environment is made.
"""
