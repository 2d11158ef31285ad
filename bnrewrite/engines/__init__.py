"""Engines that run calibration shards: where :class:`bnrewrite.calibration.Shard` objects live.

``local`` runs them in this process; ``ray`` (``ray:ADDRESS``) as Ray actors,
one process each, on a local Ray instance or an existing cluster. The driver
(:func:`bnrewrite.calibration.calibrate`) only deals batches, gathers moments
and broadcasts statistics through the small interface of
:class:`~bnrewrite.engines.base.Engine`, so another engine (Dask, Spark) is one
module plus one line in :data:`ENGINES`.
"""

from __future__ import annotations

import importlib

from ..errors import InputError
from .base import Engine

ENGINES = {
    "local": "bnrewrite.engines.local:LocalEngine",
    "ray": "bnrewrite.engines.ray:RayEngine",
}


def parse_engine(spec: str) -> tuple[str, str | None]:
    """``"ray:10.0.0.5:6379"`` -> ``("ray", "10.0.0.5:6379")``; ``"local"`` -> ``("local", None)``."""
    name, _, address = str(spec).partition(":")
    name = name.strip().lower()
    if name not in ENGINES:
        raise InputError(f"unknown calibration engine {spec!r} (engines: {', '.join(ENGINES)})")
    if address and name == "local":
        raise InputError(f"the local engine takes no address ({spec!r})")
    return name, address or None


def create_engine(spec: "str | Engine") -> Engine:
    if isinstance(spec, Engine):
        return spec
    name, address = parse_engine(spec)
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(address)


__all__ = ["ENGINES", "Engine", "create_engine", "parse_engine"]
