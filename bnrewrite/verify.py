"""Verification of a written model against the original model.

Two figures per output:

* **vs the original** (what decides): the written file against the *reference*,
  the framework that wrote the input file reading the original config and
  weights itself (:mod:`bnrewrite.reference`), in inference mode. A mismatch is
  exit 3. Where no independent reference can be built, the report says so and
  why, and only the second figure exists;
* **vs the rewritten model**: the written file against bnrewrite's own rebuild
  of the rewritten graph (it locates a fault: export or rewrite).

Inputs are seeded (float ~ N(0, 1), integer in {0, 1}; inputs that feed an
``Embedding`` take whole numbers in [0, input_dim) whatever their declared dtype, since
Keras 2 files often declare them float32; batch ``batch``) or the first samples of
``--verify-data``. Open dimensions take ``--input-shape`` sizes,
else the first of :data:`OPEN_SIZES` the reference model accepts (its pooling and
striding decide, e.g. U-Net++ needs a multiple of 16).

* ``max_abs`` = max |out - ref|; ``max_rel`` = max |out - ref| / max(|ref|, atol)
* pass iff every element has |out - ref| <= atol + rtol * |ref| (numpy.isclose).

Batch independence: every sample run alone through the written file must give what
it gave inside the batch (same tolerance): a model that still computes batch
statistics fails this.

References run eagerly (``model(x, training=False)``). When the written file does not
match them, the live models run once more in graph mode (``tf.function``, traced for
these shapes: the path ``model.predict`` and serving take). If the framework's graph
mode disagrees with its own eager call beyond the tolerance and the written file
matches graph mode, graph mode is the reference (``reference_mode: "graph"``, with the
eager/graph difference in the report): e.g. TensorFlow's oneDNN kernels on CPU run an
eager channels_first 1x1 ``Conv2D`` wrong when its filters equal the spatial size.
Where eager and graph mode agree, a mismatch stands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .build.base import numpy_dtype
from .errors import InputError, root_cause
from .io.layercheck import tensor_cap

#: default atol = rtol by the lowest precision the model computes in (its layers' dtype policies):
#: float16 has a 2^-10 and bfloat16 a 2^-7 rounding step, and runtimes round in different places
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
_REDUCED = {"float16": "float16", "mixed_float16": "float16", "bfloat16": "bfloat16", "mixed_bfloat16": "bfloat16"}
#: sizes tried, in order, for open (None) non-batch dimensions
OPEN_SIZES = (32, 64, 128, 224, 16, 8)
#: the verification batch (default 4, at least 2 for the batch-independence check) is cut so
#: that the largest tensor of a batch stays within this
BATCH_TENSOR_BYTES = 256 << 20
#: verification holds the inputs, three models' outputs and the allocators' reuse of the largest
#: tensor: its peak memory measured 8x the largest tensor of a batch (a BN on the input), a floor
MEMORY_FACTOR = 8


def check_tensor_bytes(model) -> int:
    """Refuse a model whose declared shapes make one tensor of one sample larger than
    :data:`~bnrewrite.io.layercheck.TENSOR_BYTES` -- an 8 KB config can declare a 100,000 x 100,000 input or an
    UpSampling by 4,000 -- before anything runs (export and verification would allocate
    it). Static dimensions only: open ones count as 1 (:func:`check_traced_bytes` counts them
    once their sizes are chosen). Returns the largest tensor's bytes per sample."""
    advice = " (BNREWRITE_MAX_TENSOR_BYTES; raise it only for a model you trust)"

    def nbytes(t) -> float:
        dims = [1 if d is None else int(d) for d in list(t.shape)[1:]]
        return float(np.prod(dims, dtype=np.float64)) * np.dtype(numpy_dtype(t.dtype)).itemsize

    largest = 0.0
    for t in list(model.inputs) + [t for layer in model.layers for t in _outputs(layer)]:
        n = nbytes(t)
        _bound(n, "the model declares a tensor of", f" ({getattr(t, 'name', '?')}, shape {tuple(t.shape)})", advice)
        largest = max(largest, n)
    outputs = sum(nbytes(t) for t in model.outputs)
    _bound(outputs, f"the model's {len(model.outputs)} outputs declare", " together", advice)
    return int(max(largest, outputs))


def _bound(n: float, what: str, detail: str, advice: str) -> None:
    """InputError ``<what> <n> per sample<detail>, more than the <cap> allowed<advice>`` when ``n``
    bytes exceed the per-sample cap (:data:`~bnrewrite.io.layercheck.TENSOR_BYTES`)."""
    from .io.safe_files import fmt_bytes

    cap = tensor_cap()
    if n > cap:
        raise InputError(f"{what} {fmt_bytes(int(min(n, 1 << 62)))} per sample{detail}, more than the "
                         f"{fmt_bytes(cap)} allowed{advice}")


#: TensorFlow ops whose output size is given by the *values* of an input (a limit, multiples, a shape):
#: with every input dimension fixed, an output dimension these leave open is set by the data itself
SIZE_FROM_VALUES = frozenset({
    "Range", "Tile", "Fill", "BroadcastTo", "Pad", "PadV2", "MirrorPad", "OneHot", "LinSpace", "Empty",
    "ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea", "ScaleAndTranslate",
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal", "Multinomial",
    "StatelessRandomUniformV2", "StatelessRandomNormalV2", "StatelessRandomUniformIntV2",
    "StatelessTruncatedNormalV2", "MatrixDiagV2", "MatrixDiagV3", "ScatterNd", "UnsortedSegmentSum",
    "UnsortedSegmentMax", "UnsortedSegmentMin", "UnsortedSegmentProd", "Bincount", "DenseBincount",
    "SparseToDense", "TensorListReserve", "Conv2DBackpropInput", "Conv2DBackpropInputV2",
    "Conv3DBackpropInputV2",
})
#: ops whose output is the broadcast (or outer product) of their inputs: with two inputs of open
#: shape -- each bounded, e.g. reshaped by sizes from values -- the output is their product, which no
#: input bounds (red-team round 5: (n, 1) x (1, n) from two value-shaped reshapes, 6 GB)
BROADCASTING = frozenset({
    "Add", "AddV2", "Sub", "Mul", "RealDiv", "Div", "DivNoNan", "FloorDiv", "FloorMod", "TruncateDiv",
    "Maximum", "Minimum", "Pow", "SquaredDifference", "Atan2", "Xdivy", "Xlogy", "Select", "SelectV2",
    "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr",
    "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
})


def has_ops(model) -> bool:
    """Whether the model records raw TensorFlow ops (tf_keras TFOpLambda) or Keras 3 op nodes, the
    only built-in layers whose output sizes can come from values rather than from the config."""
    from .io.layercheck import is_keras_op

    return _any_layer(model, lambda op: type(op).__name__ in ("TFOpLambda", "SlicingOpLambda")
                      or is_keras_op(type(op).__module__))


#: built-in layers whose own tensors outgrow their inputs and outputs (attention scores: length^2 per
#: head), which only a trace shows: a 14 KB file of Attention over 8192 steps took 5 GB unchecked
INTERNAL_GROWTH = frozenset({"Attention", "AdditiveAttention", "MultiHeadAttention", "GroupedQueryAttention",
                             "GroupQueryAttention"})


def needs_trace(model) -> bool:
    """Whether the sizes of the model's tensors can only be known by tracing it: raw ops (sizes from
    values) or layers of :data:`INTERNAL_GROWTH`."""
    return has_ops(model) or _any_layer(model, lambda op: type(op).__name__ in INTERNAL_GROWTH)


def _any_layer(model, pred) -> bool:
    ops = getattr(model, "operations", None) or model.layers
    return any(pred(op) or (hasattr(op, "layers") and op is not model and _any_layer(op, pred)) for op in ops)


def _feed(model, arrays):
    """The inputs as the model takes them: a dict for a model of dict inputs (keys in flatten order,
    sorted), else a list."""
    import tensorflow as tf

    structure = getattr(model, "_inputs_struct", None)  # Keras 3; tf_keras keeps it as _nested_inputs
    structure = getattr(model, "_nested_inputs", None) if structure is None else structure
    return tf.nest.pack_sequence_as(structure, list(arrays)) if isinstance(structure, dict) else list(arrays)


def check_traced_bytes(model, specs, sizes: list[list[int]], *, unsafe: bool = False) -> int:
    """:func:`check_tensor_bytes` at the sizes chosen for open dimensions, before the model runs at
    them: what an UpSampling by 600 of an open 32 x 32 input makes is known only once the sizes are.
    The model is traced (``tf.function``, nothing allocated) at batch 1 and at batch 2, and every
    tensor TensorFlow gives a full static shape is counted, per sample: a tensor that folds the batch
    into another axis and broadcasts grows faster than the batch (red-team round 5: (B.N)^3, 64 MiB
    at batch 1, 4 GiB at the batch verification then chose), which only the second trace shows.
    Returns the largest one's bytes per sample, or the sum of the outputs' if larger (verification
    holds every output three times). An op of
    :data:`SIZE_FROM_VALUES` whose output size is still open depends on the data's values, which
    nothing bounds, and so does a :data:`BROADCASTING` op of two open inputs whose output stays open
    (each input holds what it was reshaped from; their broadcast, their product): refused unless
    ``unsafe`` (a file the user trusts)."""
    import tensorflow as tf

    largest = 0.0
    advice = "; give smaller sizes with --input-shape, or raise BNREWRITE_MAX_TENSOR_BYTES for a model you trust"
    fn = tf.function(lambda *a: model(_feed(model, a), training=False), autograph=False)
    graphs = []
    for batch in (1, 2):
        try:
            graph = fn.get_concrete_function(
                *[tf.TensorSpec([batch, *s], dt) for (_, _, dt), s in zip(specs, sizes)]).graph
        except Exception:  # noqa: BLE001 - a model that cannot take two samples fails verification itself
            if batch == 1:
                raise
            break
        graphs.append(graph)
        for op in graph.get_operations():
            open_inputs = sum(1 for i in op.inputs if not i.shape.is_fully_defined()) if op.type in BROADCASTING else 0
            for t in op.outputs:
                if (op.type in SIZE_FROM_VALUES or open_inputs >= 2) and not unsafe and not t.shape.is_fully_defined():
                    raise InputError(
                        f"the model makes a tensor whose size depends on the input values ({op.name}, a {op.type} "
                        f"of shape {tuple(t.shape)} at fixed input sizes {sizes}): bnrewrite cannot bound what "
                        "running it allocates (--unsafe for a model you trust)")
                if t.dtype in (tf.resource, tf.variant, tf.string) or not t.shape.is_fully_defined():
                    continue
                n = float(np.prod(t.shape.as_list(), dtype=np.float64)) * t.dtype.size / batch
                _bound(n, f"at input sizes {sizes} (chosen for the open dimensions) the model makes a tensor of",
                       f" ({op.name}, shape {tuple(t.shape)}{', per sample of a batch of 2' if batch == 2 else ''})",
                       advice)
                largest = max(largest, n)
    graph = graphs[0]  # the outputs per sample: at batch 1
    outputs = sum(float(np.prod(t.shape.as_list()[1:] or [1], dtype=np.float64)) * t.dtype.size
                  for t in graph.outputs if t.shape.is_fully_defined() and t.dtype not in (tf.resource, tf.variant))
    _bound(outputs, f"at input sizes {sizes} the model's {len(graph.outputs)} outputs take", " together", advice)
    return int(max(largest, outputs))


def verification_batch(batch: int, sample_bytes: int) -> int:
    """``batch`` cut so that the largest tensor of a batch stays within :data:`BATCH_TENSOR_BYTES`
    (at least 2: the batch-independence check needs two samples); :class:`InputError` when even
    the floor of verification's memory (:data:`MEMORY_FACTOR` x that tensor) exceeds the memory
    available -- one clear line instead of the kernel's OOM kill."""
    from .io.h5_extract import proc_kib
    from .io.safe_files import fmt_bytes

    batch = max(2, min(batch, BATCH_TENSOR_BYTES // max(sample_bytes, 1)))
    need = MEMORY_FACTOR * batch * sample_bytes
    kib = proc_kib("/proc/meminfo", "MemAvailable")
    if kib is not None and need > kib * 1024:
        raise InputError(
            f"verifying needs at least {fmt_bytes(need)} of memory (batch {batch}, largest tensor "
            f"{fmt_bytes(sample_bytes)} per sample), {fmt_bytes(kib * 1024)} is available; give smaller "
            "sizes with --input-shape, or run where there is more memory")
    return batch


def _outputs(layer) -> list:
    try:
        out = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return []
    import tensorflow as tf

    return [t for t in tf.nest.flatten(out) if hasattr(t, "shape")]





@dataclass
class OutputCheck:
    name: str
    shape: list
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class Verification:
    runtime: str
    atol: float
    rtol: float
    batch: int
    seed: int
    #: what the output was compared with: the original model as its framework reads it
    reference: str = ""
    #: why there is no independent reference, if there is none
    no_reference: str | None = None
    input_shapes: dict = field(default_factory=dict)
    inputs_from: str = "seeded random"
    outputs: list[OutputCheck] = field(default_factory=list)
    outputs_vs_rewritten: list[OutputCheck] = field(default_factory=list)
    batch_independent: bool | None = None
    batch_independence_max_abs: float | None = None
    #: when the written model mixes samples: whether the original, as its framework runs it, mixes
    #: them too (by ``original_batch_max_abs``) -- then it is the model's design, not a BN left in
    #: training mode, and no rewrite of BatchNormalization can remove it
    original_batch_independent: bool | None = None
    original_batch_max_abs: float | None = None
    #: how the references ran: "eager", or "graph" when the framework's eager call disagreed with
    #: its own graph mode (by ``eager_graph_max_abs``) and the written file matches graph mode
    reference_mode: str = "eager"
    eager_graph_max_abs: float | None = None
    #: open dimensions: the same comparison at a second size, batch 1 (a size baked in by an
    #: export would pass at one size only); None when every dimension is fixed or given
    second_size: dict | None = None
    #: the seeded inputs made every output the same for every sample (within atol: a saturated
    #: softmax) and were scaled by this to make the check see the inputs; None when not needed
    input_scale: float | None = None
    #: the outputs stayed the same for every sample at every scale tried: the check compares constants
    constant_outputs: bool = False
    error: str | None = None

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs or self.outputs_vs_rewritten), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs or self.outputs_vs_rewritten), default=0.0)

    @property
    def max_abs_vs_rewritten(self) -> float:
        return max((o.max_abs for o in self.outputs_vs_rewritten), default=0.0)

    @property
    def ok(self) -> bool:
        deciding = self.outputs if self.no_reference is None else self.outputs_vs_rewritten
        return (
            self.error is None and bool(deciding) and all(o.ok for o in deciding)
            and all(o.ok for o in self.outputs_vs_rewritten) and self.batch_independent is not False
        )

    @property
    def export_differs(self) -> bool:
        """Whether the written file fails where the model it was exported from does not: it cannot be
        loaded or run, or its outputs differ from the rewritten model's (the exporter's fault, not the
        model's)."""
        error = self.error or ""
        out_of_memory = any(k in error for k in ("allocate", "bad_alloc", "out of memory", "OOM"))
        return ("the written model" in error and not out_of_memory) or any(not o.ok for o in self.outputs_vs_rewritten)

    def failure(self) -> str:
        if self.error:
            return self.error
        for label, checks in (("the original model", self.outputs), ("the rewritten model", self.outputs_vs_rewritten)):
            bad = [o for o in checks if not o.ok]
            if bad:
                o = bad[0]
                return (
                    f"output {o.name!r} differs from {label}: max abs error {o.max_abs:.3g}, max rel error "
                    f"{o.max_rel:.3g} (atol {self.atol:g}, rtol {self.rtol:g})"
                )
        if self.batch_independent is False:
            if self.original_batch_independent is False:
                return (
                    "outputs depend on the other samples in the batch, and so do the original model's "
                    f"({self.reference}: max abs difference {self.original_batch_max_abs:.3g} between a sample "
                    "alone and in a batch): an op of the model itself mixes samples (e.g. Attention or a "
                    "matmul on 2-D inputs, which attends across the batch; a reduction or tile over the batch "
                    "axis), not a BatchNormalization; its output for one input depends on what it is batched with"
                )
            return (
                "outputs depend on the other samples in the batch (max abs difference "
                f"{self.batch_independence_max_abs:.3g} between a sample alone and in a batch): batch "
                "statistics are still computed, or an op mixes samples (e.g. a reduction or tile over the batch axis)"
            )
        return ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ok=self.ok, max_abs=self.max_abs, max_rel=self.max_rel,
                 max_abs_vs_rewritten=self.max_abs_vs_rewritten)
        return d


#: elements compared at a time: float64 copies of a whole 1 GiB output (and of its differences and
#: bounds) took ten times its size
COMPARE_CHUNK = 1 << 22


def compare(name: str, got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    """Element-wise ``|got - ref| <= atol + rtol |ref|`` in float64, chunk by chunk."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return OutputCheck(name, list(ref.shape), float("inf"), float("inf"), False)
    g, r = got.reshape(-1), ref.reshape(-1)
    abs_max, rel_max, ok = [0.0], [0.0], True
    for i in range(0, g.size, COMPARE_CHUNK):
        gc, rc = g[i:i + COMPARE_CHUNK].astype(np.float64), r[i:i + COMPARE_CHUNK].astype(np.float64)
        diff, mag = np.abs(gc - rc), np.abs(rc)
        abs_max.append(diff.max())  # NaN propagates, as over the whole array
        rel_max.append((diff / np.maximum(mag, atol)).max())
        ok = ok and bool(np.isfinite(gc).all() and np.isfinite(rc).all() and np.all(diff <= atol + rtol * mag))
    return OutputCheck(name, list(ref.shape), float(np.max(abs_max)), float(np.max(rel_max)), ok)


def run_model(model, xs: list[np.ndarray], graph: bool = False) -> list[np.ndarray]:
    """Inference outputs of a live tf_keras or Keras 3 model, flattened, as numpy: called eagerly,
    or (``graph``) through a ``tf.function`` traced afresh for these shapes -- never retraced, since
    Keras 3.15's TimeDistributed goes wrong in a function retraced for another time length."""
    import tensorflow as tf

    if graph:
        fn = tf.function(lambda *a: model(_feed(model, a), training=False), autograph=False)
        ys = fn(*[tf.constant(x) for x in xs])
    else:
        try:
            ys = model(_feed(model, xs), training=False)
        except Exception:  # noqa: BLE001 - retried in graph mode; that failure is the one reported
            # tf_keras's eager ConvLSTM2D, called at batch 4 then at batch 1, keeps a state shape of the
            # first call (a real TF 2.15 file: "Tensor's shape (4, ...) is not compatible with supplied
            # shape (1, ...)"); a function traced for these shapes has no such memory
            return run_model(model, xs, graph=True)
    return [np.asarray(y) for y in tf.nest.flatten(ys)]


def compute_precision(mg) -> tuple[str, list[str]]:
    """The lowest precision any layer of ``mg`` computes in (``"float32"``, ``"float16"`` or
    ``"bfloat16"``, from dtype policies as names or policy dicts, wrapped layers included) and the
    policies seen that set it."""
    found: dict[str, str] = {}
    for lay in mg.layers().values():
        for cfg in [lay.config] + [w.get("config") or {} for w in lay.wrapped_configs()]:
            dtype = cfg.get("dtype")
            name = (dtype.get("config") or {}).get("name") if isinstance(dtype, dict) else dtype
            if isinstance(name, str) and name in _REDUCED:
                found[name] = _REDUCED[name]
    kinds = set(found.values())
    lowest = "bfloat16" if "bfloat16" in kinds else ("float16" if kinds else "float32")
    return lowest, sorted(n for n, k in found.items() if k == lowest)


def default_tolerance(mg) -> tuple[float, str | None]:
    """Verification's default atol = rtol for ``mg``, and why when it is not the float32 one."""
    lowest, policies = compute_precision(mg)
    if lowest == "float32":
        return TOLERANCE["float32"], None
    return TOLERANCE[lowest], (f"the model computes in {lowest} (dtype policy {', '.join(policies)}): verification "
                               f"tolerances default to {TOLERANCE[lowest]:g} instead of {TOLERANCE['float32']:g}, "
                               f"the size of {lowest} rounding differences between runtimes (--atol/--rtol set them)")


def _in_graph_mode(run, got, rebuilt, reference, xs):
    """``((rewritten, original), written, run)`` in graph mode -- the written file's outputs too when
    it is a Keras model (``run.graph``; onnxruntime has one mode: ``got`` as it is) -- or None where
    graph mode cannot run."""
    graph_run = getattr(run, "graph", None)
    try:
        refs = run_model(rebuilt, xs, graph=True), None if reference is None else run_model(reference, xs, graph=True)
        return refs, (graph_run(xs) if graph_run else got), graph_run or run
    except Exception:  # the eager verdict stands
        return None


def input_specs(model) -> list[tuple[str, list, np.dtype]]:
    specs = []
    for t in model.inputs:
        dtype = t.dtype.name if hasattr(t.dtype, "name") and not isinstance(t.dtype, str) else str(t.dtype)
        specs.append((t.name.split(":")[0], list(t.shape)[1:], np.dtype(dtype)))
    return specs


def make_inputs(specs, sizes: list[list[int]], batch: int, seed: int, index_inputs=None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = []
    for (name, _, dtype), shape in zip(specs, sizes):
        full = [batch, *shape]
        if name in (index_inputs or {}):  # token ids for an Embedding
            xs.append(rng.integers(0, max(1, int(index_inputs[name])), size=full).astype(dtype))
        elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            xs.append(rng.integers(0, 2, size=full).astype(dtype))
        else:
            xs.append(rng.standard_normal(full).astype(dtype))
    return xs


def parse_input_shapes(items) -> dict[str, list[int]]:
    """``["image:64,64,3", ...]`` -> ``{"image": [64, 64, 3]}`` (sample dims, no batch)."""
    out: dict[str, list[int]] = {}
    for item in items or ():
        name, sep, dims = str(item).rpartition(":")
        try:
            shape = [int(d) for d in dims.split(",") if d.strip()]
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise InputError(f"--input-shape {item!r}: expected NAME:D1,D2,... with positive sizes")
        out[name] = shape
    return out


def choose_sizes(specs, given: dict[str, list[int]], probe, index_inputs=None, skip=(), check=None
                 ) -> list[list[int]]:
    """Sample shapes for each input: ``given`` ones, static ones, and for open dimensions the
    first size in :data:`OPEN_SIZES` (but ``skip``) that ``probe(xs)`` runs without error;
    ``check(sizes)`` runs before each probe and its InputError stops the search."""
    names = [n for n, _, _ in specs]
    unknown = set(given) - set(names)
    if unknown:
        raise InputError(f"--input-shape names {sorted(unknown)}, but the model's inputs are {names}")
    fixed: list[list[int] | None] = []
    for name, shape, _ in specs:
        if name in given:
            g = given[name]
            if len(g) != len(shape) or any(d is not None and d != s for d, s in zip(shape, g)):
                raise InputError(
                    f"--input-shape {name}:{','.join(map(str, g))} does not fit the input's shape "
                    f"{tuple(shape)} (None = open)"
                )
            fixed.append(list(g))
        else:
            fixed.append(None if any(d is None for d in shape) else [int(d) for d in shape])
    if all(f is not None for f in fixed):
        return fixed  # type: ignore[return-value]
    last_error = None
    for size in (s for s in OPEN_SIZES if s not in skip):
        sizes = [f if f is not None else [size if d is None else int(d) for d in shape]
                 for f, (_, shape, _) in zip(fixed, specs)]
        if check is not None:
            try:
                check(sizes)
            except InputError:
                raise
            except Exception:  # noqa: BLE001 - not traceable at this size: the probe says why
                pass
        try:
            probe(make_inputs(specs, sizes, 1, 0, index_inputs))
            return sizes
        except Exception as e:  # the model does not accept this size: try the next
            last_error = e
    shown = ", ".join(f"{n}{tuple(s)}" for n, s, _ in specs)
    raise InputError(
        f"the model does not run on any tried size for its open dimensions ({shown}; tried "
        f"{', '.join(map(str, OPEN_SIZES))}): {root_cause(last_error)}; give sizes with --input-shape NAME:D1,D2,..."
    )


def verify(run, runtime: str, rebuilt, reference, *, atol=1e-4, rtol=1e-4, batch=4, seed=0,
           input_shapes=None, verify_data=None, reference_label: str = "", no_reference: str | None = None,
           names=None, index_inputs=None, unsafe: bool = False) -> Verification:
    """Compare ``run(xs)`` (the written file) with ``reference`` and ``rebuilt`` (live models)."""
    v = Verification(runtime=runtime, atol=atol, rtol=rtol, batch=batch, seed=seed,
                     reference=reference_label, no_reference=no_reference)
    specs = input_specs(rebuilt)
    probe_model = reference if reference is not None else rebuilt
    if verify_data is not None:
        xs = _data_inputs(verify_data, specs, batch)
        v.inputs_from = str(verify_data) if isinstance(verify_data, (str, bytes)) or hasattr(verify_data, "__fspath__") \
            else "given data"
        v.batch = batch = len(xs[0])
    else:
        traced: dict = {}

        def check(sizes):
            traced["bytes"] = None  # a size that cannot be traced keeps no stale count
            traced["bytes"] = check_traced_bytes(probe_model, specs, sizes, unsafe=unsafe)

        sizes = choose_sizes(specs, input_shapes or {}, lambda xs: run_model(probe_model, xs), index_inputs,
                             check=check)
        if "bytes" not in traced and needs_trace(probe_model):  # static shapes, but sizes only a trace shows
            check(sizes)
        v.batch = batch = verification_batch(batch, traced.get("bytes") or check_tensor_bytes(probe_model))
        xs = make_inputs(specs, sizes, batch, seed, index_inputs)
    v.input_shapes = {n: list(x.shape[1:]) for (n, _, _), x in zip(specs, xs)}
    try:
        ref_rewritten = run_model(rebuilt, xs)
    except Exception as e:
        raise InputError(f"the rewritten model cannot run on inputs {v.input_shapes}: {root_cause(e)}") from e
    if verify_data is None and _same_for_every_sample(ref_rewritten, atol):
        # a model that saturates on unit-variance inputs (softmax exactly [0, 0, 1]) cannot tell a wrong
        # rewrite from a right one there: smaller (or larger) inputs usually reach its working range
        for scale in INPUT_SCALES:
            alt = [x * np.asarray(scale, x.dtype) if x.dtype.kind == "f" else x for x in xs]
            try:
                ys = run_model(rebuilt, alt)
            except Exception:  # noqa: BLE001 - a scale the model cannot take: try the next
                continue
            if not _same_for_every_sample(ys, atol):
                xs, ref_rewritten, v.input_scale = alt, ys, scale
                break
        else:
            v.constant_outputs = True
    ref_original = None
    if reference is not None:
        try:
            ref_original = run_model(reference, xs)
        except Exception as e:
            raise InputError(
                f"the original model ({reference_label}) cannot run on inputs {v.input_shapes}: {root_cause(e)}"
            ) from e
    try:
        got = run(xs)
    except Exception as e:
        v.error = f"{runtime} could not run the written model: {root_cause(e)}"
        return v
    if len(got) != len(ref_rewritten):
        v.error = f"written model has {len(got)} outputs, the model has {len(ref_rewritten)}"
        return v
    if ref_original is not None and len(ref_original) != len(got):
        v.error = f"written model has {len(got)} outputs, the original model has {len(ref_original)}"
        return v
    names = names or [f"output_{i}" for i in range(len(got))]

    def check(out, refs_rewritten, refs_original) -> None:
        v.outputs_vs_rewritten = [compare(n, g, r, atol, rtol) for n, g, r in zip(names, out, refs_rewritten)]
        if refs_original is not None:
            v.outputs = [compare(n, g, r, atol, rtol) for n, g, r in zip(names, out, refs_original)]

    check(got, ref_rewritten, ref_original)
    graph = None if v.ok else _in_graph_mode(run, got, rebuilt, reference, xs)
    if graph is not None:  # is it the framework's eager call that is off? (module docstring)
        (g_rewritten, g_original), got_graph, graph_run = graph
        modes = [compare("", e, g, atol, rtol)
                 for e, g in zip(ref_rewritten + (ref_original or []), g_rewritten + (g_original or []))]
        check(got_graph, g_rewritten, g_original)
        if v.ok and not all(c.ok for c in modes):
            v.reference_mode, v.eager_graph_max_abs = "graph", max(c.max_abs for c in modes)
            got, run = got_graph, graph_run  # the checks below compare like with like
        else:
            check(got, ref_rewritten, ref_original)
    v.batch_independent, v.batch_independence_max_abs = _alone_vs_batch(run, xs, got, atol, rtol)
    if not v.batch_independent and ref_original is not None:
        v.original_batch_independent, v.original_batch_max_abs = _alone_vs_batch(
            lambda x: run_model(reference, x), xs, ref_original, atol, rtol)
    if verify_data is None and reference is not None and v.ok:  # a failure found already stands as it is
        _check_second_size(v, run, reference, specs, input_shapes or {}, sizes, index_inputs, names, unsafe)
    return v


def _alone_vs_batch(run, xs: list, batched: list, atol: float, rtol: float) -> tuple[bool, float]:
    """``(independent, max abs difference)``: each sample run alone through ``run`` against its row
    of ``batched`` (the same inputs run as one batch)."""
    worst, independent = 0.0, True
    for i in range(len(xs[0])):
        alone = run([x[i:i + 1] for x in xs])
        for a, g in zip(alone, batched):
            c = compare("", a, np.asarray(g)[i:i + 1], atol, rtol)
            worst = max(worst, c.max_abs)
            independent &= c.ok
    return bool(independent), worst


#: scales tried for seeded inputs when every output is the same for every sample
INPUT_SCALES = (0.1, 0.01, 0.001, 10.0)


def _same_for_every_sample(ys: list, atol: float) -> bool:
    """Every output is the same, within ``atol``, for every sample of the batch."""
    arrays = [np.asarray(y) for y in ys]
    return all(a.ndim > 0 and len(a) > 1 and a.dtype.kind in "fc" and
               float(np.nanmax(np.abs(a - a[:1]))) <= atol for a in arrays) if arrays else False


def _check_second_size(v: Verification, run, reference, specs, given, sizes, index_inputs, names,
                       unsafe: bool = False) -> None:
    """With open dimensions, compare the written model with the original at a second size too: the
    sample :func:`choose_sizes` finds the original running on (batch 1) is the one compared."""
    used = {d for (name, shape, _), size in zip(specs, sizes) if name not in given
            for d, s in zip(size, shape) if s is None}
    if not used:
        return
    tried: dict = {}

    def probe(xs):
        tried["xs"], tried["want"] = xs, run_model(reference, xs, graph=v.reference_mode == "graph")

    try:
        choose_sizes(specs, given, probe, index_inputs, skip=used,
                     check=lambda sizes: check_traced_bytes(reference, specs, sizes, unsafe=unsafe))
    except InputError:  # the model runs at one size only: nothing more to compare
        return
    xs, want = tried["xs"], tried["want"]
    shapes = {n: list(x.shape[1:]) for (n, _, _), x in zip(specs, xs)}
    try:
        got = run(xs)
    except Exception as e:
        v.second_size = {"input_shapes": shapes, "ok": False, "max_abs": None}
        v.error = f"the written model does not run at input shapes {shapes} as the original does: {root_cause(e)}"
        return
    checks = [compare(n, g, r, v.atol, v.rtol) for n, g, r in zip(names, got, want)] \
        if len(got) == len(want) else []
    ok = bool(checks) and all(c.ok for c in checks)
    v.second_size = {"input_shapes": shapes, "ok": ok, "max_abs": max((c.max_abs for c in checks), default=None)}
    if not ok:
        bad = next((c for c in checks if not c.ok), None)
        v.error = (f"output {bad.name!r} differs from the original model at input shapes {shapes}: max abs "
                   f"error {bad.max_abs:.3g} (the shapes first checked, {v.input_shapes}, match)") if bad else \
            f"the written model has {len(got)} outputs at input shapes {shapes}, the original {len(want)}"


def _data_inputs(data, specs, batch: int) -> list[np.ndarray]:
    from .io.data import CalibrationData, InputSpec

    src = CalibrationData(data, [InputSpec(n, (None, *s), str(d)) for n, s, d in specs],
                          batch_size=max(batch, 8), max_samples=max(batch, 8))
    return next(iter(src.batches()))


# ------------------------------------------------------------------ runners of written files
def onnx_runner(path):
    """``(run, output names)`` for an ONNX file in onnxruntime, or raise with the reason."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # FATAL only: its warnings and errors reach the user as our one line
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    return (lambda xs: sess.run(None, dict(zip(in_names, xs)))), out_names


def keras_runner(path, framework: str, *, custom_objects=None, unsafe=False):
    """``(run, output names)`` for a written ``.keras``/``.h5``, reloaded by its framework."""
    if framework == "tf_keras":
        import tf_keras

        from .build.tf_keras import lambda_globals

        objects = {**(lambda_globals() if unsafe else {}), **(custom_objects or {})}
        loaded = tf_keras.models.load_model(str(path), compile=False, custom_objects=objects or None,
                                            safe_mode=not unsafe)
    else:
        import keras

        loaded = keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe,
                                         custom_objects=custom_objects or None)
    names = [getattr(t, "name", str(i)).split(":")[0] for i, t in enumerate(loaded.outputs)]
    return keras_run(loaded), names


def keras_run(model):
    """``run(xs)`` for a live Keras model, eager; ``run.graph(xs)`` runs it in graph mode."""
    def run(xs):
        return run_model(model, xs)

    run.graph = lambda xs: run_model(model, xs, graph=True)
    return run
