"""The local engine: shards are objects in this process, calls run when they are made.

Several local shards share one live model and its traced functions (one
``_Runtime``): splitting the data changes which cache holds a batch, not how
it is computed. Used by default (one shard) and to check that any split gives
the single-shard result.
"""

from __future__ import annotations

from concurrent.futures import Future

from .base import Engine


class LocalEngine(Engine):
    name = "local"
    in_flight = 1

    def __init__(self, address: str | None = None):
        super().__init__(address)
        self.shards: list = []

    def start(self, mg, factory, options, shards):
        first = factory(mg, **options)
        self.shards = [first] + [factory(mg, **options, runtime=first.rt) for _ in range(shards - 1)]
        return list(range(shards))

    def call(self, handle, method, *args):
        fut: Future = Future()
        try:
            fut.set_result(getattr(self.shards[handle], method)(*args))
        except BaseException as e:  # noqa: BLE001 -- handed to result(), like a remote engine does
            if not isinstance(e, Exception):
                raise  # a stop signal (Interrupted) or SystemExit stops the driver at once
            fut.set_exception(e)
        return fut

    def result(self, future):
        return future.result()

    def close(self):
        for shard in self.shards:
            shard.close()
        self.shards = []
