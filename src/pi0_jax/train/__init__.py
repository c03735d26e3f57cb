"""Sharded pre-training: mesh and sharding rules, optimizer, train step, checkpoints, loop."""
