"""Serving a pi0 export over openpi's websocket protocol: `python -m pi0_jax.serve --checkpoint=EXPORT`."""

from __future__ import annotations

from pi0_jax.serve.server import OPTIONAL_FIELDS, BadRequest, KeyMap, PolicyServer

__all__ = ["OPTIONAL_FIELDS", "BadRequest", "KeyMap", "PolicyServer"]
