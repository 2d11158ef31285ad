"""AdaBN: reset every BatchNormalization's moving statistics and re-estimate them exactly.

What is computed
================

For a BN over channel axis ``c`` with input ``x``, the new statistics are the
population statistics of ``x`` over the calibration data, over every value of
the channel (batch and all other axes: for a BN over ``(B, T, C)`` -- e.g. an
unwrapped ``TimeDistributed(BN)`` -- that is batch and time)::

    moving_mean_c     = mean(x_c)
    moving_variance_c = M2_c / (n - 1)    ("unbiased", default: Bessel's correction,
                                           as in Algorithm 2 of the BN paper)
                      = M2_c / n          ("biased")

with ``n`` the number of values per channel and ``M2_c = sum((x_c - mean_c)^2)``.
Not an exponential moving average: the old statistics are discarded.

Moments are merged exactly (Chan et al.) in float64::

    n = n_a + n_b,  d = mean_b - mean_a
    mean = mean_a + d * n_b / n
    M2   = M2_a + M2_b + d^2 * n_a * n_b / n

Each sample's moments over its own values (e.g. the H*W values of one channel
of one image) are taken centred in the layer's float32, inside the phase's
graph; from there on -- across samples, batches and calls -- everything is
float64, so the result does not depend on the batch size or order (beyond
float64 rounding). A float64 cast of every activation would double the
memory traffic of calibration for no visible gain.

Order: layer by layer, shared by depth
======================================

A BN's input depends on every BN upstream of it, so a BN must see inputs
normalized by the *new* statistics of the BNs before it. Each calibrated BN call
gets a level: the largest number of calibrated BNs on any path from a model
input to it. Level-0 BNs see no calibrated BN, level-1 BNs see only level-0 ones,
and so on; all BNs of one level are independent of each other and are estimated
in the same pass over the data.

Phase ``k`` computes, for every batch, the nodes whose outputs depend on BNs of
level ``< k`` only (BNs of level ``k - 1`` are applied at its start, with their
new statistics) and accumulates the moments of the level-``k`` BN inputs. The
tensors a later phase reads (each BN's input, skip connections) are cached per
batch, so every layer runs once over the data in total -- not once per level.
A batch of a tensor is freed as soon as its last reader has run on that batch,
so while phase ``k`` runs the cache holds, beside what later phases still need,
the outputs of the batches done and the inputs of those to come -- about the
larger of the two, not their sum (ResNet50: 2.0 instead of 3.25 MB per sample
at 128x128). The cache lives in RAM up to ``cache_mb`` (default: half the
memory available, :func:`cache_budget_mb`) and spills to files in a temporary
folder beyond it (read back with ``pread``, so resident memory stays bounded
however large the data). Each phase is one ``tf.function`` traced once, and
phases of one structure -- the same layer classes and configs, call arguments,
shapes and wiring, e.g. ResNet's repeated blocks (49 phases, 23 functions) --
share one, run with each phase's weights put in place; layers after the last BN
are never run.

Shards
======

The work is split by whole batches between :class:`Shard` objects, run by an
engine (:mod:`bnrewrite.engines`: this process, or Ray actors). The driver
reads the data and deals batch ``i`` to shard ``i mod N``; each shard keeps the
cached tensors of its own batches. Level ``k`` is: every shard puts the new
statistics of level ``k - 1`` in place and runs level ``k`` on its batches,
returning each batch's moments; the driver merges them in batch order. A
batch is computed alike wherever it runs and the merge order is fixed, so the
statistics are the same bits for any shard count and engine.

A BN layer shared by several calls is estimated over the inputs of all its
calls when they are at the same level; if they are at different levels its own
output would feed its statistics, so it is skipped (with that reason) and keeps
its statistics. Layers run in inference mode throughout (``training=False``:
Dropout off, other BNs use their moving statistics).
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx
import numpy as np

from .errors import InputError, scope_layer
from .graph import INPUT_CLASS, ModelGraph, is_op
from .io.data import CalibrationData, InputSpec

VARIANCES = ("unbiased", "biased")
DEFAULT_BATCH_SIZE = 32
MAX_AUTO_BATCH = 256
AUTO_BATCH_BYTES = 128 * 2**20  # about the largest activation of a batch, when the batch size is chosen
BATCH_OPAQUE = ("TFOpLambda", "SlicingOpLambda", "Lambda")  # may reshape across the batch axis
DEFAULT_CACHE_MB = None  # automatic: see cache_budget_mb
MIN_AUTO_CACHE_MB = 1024
AUTO_CACHE_FRACTION = 0.5  # of the memory available when calibration starts, shared by a host's shards
DEFAULT_MAX_SPILL_BYTES = 8 * 2**30  # spill cap when the data size is unknown (see default_max_spill_bytes)


@dataclass
class Moments:
    """Per-channel count, mean and M2 in float64, mergeable exactly."""

    n: float = 0.0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, n: float, mean: np.ndarray, m2: np.ndarray) -> None:
        if n == 0:
            return
        if self.mean is None:
            self.n, self.mean, self.m2 = float(n), np.array(mean, np.float64), np.array(m2, np.float64)
            return
        total = self.n + n
        d = mean - self.mean
        self.mean = self.mean + d * (n / total)
        self.m2 = self.m2 + m2 + d * d * (self.n * n / total)
        self.n = total

    def variance(self, ddof: int) -> np.ndarray:
        return self.m2 / (self.n - ddof)


def _summary(v: np.ndarray) -> dict:
    v = np.asarray(v, np.float64)
    return {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())}


# ---------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Which BN calls are calibrated, at which level, and what each phase runs."""

    bn_nodes: dict[str, int] = field(default_factory=dict)  # BN call -> level
    skipped: list[dict] = field(default_factory=list)  # {"layer", "reason"}
    phases: list[list[str]] = field(default_factory=list)  # non-input nodes run in phase k
    loads: list[list[tuple[str, int]]] = field(default_factory=list)  # cached tensors read in phase k
    stores: list[list[tuple[str, int]]] = field(default_factory=list)  # tensors phase k caches
    last_use: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return max(self.bn_nodes.values(), default=-1) + 1

    def at_level(self, k: int) -> list[str]:
        return [n for n, lv in self.bn_nodes.items() if lv == k]


def _bn_channel_axis(mg: ModelGraph, node: str, rank: int) -> int | None:
    """The channel axis of the BN call's input tensor (shifted for TimeDistributed)."""
    lay = mg.layer(node)
    cfg = lay.config if lay.is_bn() else lay.inner.get("config", {})
    axis = cfg.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None
        axis = axis[0]
    wrappers = 0 if lay.is_bn() else len(lay.wrapped_configs())
    inner_rank = rank - wrappers
    axis = int(axis)
    if axis < 0:
        axis += inner_rank
    if not 0 <= axis < inner_rank:
        return None
    return axis + wrappers


def plan(mg: ModelGraph, shapes: dict[tuple[str, int], tuple]) -> Plan:
    """Levels of the BN calls and the work of each phase (see the module docstring)."""
    p = Plan()
    order = mg.topo()
    candidates, by_layer = [], {}
    for n in order:
        lay = mg.layer(n)
        if not (lay.is_bn() or lay.wraps_bn()):
            continue
        if not {"moving_mean", "moving_variance"} <= set(lay.weights):
            _skip(p, lay.name, "no moving_mean/moving_variance weights")
            continue
        inbound = mg.inbound(n)
        if not inbound or _bn_channel_axis(mg, n, len(shapes[inbound[0]])) is None:
            _skip(p, lay.name, "normalizes more than one axis")
            continue
        candidates.append(n)
        by_layer.setdefault(lay.name, []).append(n)

    active = set(candidates)
    while True:  # dropping a shared layer changes the levels of what follows it
        level_in = _levels(mg, order, active)
        bad = [name for name, calls in by_layer.items()
               if set(calls) <= active and len({level_in[c] for c in calls}) > 1]
        if not bad:
            break
        for name in bad:
            _skip(p, name, "shared BN layer called at different depths (its own output would feed its statistics)")
            active -= set(by_layer[name])
    p.bn_nodes = {n: level_in[n] for n in order if n in active}

    # Only ancestors of calibrated BNs are run.
    needed: set[str] = set()
    for b in active:
        needed |= nx.ancestors(mg.graph, b)
    phase = {}
    for n in order:
        if n in needed:
            phase[n] = level_in[n] + (1 if n in active else 0)
    p.phases = [[] for _ in range(p.levels)]
    for n in order:
        if n in phase and phase[n] < p.levels and mg.layer(n).class_name != INPUT_CLASS:
            p.phases[phase[n]].append(n)

    # Tensors read in phase k: inputs of its nodes and the inputs of its BNs.
    reads: dict[tuple[str, int], set[int]] = {}
    for k, nodes in enumerate(p.phases):
        for n in nodes:
            for t in mg.inbound(n):
                reads.setdefault(t, set()).add(k)
        for b in p.at_level(k):
            reads.setdefault(mg.inbound(b)[0], set()).add(k)
    p.loads = [[] for _ in range(p.levels)]
    p.stores = [[] for _ in range(p.levels)]
    index = {n: i for i, n in enumerate(order)}
    for t, ks in sorted(reads.items(), key=lambda kv: (phase[kv[0][0]], index[kv[0][0]], kv[0][1])):
        made = phase[t[0]]
        later = sorted(k for k in ks if k > made)
        if later:
            p.stores[made].append(t)
            for k in later:
                p.loads[k].append(t)
            p.last_use[t] = later[-1]
    return p


def _skip(p: Plan, layer: str, reason: str) -> None:
    if not any(s["layer"] == layer for s in p.skipped):
        p.skipped.append({"layer": layer, "reason": reason})


def _levels(mg: ModelGraph, order: list[str], active: set[str]) -> dict[str, int]:
    """Number of active BN calls on the longest path into each node's inputs."""
    out_level: dict[str, int] = {}
    level_in: dict[str, int] = {}
    for n in order:
        lv = max((out_level[u] for u, _ in mg.inbound(n)), default=0)
        level_in[n] = lv
        out_level[n] = lv + (1 if n in active else 0)
    return level_in


# ---------------------------------------------------------------- the cache
class _Cache:
    """Per-batch tensors kept between phases: in RAM up to a budget, then in spill files.

    The spill files live in one folder (``bnrewrite-calib-*`` in ``tmpdir``,
    default the system temp folder) registered with :mod:`bnrewrite.outputs`,
    so a failure, SIGINT/SIGTERM/SIGHUP or interpreter exit removes it. The
    bytes on disk at any time are capped at ``max_disk_bytes``: reaching the cap
    (or a full disk) stops calibration with an :class:`InputError` (exit 2).
    """

    def __init__(self, budget_bytes: int, tmpdir: str | None, max_disk_bytes: int | None = None,
                 cap_given: bool = True):
        self.budget = budget_bytes
        self.tmpdir = tmpdir
        self.max_disk = DEFAULT_MAX_SPILL_BYTES if max_disk_bytes is None else int(max_disk_bytes)
        self.cap_given = cap_given  # the cap came from --max-spill-gb (else: the default)
        self._dir: str | None = None
        self.ram: dict[tuple, Any] = {}  # (tensor, batch) -> tensor
        self.disk: dict[tuple, tuple] = {}  # (tensor, batch) -> (fd, offset, shape, dtype)
        self.files: dict[tuple, tuple[int, str, list]] = {}  # tensor -> (fd, path, [end, on disk])
        self.ram_bytes = 0
        self.peak_ram_bytes = 0
        self.spilled_bytes = 0  # written in total
        self.disk_bytes = 0  # on disk now
        self.peak_disk_bytes = 0
        self.peak_live_bytes = 0  # RAM + disk: the live cache, whatever its place
        self._serial = 0

    @staticmethod
    def _nbytes(value) -> int:  # a tf.Tensor (dtype.size) or a numpy array (dtype.itemsize)
        item = value.dtype.itemsize if hasattr(value.dtype, "itemsize") else value.dtype.size
        return int(np.prod(value.shape, dtype=np.int64)) * item

    def put(self, tensor: tuple, batch: int, value) -> None:
        nbytes = self._nbytes(value)
        if self.ram_bytes + nbytes <= self.budget:
            self.ram[(tensor, batch)] = value
            self.ram_bytes += nbytes
            self.peak_ram_bytes = max(self.peak_ram_bytes, self.ram_bytes)
            self.peak_live_bytes = max(self.peak_live_bytes, self.ram_bytes + self.disk_bytes)
            return
        if self.disk_bytes + nbytes > self.max_disk:
            raise InputError(
                f"calibration spill reached --max-spill-gb {self.max_disk / 2**30:.1f} GB"
                + ("" if self.cap_given else " (the default: 4x the calibration data, at least 8 GB)")
                + "; raise it, lower --max-samples, or give more --cache-mb"
            )
        arr = np.ascontiguousarray(value.numpy() if hasattr(value, "numpy") else value)
        fd, _, size = self._file(tensor)
        try:
            os.pwrite(fd, arr.data, size[0]) if arr.nbytes else None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise InputError(
                    f"calibration spill folder {self._dir} is full after {self.disk_bytes / 2**30:.1f} GB "
                    f"({e.strerror}); use --cache-dir on a larger disk, lower --max-samples, or give more "
                    "--cache-mb"
                ) from None
            raise
        self.disk[(tensor, batch)] = (fd, size[0], arr.shape, arr.dtype)
        size[0] += arr.nbytes
        size[1] += arr.nbytes
        self.spilled_bytes += arr.nbytes
        self.disk_bytes += arr.nbytes
        self.peak_disk_bytes = max(self.peak_disk_bytes, self.disk_bytes)
        self.peak_live_bytes = max(self.peak_live_bytes, self.ram_bytes + self.disk_bytes)

    def get(self, tensor: tuple, batch: int):
        if (tensor, batch) in self.ram:
            return self.ram[(tensor, batch)]
        fd, offset, shape, dtype = self.disk[(tensor, batch)]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return np.frombuffer(os.pread(fd, nbytes, offset), dtype=dtype).reshape(shape)

    def release(self, tensor: tuple, batch: int) -> None:
        """One batch of a tensor has had its last reader: its RAM is free at once (the next
        batch's outputs reuse it), and its spilled bytes are punched out of the file where the
        file system can (Linux ``fallocate``; else they stay until :meth:`drop` removes the file)."""
        value = self.ram.pop((tensor, batch), None)
        if value is not None:
            self.ram_bytes -= self._nbytes(value)
        spilled = self.disk.pop((tensor, batch), None)
        if spilled is not None:
            fd, offset, shape, dtype = spilled
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes and _punch_hole(fd, offset, nbytes):
                self.files[tensor][2][1] -= nbytes
                self.disk_bytes -= nbytes

    def drop(self, tensor: tuple) -> None:
        for key in [k for k in self.ram if k[0] == tensor]:
            self.ram_bytes -= self._nbytes(self.ram.pop(key))
        for key in [k for k in self.disk if k[0] == tensor]:
            del self.disk[key]
        if tensor in self.files:
            fd, path, size = self.files.pop(tensor)
            self.disk_bytes -= size[1]
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):  # a stop signal may have removed the folder
                os.unlink(path)

    def _file(self, tensor: tuple):
        if tensor not in self.files:
            if self._dir is None:
                from .outputs import SPILL_PREFIX, make_temp_dir

                self._dir = make_temp_dir(SPILL_PREFIX, self.tmpdir)  # registered: removed on SIGTERM too
            self._serial += 1
            path = os.path.join(self._dir, f"{self._serial}.bin")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self.files[tensor] = (fd, path, [0, 0])  # [append offset, bytes still on disk]
        return self.files[tensor]

    def close(self) -> None:
        for tensor in list(self.files):
            self.drop(tensor)
        self.ram.clear()
        if self._dir is not None:
            from .outputs import unregister_temp

            shutil.rmtree(self._dir, ignore_errors=True)
            unregister_temp(self._dir)


_FALLOC_PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (linux/falloc.h)
_fallocate = None


def _punch_hole(fd: int, offset: int, nbytes: int) -> bool:
    """Free ``nbytes`` at ``offset`` of a spill file (reads there return zeros). False where the
    platform or file system cannot; blocks only partly inside the range stay allocated, so the
    bytes counted as freed can exceed those actually freed by less than a block per call."""
    global _fallocate
    if _fallocate is None:
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            f = getattr(libc, "fallocate64", None) or libc.fallocate  # 64-bit offsets on every ABI
            f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            f.restype = ctypes.c_int
            _fallocate = f
        except (AttributeError, OSError):
            _fallocate = False
    return bool(_fallocate) and _fallocate(fd, _FALLOC_PUNCH_HOLE_KEEP_SIZE, offset, nbytes) == 0


def _data_bytes(data) -> int | None:
    """Size in bytes of calibration data when it is cheap to know (files, arrays), else None."""
    try:
        if isinstance(data, np.ndarray):
            return int(data.nbytes)
        if isinstance(data, dict) and all(isinstance(a, np.ndarray) for a in data.values()):
            return int(sum(a.nbytes for a in data.values()))
        if isinstance(data, (list, tuple)) and data and all(isinstance(a, np.ndarray) for a in data):
            return int(sum(a.nbytes for a in data))
        if isinstance(data, (str, os.PathLike)):
            p = os.fspath(data)
            files = ([os.path.join(p, f) for f in os.listdir(p)] if os.path.isdir(p) else [p])
            total = 0
            for f in files:
                if f.lower().endswith(".npz") and os.path.isfile(f):
                    with zipfile.ZipFile(f) as z:
                        total += sum(i.file_size for i in z.infolist())
                elif f.lower().endswith(".npy") and os.path.isfile(f):
                    total += os.path.getsize(f)
            return total or None
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return None


def default_max_spill_bytes(data) -> int:
    """The default spill cap: 4x the calibration data when its size is known, at least 8 GiB.

    Zoo models cache 7-11x their input at the widest level (ResNet50 10.7x,
    MobileNetV2 8x, DenseNet121 7.3x), so 4x alone would stop ordinary runs;
    the floor keeps those working while a runaway (a model that blows
    activations up, data with huge dynamic dimensions) still stops.
    """
    size = _data_bytes(data)
    return max(DEFAULT_MAX_SPILL_BYTES, 4 * size) if size else DEFAULT_MAX_SPILL_BYTES


def _available_mb() -> float | None:
    """MemAvailable (what can be allocated without swapping), in MiB."""
    from .io.h5_extract import proc_kib

    kib = proc_kib("/proc/meminfo", "MemAvailable")
    return None if kib is None else kib / 1024


def cache_budget_mb(cache_mb: float | None, shards: int = 1) -> float:
    """The RAM budget of one shard's activation cache: ``cache_mb`` when given; else automatic:
    half the memory available now, split between ``shards`` (they may share a host), at least
    1024 MiB -- the cache stays in RAM where it fits and spills only beyond that."""
    if cache_mb is not None:
        return float(cache_mb)
    avail = _available_mb()
    if avail is None:
        return float(MIN_AUTO_CACHE_MB)
    return max(float(MIN_AUTO_CACHE_MB), AUTO_CACHE_FRACTION * avail / max(1, shards))


# ---------------------------------------------------------------- running
def _input_specs(mg: ModelGraph, shapes) -> list[InputSpec]:
    specs = []
    for n in mg.inputs:
        cfg = mg.layer(n).config
        specs.append(InputSpec(mg.layer(n).name, tuple(shapes[(n, 0)]), str(cfg.get("dtype") or "float32")))
    return specs


def _has_training_arg(layer) -> bool:
    """Whether a live layer's ``call`` takes ``training`` (a framework op such as Keras 3's
    ``keras.ops.reshape`` for an unwrapped TimeDistributed is a plain function)."""
    try:
        return "training" in inspect.signature(getattr(layer, "call", layer)).parameters
    except (TypeError, ValueError):
        return False


def _phase_loads(mg: ModelGraph, plan_: Plan, k: int) -> list[tuple[str, int]]:
    """The tensors phase ``k`` reads: the model inputs for phase 0, else cached tensors."""
    return plan_.loads[k] if k else [(n, 0) for n in mg.inputs]


def _phase_function(mg: ModelGraph, plan_: Plan, k: int, live: dict, symbolic: dict, inference: dict):
    """A tf.function for phase ``k``: cached inputs -> (tensors to cache, BN moments)."""
    import tensorflow as tf

    from .build import builder

    call_node = builder(mg).call_node

    loads = _phase_loads(mg, plan_, k)
    stores = plan_.stores[k]
    bns = plan_.at_level(k)
    signature = [tf.TensorSpec(tuple(symbolic[t].shape), symbolic[t].dtype) for t in loads]
    moments_of = []
    for b in bns:
        t = mg.inbound(b)[0]
        axis = _bn_channel_axis(mg, b, len(symbolic[t].shape))
        if axis == 0:
            raise InputError(f"BN layer {mg.layer(b).name!r} normalizes the batch axis; it cannot be calibrated")
        shape = symbolic[t].shape
        inner = [d for i, d in enumerate(shape) if i not in (0, axis)]
        moments_of.append((t, axis, None if None in inner else int(np.prod(inner or [1]))))

    def run(*args):
        tensors = dict(zip(loads, args))
        for n in plan_.phases[k]:
            lay = mg.layer(n)
            fn = live[lay.name]
            if inference[lay.name]:
                fn = _with_training_false(fn)
            call_node(mg, n, fn, tensors)
        moments = []
        for t, axis, per_sample in moments_of:
            x = tensors[t]
            count = None if per_sample is not None else tf.size(x) // (tf.shape(x)[0] * tf.shape(x)[axis])
            moments.append((*_sample_moments(x, axis), count))
        return [tensors[t] for t in stores], moments

    values = [per_sample for _, _, per_sample in moments_of]
    return loads, _Traced(run, signature), values


_SHAREABLE_MODULES = ("keras.", "tf_keras.")


def _phase_key(mg: ModelGraph, plan_: Plan, k: int, symbolic: dict, live: dict) -> tuple | None:
    """What phase ``k`` computes, up to the names and the weight values of its layers: for each
    node in order, its class, config without the name, call arguments, weight shapes and where
    its inputs come from (a loaded tensor or an earlier node of the phase); the loaded tensors'
    shapes; which tensors are stored; which feed moments. Two phases with the same key run the
    same function with different weights (ResNet50's repeated blocks: 49 phases, 23 functions).
    None -- never shared -- when a layer is a framework op, a Lambda or TF-op layer, a wrapper,
    called more than once in the model, a preprocessing or stateful layer, or not a class of the
    framework itself: those may keep state that is not a weight."""
    import json

    loads = _phase_loads(mg, plan_, k)
    where = {t: ("load", i) for i, t in enumerate(loads)}
    outputs: dict[str, list] = {}
    for t in symbolic:
        outputs.setdefault(t[0], []).append(t)
    nodes = []
    for i, n in enumerate(plan_.phases[k]):
        lay = mg.layer(n)
        klass = type(live.get(lay.name))
        if (is_op(lay) or lay.class_name in BATCH_OPAQUE or lay.wrapped_configs() or len(mg.calls(lay.name)) != 1
                or not klass.__module__.startswith(_SHAREABLE_MODULES) or ".preprocessing." in klass.__module__
                or lay.config.get("stateful")):
            return None  # state beyond weights (vocabularies, RNN states) would not be swapped
        data = mg.graph.nodes[n]
        try:
            config = json.dumps({c: v for c, v in lay.config.items() if c != "name"}, sort_keys=True)
            call = json.dumps([data["args"], data["kwargs"]], sort_keys=True,
                              default=lambda r: ("ref", r.port) if hasattr(r, "port") else repr(r))
        except (TypeError, ValueError):
            return None
        inputs = tuple(where.get(t) for t in mg.inbound(n))
        if None in inputs:
            return None
        weights = tuple((w, np.shape(v), str(np.asarray(v).dtype)) for w, v in lay.weights.items())
        nodes.append((klass.__module__, klass.__qualname__, config, call, inputs, weights))
        for t in outputs.get(n, []):
            where[t] = ("node", i, t[1])
    specs = tuple((tuple(symbolic[t].shape), str(symbolic[t].dtype)) for t in loads)
    stores = tuple(where.get(t) for t in plan_.stores[k])
    moments = tuple(where.get(mg.inbound(b)[0]) for b in plan_.at_level(k))
    if None in stores or None in moments:
        return None
    return (tuple(nodes), specs, stores, moments)


class _Traced:
    """A phase function, traced once -- or, when a tensor it reads has open non-batch dimensions,
    once per shape of them that the data brings (the batch axis stays open). Layers may take another
    path when a size is open in the trace: Keras 3's TimeDistributed runs a ``vectorized_map`` over an
    open time length, which fails in graph mode, and a plain loop over a static one."""

    def __init__(self, run, signature):
        self.run, self.signature = run, signature
        self.open = any(None in tuple(s.shape)[1:] for s in signature)
        self.fns: dict = {}

    def __call__(self, *args):
        import tensorflow as tf

        key = tuple(tuple(int(d) for d in a.shape[1:]) for a in args) if self.open else None
        fn = self.fns.get(key)
        if fn is None:
            sig = self.signature if key is None else [
                tf.TensorSpec((None, *shape), spec.dtype) for shape, spec in zip(key, self.signature)]
            fn = self.fns[key] = tf.function(self.run, input_signature=sig, autograph=False)
        return fn(*args)


def _sample_moments(x, axis: int):
    """Per sample and channel, in the graph: ``(mean, M2)`` over the sample's own
    non-channel values, centred, in the tensor's float32 -- or ``(x, None)`` when a
    sample has one value per channel. Shapes ``(batch, channels)``."""
    import tensorflow as tf

    if x.dtype in (tf.float16, tf.bfloat16):  # mixed precision: never sum in 16 bits
        x = tf.cast(x, tf.float32)
    rank = len(x.shape)
    inner = [i for i in range(1, rank) if i != axis]
    if not inner:
        return x, None
    if axis in (1, rank - 1):
        # Channels at one end: the sample's values are the rows (or columns) of a matrix, and
        # both sums are products with a vector of ones -- one read each, through oneDNN's
        # matmul: 1.5-2x faster than TF's reductions over middle axes (float32 accumulation).
        last = axis == rank - 1
        b, c = tf.shape(x)[0], tf.shape(x)[axis]
        x3 = tf.reshape(x, [b, -1, c] if last else [b, c, -1])
        n = tf.shape(x3)[1 if last else 2]
        ones = tf.ones([b, 1, n] if last else [b, n, 1], x.dtype)  # unbroadcast: 1.5x faster in MKL here

        def total(t):
            return tf.reshape(tf.matmul(ones, t) if last else tf.matmul(t, ones), [b, c])

        mean = total(x3) / tf.cast(n, x.dtype)
        centred = tf.math.squared_difference(x3, tf.expand_dims(mean, 1 if last else 2))
        return mean, total(centred)
    mean = tf.reduce_mean(x, axis=inner, keepdims=True)
    m2 = tf.reduce_sum(tf.math.squared_difference(x, mean), axis=inner)
    return tf.squeeze(mean, axis=inner), m2


def _merge_samples(m, m2, k: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Per-sample moments (``k`` values each) -> the batch's (count, mean, M2), in float64."""
    m = np.asarray(m, np.float64)
    mean = m.mean(axis=0)
    total = ((m - mean) ** 2).sum(axis=0) * k
    if m2 is not None:
        total += np.asarray(m2, np.float64).sum(axis=0)
    return float(m.shape[0] * k), mean, total


def _op_error(e: BaseException, layers: set[str]) -> str | None:
    """``" in layer 'x': <reason>"`` for a TensorFlow op error (an embedding index out of range, a
    shape the data brings): the reason is the line before TF's ``[[{{node ...}}]]`` marker, the
    layer the one whose name scope holds that node (:func:`~bnrewrite.errors.scope_layer`). None
    for other exceptions."""
    import re

    import tensorflow as tf

    if not isinstance(e, tf.errors.OpError):
        return None
    text = str(getattr(e, "message", e))
    lines = [ln.strip() for ln in text.splitlines()]
    marks = [i for i, ln in enumerate(lines) if ln.startswith("[[")]
    reason = next((lines[i - 1] for i in marks if i and lines[i - 1]), None) or next(
        (ln for ln in lines if ln and not ln.endswith(":")), type(e).__name__)
    node = re.search(r"\{\{node ([^}]+)\}\}", text)
    layer = scope_layer(node.group(1), layers) if node else None
    where = f" in layer {layer!r}" if layer else ""
    return f"{where}: {reason}"


def _with_training_false(fn):
    def call(*args, **kwargs):
        kwargs["training"] = False
        return fn(*args, **kwargs)

    return call


def _peak_rss_mb() -> float | None:
    """This process's peak RSS in MiB (on Ray: the shard's own process)."""
    from .io.h5_extract import proc_kib

    kib = proc_kib("/proc/self/status", "VmHWM")
    return None if kib is None else kib / 1024


class Shard:
    """One shard of a calibration: its batches, its activation cache and a live model.

    This is the whole interface an engine runs (:mod:`bnrewrite.engines`), in the
    shard's own process or in the driver's:

    * :meth:`describe` -- the plan, identical on every shard (levels, BN layers, inputs);
    * :meth:`feed` ``(index, arrays)`` -- level 0 on one batch: its moments, and the
      tensors later levels read go to this shard's cache;
    * :meth:`level` ``(k, stats, indices)`` -- put the new statistics of level ``k - 1``
      in place, run level ``k`` on these cached batches: their moments;
    * :meth:`close` -- drop the cache (and its spill folder); what the shard did.

    Moments come back per batch, ``{layer: (n, mean, M2)}``, and the driver merges
    them in batch order: the result is the same bits whatever the shard count,
    since a batch is computed alike wherever it runs (batches are never split).
    Shards of one process share the live model (``runtime=``): every shard applies
    the same statistics.
    """

    def __init__(self, mg: ModelGraph, *, custom_objects: dict | None = None, cache_mb: float | None = None,
                 shards: int = 1, cache_dir: str | None = None, max_disk_bytes: int | None = None,
                 cap_given: bool = True, runtime: "_Runtime | None" = None):
        self.rt = runtime or _Runtime(mg, custom_objects)
        # measured here: on Ray, the shard's own host
        self.cache_mb = cache_budget_mb(cache_mb, shards)
        self.cache = _Cache(int(self.cache_mb * 2**20), cache_dir, max_disk_bytes, cap_given)
        self.batches: list[int] = []
        self.samples = 0
        self._level = 0  # the level whose tensors the cache holds
        self._stats_level = 0  # the level whose statistics are in place
        self.seconds = 0.0
        self._closed: dict | None = None

    def describe(self) -> dict:
        p = self.rt.plan
        return {"specs": self.rt.specs, "levels": p.levels, "skipped": list(p.skipped),
                "batch_size": self.rt.auto_batch_size(),
                "at_level": [list(dict.fromkeys(self.rt.mg.layer(b).name for b in p.at_level(k)))
                             for k in range(p.levels)],
                "bn_levels": {self.rt.mg.layer(b).name: lv for b, lv in p.bn_nodes.items()},
                "calls": {name: sum(1 for b in p.bn_nodes if self.rt.mg.layer(b).name == name)
                          for name in {self.rt.mg.layer(b).name for b in p.bn_nodes}}}

    def feed(self, index: int, arrays: list) -> dict:
        t = time.perf_counter()
        out = self._run(0, index, arrays)
        self.batches.append(index)
        self.samples += int(len(arrays[0])) if arrays else 0
        self.seconds += time.perf_counter() - t
        return out

    def level(self, k: int, stats: dict, indices: list[int]) -> dict[int, dict]:
        t = time.perf_counter()
        if k != self._level:  # a new level: what no later level reads is dropped
            for tensor in [t_ for t_, last in self.rt.plan.last_use.items() if self._level <= last < k]:
                self.cache.drop(tensor)
            self._level = k
        if self._stats_level != k:
            self.rt.apply(stats)
            self._stats_level = k
        self.rt.prepare(k)
        loads = self.rt.function(k)[0]
        last = [t_ for t_ in loads if self.rt.plan.last_use.get(t_) == k]
        out = {}
        for i in indices:
            out[i] = self._run(k, i, [self.cache.get(t_, i) for t_ in loads])
            for t_ in last:  # freed batch by batch, not at the level's end: the peak is in + out of one batch
                self.cache.release(t_, i)
        self.seconds += time.perf_counter() - t
        return out

    def _run(self, k: int, index: int, args: list) -> dict:
        from .outputs import check_interrupted

        check_interrupted()  # Keras's bare excepts can swallow a stop signal
        loads, fn, values = self.rt.function(k)
        try:
            stored, moments = fn(*args)
        except Exception as e:
            op_error = _op_error(e, {self.rt.mg.layer(n).name for n in self.rt.plan.phases[k]})
            if op_error is None:
                raise
            raise InputError(f"calibration failed at level {k + 1}, batch {index + 1}{op_error} (check the "
                             "calibration data: its values, shapes and dtype)") from e
        for t, value in zip(self.rt.plan.stores[k], stored):
            self.cache.put(t, index, value)
        out: dict[str, tuple] = {}
        for name, (m, m2, dynamic), per_sample in zip(self.rt.level_layers[k], moments, values):
            batch = _merge_samples(m, m2, per_sample if dynamic is None else int(dynamic))
            if name in out:  # a shared layer: its calls at this level are merged in call order
                merged = Moments(*out[name])
                merged.add(*batch)
                batch = (merged.n, merged.mean, merged.m2)
            out[name] = batch
        return out

    def close(self) -> dict:
        if self._closed is not None:
            return self._closed
        c = self.cache
        c.close()
        self._closed = {"samples": self.samples, "batches": len(self.batches), "seconds": round(self.seconds, 3),
                        "cache_budget_mb": round(self.cache_mb, 1), "peak_live_bytes": c.peak_live_bytes,
                        "peak_ram_bytes": c.peak_ram_bytes, "spilled_bytes": c.spilled_bytes,
                        "peak_disk_bytes": c.peak_disk_bytes, "peak_rss_mb": _peak_rss_mb(), "pid": os.getpid(),
                        "functions": self.rt.traced_functions()}
        return self._closed


class _Runtime:
    """Per process: the live Keras model, the plan, and one traced function per level."""

    def __init__(self, mg: ModelGraph, custom_objects: dict | None = None):
        from .build import build_live

        self.mg = mg
        self.symbolic, self.live = build_live(mg, custom_objects)
        shapes = {t: tuple(v.shape) for t, v in self.symbolic.items()}
        self.specs = _input_specs(mg, shapes)
        self.plan = plan(mg, shapes)
        self.level_layers = [[mg.layer(b).name for b in self.plan.at_level(k)] for k in range(self.plan.levels)]
        self.inference = {name: _has_training_arg(lay) for name, lay in self.live.items()}
        self.layers = mg.layers()
        self._fns: dict[int, tuple] = {}
        self._by_key: dict[tuple, int] = {}  # phase structure -> the first phase with it
        self._template: dict[int, int] = {}  # phase -> the phase whose function it runs
        self._installed: dict[int, int] = {}  # template phase -> whose weights its layers hold

    def auto_batch_size(self) -> int:
        """The batch size when none is given: the power of two nearest (in ratio) to the number of
        samples whose largest activation that calibration computes fills AUTO_BATCH_BYTES, from 32 to
        256 -- each level is one function call per batch, and fewer, larger calls cost less per sample;
        TensorFlow's allocator packs power-of-two batches with less waste (ResNet50 at 128x128, 512
        samples: 1.5 GB of new memory touched at batch 128 or 64, 2.0 GB at 96 or 80).
        32 when a computed tensor has an open dimension, or when the batch axis may not be the
        samples' (an unwrapped TimeDistributed's reshape to batch x time, a TF op or Lambda)."""
        from .build.base import numpy_dtype

        nodes = {n for phase in self.plan.phases for n in phase} | set(self.mg.inputs)
        if any(is_op(self.mg.layer(n)) or self.mg.layer(n).class_name in BATCH_OPAQUE for n in nodes):
            return DEFAULT_BATCH_SIZE  # a reshape may fold other axes into the batch: sizes per sample unknown
        biggest = 0
        for (node, _), t in self.symbolic.items():
            if node not in nodes:
                continue
            dims = tuple(t.shape)[1:]
            if None in dims:
                return DEFAULT_BATCH_SIZE
            biggest = max(biggest, int(np.prod(dims, dtype=np.int64)) * np.dtype(numpy_dtype(t.dtype)).itemsize)
        n = 2 ** round(np.log2(AUTO_BATCH_BYTES / max(1, biggest)))
        return int(min(MAX_AUTO_BATCH, max(DEFAULT_BATCH_SIZE, n)))

    def function(self, k: int):
        """``(loads, traced function, values per sample)`` of phase ``k``. A phase with the same
        structure as an earlier one (see :func:`_phase_key`) reuses that phase's function: its
        layers then run with phase ``k``'s weights, put in place by :meth:`prepare`."""
        if k not in self._fns:
            key = _phase_key(self.mg, self.plan, k, self.symbolic, self.live)
            j = self._by_key.setdefault(key, k) if key is not None else k
            if j == k:
                self._fns[k] = _phase_function(self.mg, self.plan, k, self.live, self.symbolic, self.inference)
            else:
                self._fns[k] = (_phase_loads(self.mg, self.plan, k), *self._fns[j][1:])
            self._template[k] = j
        return self._fns[k]

    def prepare(self, k: int) -> None:
        """Before phase ``k`` runs: when it reuses phase ``j``'s function, give phase ``j``'s live
        layers (node by node, same classes and configs) phase ``k``'s weights, with the statistics
        calibrated so far."""
        self.function(k)
        j = self._template[k]
        if j == k or self._installed.get(j) == k:
            return
        from .build import builder

        assign = builder(self.mg).assign_weights
        for mine, theirs in zip(self.plan.phases[k], self.plan.phases[j]):
            assign(self.live[self.mg.layer(theirs).name], self.mg.layer(mine))
        self._installed[j] = k

    def traced_functions(self) -> int:
        """How many phase functions were traced (phases sharing one count once)."""
        return sum(1 for k, j in self._template.items() if j == k)

    def apply(self, stats: dict) -> None:
        """Put new statistics (``{layer: (mean, variance)}``) in the graph and the live layers."""
        from .build import builder

        assign = builder(self.mg).assign_weights
        for name, (mean, var) in stats.items():
            lay = self.layers[name]
            _store_stats(lay, mean, var)
            assign(self.live[name], lay)  # later levels normalize with the new statistics


def _store_stats(lay, mean: np.ndarray, var: np.ndarray) -> None:
    for key, value in (("moving_mean", mean), ("moving_variance", var)):
        w = lay.weights[key]
        lay.weights[key] = np.asarray(value).reshape(np.shape(w)).astype(np.asarray(w).dtype)


def _final_stats(name: str, st: Moments, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    if st.n - ddof <= 0:
        raise InputError(
            f"calibration data too small: layer {name!r} sees {int(st.n)} value(s) per channel, "
            f"{'at least 2 are needed for the unbiased variance' if ddof else 'need at least 1'}"
        )
    mean, var = st.mean, st.variance(ddof)
    if not (np.isfinite(mean).all() and np.isfinite(var).all()):
        raise InputError(f"calibration gives non-finite statistics for layer {name!r}: its input has NaN or "
                         "inf on the calibration data")
    return mean, var


def _progress_caller(progress):
    """``progress(done, total)`` or, when it takes a third argument, ``progress(done, total, where)``
    with ``where = {"level", "levels", "batch", "batches"}`` (1-based level and batch)."""
    if progress is None:
        return lambda *a: None
    try:
        params = inspect.signature(progress).parameters.values()
        three = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 3 or any(
            p.kind == p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):
        three = False
    return (lambda done, total, where: progress(done, total, where)) if three else (
        lambda done, total, where: progress(done, total))


def calibrate(
    mg: ModelGraph,
    data,
    *,
    batch_size: int | None = None,
    max_samples: int | None = None,
    variance: str = "unbiased",
    cache_mb: float | None = DEFAULT_CACHE_MB,
    tmpdir: str | None = None,
    custom_objects: dict | None = None,
    progress: Callable | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_spill_gb: float | None = None,
    engine: str = "local",
    shards: int = 1,
) -> dict:
    """Re-estimate the moving statistics of every BN of ``mg`` in place (see the module docstring).

    ``data`` is any source :class:`~bnrewrite.io.data.CalibrationData` accepts, read
    ``batch_size`` samples at a time (default: :meth:`_Runtime.auto_batch_size`).
    ``engine`` runs the shards (:mod:`bnrewrite.engines`): ``"local"`` (this
    process) or ``"ray"`` / ``"ray:ADDRESS"``; ``shards`` splits the batches
    between that many shards (round robin). The result does not depend on either.
    Cached activations beyond ``cache_mb`` of RAM per shard (default
    :func:`cache_budget_mb`: half the available memory) spill to a temporary folder in ``cache_dir`` (``tmpdir`` is the older name; default:
    the system temp folder), holding at most ``max_spill_gb`` GiB at a time in
    total (default: :func:`default_max_spill_bytes`); reaching it raises
    :class:`InputError`. ``progress(done, total[, where])`` is called as batches
    of each level finish (``total`` is None while the number of batches is not
    yet known; ``where`` is described in :func:`_progress_caller`). Returns the
    calibration report: samples, levels, per shard what it did, and per layer
    the values seen per channel and the old vs new statistics (min/mean/max
    over channels).
    """
    from .engines import create_engine

    if variance not in VARIANCES:
        raise InputError(f"variance must be one of {', '.join(VARIANCES)}, not {variance!r}")
    if int(shards) < 1:
        raise InputError(f"shards must be at least 1, not {shards}")
    shards = int(shards)
    ddof = 1 if variance == "unbiased" else 0
    t0 = time.perf_counter()
    eng = create_engine(engine)
    cap = default_max_spill_bytes(data) if max_spill_gb is None else int(max_spill_gb * 2**30)
    options = {"custom_objects": custom_objects, "cache_mb": cache_mb, "shards": shards,
               "cache_dir": os.fspath(cache_dir) if cache_dir is not None else tmpdir,
               "max_disk_bytes": max(1, cap // shards), "cap_given": max_spill_gb is not None}
    tell = _progress_caller(progress)
    layers = mg.layers()
    old = {}
    for lay in layers.values():
        if "moving_mean" in lay.weights and "moving_variance" in lay.weights:
            old[lay.name] = {k: np.array(lay.weights[k]) for k in ("moving_mean", "moving_variance")}
    report: dict = {"engine": eng.name, "samples": 0, "batches": 0, "variance": variance, "layers": []}
    closed: list[dict] = []
    try:
        handles = eng.start(mg, Shard, options, shards)
        info = eng.result(eng.call(handles[0], "describe"))
        levels = info["levels"]
        source = data if isinstance(data, CalibrationData) else CalibrationData(
            data, info["specs"], batch_size=batch_size or info["batch_size"], max_samples=max_samples)
        report.update({"data": source.description, "batch_size": source.batch_size, "levels": levels,
                       "skipped": info["skipped"]})
        if not levels:
            return report
        stats: dict[str, Moments] = {}
        n_batches = source.expected_batches()
        done = 0
        per_batch: dict[int, dict] = {}

        def take(index: int, moments: dict) -> None:
            nonlocal done
            per_batch[index] = moments
            done += 1
            total = None if n_batches is None else n_batches * levels
            tell(done, total, {"level": level + 1, "levels": levels, "batch": len(per_batch),
                               "batches": n_batches})

        # level 0: the driver reads the data and deals whole batches round robin
        level, count = 0, 0
        pending: list[tuple[int, Any]] = []
        for arrays in source.batches():
            pending.append((count, eng.call(handles[count % shards], "feed", count, arrays)))
            count += 1
            while len(pending) > eng.in_flight * shards:  # bounded: a batch in flight per shard or two
                i, fut = pending.pop(0)
                take(i, eng.result(fut))
        for i, fut in pending:
            take(i, eng.result(fut))
        n_batches = count
        report["samples"], report["batches"] = source.samples, count
        owner = [list(range(s, count, shards)) for s in range(shards)]
        for level in range(levels):
            if level:
                per_batch = {}
                new = {name: _final_stats(name, stats[name], ddof) for name in info["at_level"][level - 1]}
                futures = [eng.call(handles[s], "level", level, new, chunk)
                           for s in range(shards) for chunk in _chunks(owner[s], eng.chunk)]
                for fut in futures:
                    for i, m in eng.result(fut).items():
                        take(i, m)
            for i in range(count):  # merged in batch order: the same bits for any shard count
                for name, m in per_batch[i].items():
                    stats.setdefault(name, Moments()).add(*m)
            for name in info["at_level"][level]:
                _store_stats(layers[name], *_final_stats(name, stats[name], ddof))
        closed = [eng.result(eng.call(h, "close")) for h in handles]
    finally:
        eng.close()
        report["seconds"] = time.perf_counter() - t0

    for name, st in stats.items():
        lay = layers[name]
        report["layers"].append({
            "layer": name,
            "calls": info["calls"][name],
            "level": info["bn_levels"][name],
            "channels": int(st.mean.size),
            "values_per_channel": int(st.n),
            "old_mean": _summary(old[name]["moving_mean"]),
            "new_mean": _summary(lay.weights["moving_mean"]),
            "old_variance": _summary(old[name]["moving_variance"]),
            "new_variance": _summary(lay.weights["moving_variance"]),
        })
    report["shards"] = [{"shard": s, **c} for s, c in enumerate(closed)]
    report["functions"] = max((c["functions"] for c in closed), default=0)  # traced per shard
    report["cache"] = {"budget_mb": "auto" if cache_mb is None else cache_mb, "max_spill_bytes": cap,
                       **{k: sum(c[k] for c in closed) for k in ("peak_live_bytes", "peak_ram_bytes",
                                                                  "spilled_bytes", "peak_disk_bytes")}}
    return report


def _chunks(items: list, size: int):
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + size]
