"""The Ray engine: each shard is a Ray actor -- its own process, its batches, its cache.

``--engine ray`` starts a local Ray instance for the run (all this machine's
CPUs) and stops it afterwards; ``--engine ray:ADDRESS`` (or ``ray:auto``)
joins an existing cluster and leaves it running, as does a Ray that the
calling program already initialised. Every node needs bnrewrite installed with
the same TensorFlow/Keras versions as the driver (``pip install
"bnrewrite[ray]"``).

Actors ask for ``min(1, CPUs / shards)`` CPUs with the SPREAD strategy, so N
shards always fit and spread over the nodes. The model graph is put in the
object store once (without the original file's copy, which only the driver
verifies against) and every actor rebuilds its live model from it. Batches
reach an actor as call arguments (zero-copy from the object store); moments
come back per batch (a few floats per channel), so traffic after level 0 is
the statistics only.
"""

from __future__ import annotations

import copy
import logging
import os
import signal

from ..errors import BnrewriteError, InputError, root_cause
from .base import Engine

WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
CLOSE_TIMEOUT = 60  # seconds for an actor to remove its spill folder
CONNECT_TIMEOUT = 10  # seconds for a cluster address to accept a connection


class _ShardActor:
    """The remote side: one shard, methods called by name (calls run one at a time, in order)."""

    def __init__(self, factory, mg, options):
        self.shard = factory(mg, **options)

    def call(self, method, *args):
        return getattr(self.shard, method)(*args)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError('the ray engine needs Ray: pip install "bnrewrite[ray]"') from None
    return ray


class RayEngine(Engine):
    name = "ray"
    in_flight = 2
    chunk = 4

    def __init__(self, address: str | None = None):
        super().__init__(address)
        self.actors: list = []
        self._started = False
        self._session: str | None = None
        self._env: dict[str, str | None] = {}  # environment variables set for our own instance, to restore

    def start(self, mg, factory, options, shards):
        import sys

        if not self.address and "ray" not in sys.modules:
            # before Ray is imported: its token loader reads the environment once
            self._env = _private_token()
        ray = _import_ray()
        if not ray.is_initialized():
            self._init(ray)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        remote = ray.remote(_ShardActor).options(
            num_cpus=min(1.0, cpus / shards), scheduling_strategy="SPREAD", max_restarts=0,
            runtime_env={"env_vars": WORKER_ENV})
        _ship_custom_modules(ray, options.get("custom_objects"))
        shipped = copy.copy(mg)
        shipped.original = None  # the shards never verify; the driver keeps the original
        ref = ray.put(shipped)
        self.actors = [remote.remote(factory, ref, options) for _ in range(shards)]
        return list(range(shards))

    def _init(self, ray) -> None:
        # Ray installs its own SIGTERM/SIGINT handlers in the driver; ours (bnrewrite.outputs) must stay,
        # so that a stop signal still removes temporaries and exits 128+N.
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                      configure_logging=True)
        try:
            if self.address:
                _check_reachable(self.address)
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, _temp_dir=self._session_dir(), **kwargs)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 -- Ray raises ConnectionError, RuntimeError, ValueError...
            what = f"join the Ray cluster at {self.address}" if self.address else "start a local Ray instance"
            raise InputError(f"cannot {what}: {root_cause(e)}") from None
        finally:
            for s, h in saved.items():
                if h is not None:
                    signal.signal(s, h)
        self._started = True

    def _session_dir(self) -> str | None:
        """A registered temp folder for the local Ray instance's session files (removed afterwards,
        and on a stop signal), rather than Ray's shared /tmp/ray; Ray's default when the path would
        make its Unix socket paths too long (107 bytes)."""
        from ..outputs import make_temp_dir

        folder = make_temp_dir("bnrewrite-ray-", None)
        if len(folder) > 40:
            self._remove_session_dir(folder)
            return None
        self._session = folder
        return folder

    @staticmethod
    def _remove_session_dir(folder: str) -> None:
        import shutil

        from ..outputs import unregister_temp

        shutil.rmtree(folder, ignore_errors=True)
        unregister_temp(folder)

    def call(self, handle, method, *args):
        return self.actors[handle].call.remote(method, *args)

    def result(self, future):
        ray = _import_ray()
        try:
            return ray.get(future)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BnrewriteError):
                raise cause from None
            raise InputError(f"a calibration shard failed: {root_cause(cause or e)}") from None
        except ray.exceptions.RayActorError as e:
            raise InputError(f"a calibration shard (Ray actor) died: {root_cause(e, 300)}; if it ran out of memory, "
                             "use more shards or a smaller --cache-mb") from None

    def close(self):
        if not self.actors and not self._started:  # Ray never started (or failed to)
            self._forget_local()
            return
        ray = _import_ray()
        try:
            refs = [a.call.remote("close") for a in self.actors]  # spill folders live on the shards' hosts
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=CLOSE_TIMEOUT)
        except Exception:  # noqa: BLE001 -- closing after a failure: the first error is the one reported
            pass
        finally:
            for a in self.actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001
                    pass
            self.actors = []
            if self._started:
                ray.shutdown()
                self._started = False
            self._forget_local()

    def _forget_local(self) -> None:
        """Remove our local instance's session folder and restore the environment its token was in."""
        if self._session is not None:
            self._remove_session_dir(self._session)
            self._session = None
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env = {}


def _ship_custom_modules(ray, custom_objects: dict | None) -> None:
    """Classes from a ``--custom-objects`` file live in a module that exists only in this process;
    Ray's cloudpickle sends such a module's classes by value, so that the actors can rebuild the
    layers (classes of importable modules go by reference, as usual)."""
    import sys

    from ..custom import MODULE_PREFIX

    for obj in (custom_objects or {}).values():
        name = getattr(obj, "__module__", "") or ""
        if name.startswith(MODULE_PREFIX) and name in sys.modules:
            ray.cloudpickle.register_pickle_by_value(sys.modules[name])


def _private_token() -> dict[str, str | None]:
    """Token authentication for the local instance without a file: Ray >= 2.5x turns token auth on
    for a new local instance and, with no token configured, writes one to ~/.ray/auth_token -- a
    file outside what the user named. A random token in this process's environment (inherited by
    Ray's processes) keeps auth on and writes nothing. Set before Ray is imported (its token loader
    reads the environment once); a program that imported Ray itself gets Ray's own behaviour.
    Returns the previous values to restore; a token or mode the user configured is left alone."""
    import secrets
    from pathlib import Path

    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    if any(k in os.environ for k in keys) or (Path.home() / ".ray" / "auth_token").exists():
        return {}
    previous = {k: os.environ.get(k) for k in keys[:2]}
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return previous


def _check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A ``host:port`` address must accept a TCP connection within ``timeout`` seconds: Ray itself
    retries a dead address for minutes. ``auto`` and ``ray://`` (Ray Client) addresses are Ray's to resolve."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Ray address {address!r} is not HOST:PORT, auto or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                         "`ray start --head`, or use --engine ray for a local one") from None
