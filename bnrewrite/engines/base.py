"""The engine interface: start shards, call their methods, wait for results, stop.

A shard is an object built from ``factory(mg, **options)`` (in practice
:class:`bnrewrite.calibration.Shard`) that answers ``describe``, ``feed``,
``level`` and ``close``. An engine decides where shards live and how calls
reach them; it knows nothing of BatchNormalization. Calls to one shard run in
the order they were made (the driver relies on it: ``feed`` before ``level``,
levels in order). A shard's exception is raised by :meth:`Engine.result` as
itself when it is a bnrewrite error, so ``InputError`` keeps exit code 2
wherever the shard ran.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable


class Engine(ABC):
    name = "engine"
    in_flight = 2  # level-0 batches in flight per shard before the driver waits (bounds memory)
    chunk = 1  # batches per `level` call: progress granularity vs per-call overhead

    def __init__(self, address: str | None = None):
        self.address = address

    @abstractmethod
    def start(self, mg, factory: Callable, options: dict, shards: int) -> list:
        """Start ``shards`` shards, each ``factory(mg, **options)``; return their handles."""

    @abstractmethod
    def call(self, handle, method: str, *args) -> Any:
        """Call ``method(*args)`` on a shard; return a future for :meth:`result`."""

    @abstractmethod
    def result(self, future) -> Any:
        """Wait for a call's result (raising the shard's exception)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the shards (closing any not yet closed: spill folders are removed)."""
