"""Verification of a written model against the rebuilt Keras model.

Seeded inputs shaped from the model (batch ``batch``, unknown non-batch
dimensions filled with ``fill``; float inputs ~ N(0, 1), integer inputs in
{0, 1}) go through the rebuilt Keras model in inference mode and through the
written file: ONNX in onnxruntime, ``.keras``/``.h5`` reloaded with plain
``keras.saving.load_model`` (safe mode).

Figures, per output and overall:

* ``max_abs`` = max |out - ref|
* ``max_rel`` = max |out - ref| / max(|ref|, atol)
* pass iff every element has |out - ref| <= atol + rtol * |ref| (numpy.isclose).

Batch independence: every sample run alone through the written file must give
what it gave inside the batch (same tolerance). A model that still computes
batch statistics fails this, since one sample's answer then depends on the
others in its batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


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
    outputs: list[OutputCheck] = field(default_factory=list)
    batch_independent: bool | None = None
    batch_independence_max_abs: float | None = None
    error: str | None = None

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def ok(self) -> bool:
        return (
            self.error is None and all(o.ok for o in self.outputs)
            and self.batch_independent is not False
        )

    def failure(self) -> str:
        if self.error:
            return self.error
        bad = [o for o in self.outputs if not o.ok]
        if bad:
            o = bad[0]
            return (
                f"output {o.name!r} differs from Keras: max abs error {o.max_abs:.3g}, max rel error "
                f"{o.max_rel:.3g} (atol {self.atol:g}, rtol {self.rtol:g})"
            )
        if self.batch_independent is False:
            return (
                "outputs depend on the other samples in the batch (max abs difference "
                f"{self.batch_independence_max_abs:.3g} between a sample alone and in a batch): "
                "batch statistics are still computed"
            )
        return ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ok=self.ok, max_abs=self.max_abs, max_rel=self.max_rel)
        return d


def sample_inputs(model, batch: int = 4, seed: int = 0, fill: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = []
    for t in model.inputs:
        shape = [batch] + [fill if d is None else int(d) for d in list(t.shape)[1:]]
        dtype = np.dtype(str(t.dtype))
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            xs.append(rng.integers(0, 2, size=shape).astype(dtype))
        else:
            xs.append(rng.standard_normal(shape).astype(dtype))
    return xs


def keras_outputs(model, xs: list[np.ndarray]) -> list[np.ndarray]:
    import keras

    ys = model(list(xs), training=False)
    return [np.asarray(keras.ops.convert_to_numpy(y)) for y in keras.tree.flatten(ys)]


def compare(name: str, got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return OutputCheck(name, list(ref.shape), float("inf"), float("inf"), False)
    diff = np.abs(got - ref)
    finite = np.isfinite(got).all() and np.isfinite(ref).all()
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ref), atol)).max()) if diff.size else 0.0
    ok = bool(finite and np.all(diff <= atol + rtol * np.abs(ref)))
    return OutputCheck(name, list(ref.shape), max_abs, max_rel, ok)


def _check(runtime, run, model, atol, rtol, batch, seed, names) -> Verification:
    v = Verification(runtime=runtime, atol=atol, rtol=rtol, batch=batch, seed=seed)
    xs = sample_inputs(model, batch=batch, seed=seed)
    ref = keras_outputs(model, xs)
    try:
        got = run(xs)
    except Exception as e:  # the written file failed to run at all
        v.error = f"{runtime} could not run the written model: {str(e).strip().splitlines()[0][:300]}"
        return v
    if len(got) != len(ref):
        v.error = f"written model has {len(got)} outputs, Keras model has {len(ref)}"
        return v
    v.outputs = [compare(n, g, r, atol, rtol) for n, g, r in zip(names, got, ref)]
    # Batch independence: each sample alone vs. inside the batch.
    worst = 0.0
    independent = True
    for i in range(batch):
        alone = run([x[i:i + 1] for x in xs])
        for a, g in zip(alone, got):
            c = compare("", a, np.asarray(g)[i:i + 1], atol, rtol)
            worst = max(worst, c.max_abs)
            independent &= c.ok
    v.batch_independent = bool(independent)
    v.batch_independence_max_abs = worst
    return v


def verify_onnx(model, onnx_path, *, atol=1e-4, rtol=1e-4, batch=4, seed=0) -> Verification:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        v = Verification(runtime="onnxruntime", atol=atol, rtol=rtol, batch=batch, seed=seed)
        v.error = f"onnxruntime could not load the written model: {str(e).strip().splitlines()[0][:300]}"
        return v
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]

    def run(xs):
        return sess.run(None, dict(zip(in_names, xs)))

    return _check("onnxruntime", run, model, atol, rtol, batch, seed, out_names)


def verify_keras_file(model, path, *, atol=1e-4, rtol=1e-4, batch=4, seed=0,
                      custom_objects=None, safe_mode=None) -> Verification:
    """Reload ``path`` with Keras and compare. ``custom_objects``/``safe_mode`` default to the
    :func:`~bnrewrite.io.keras_writer.rebuild_options` in effect (safe mode unless ``unsafe``)."""
    import keras

    from .io.keras_writer import effective_options

    objects, unsafe = effective_options(custom_objects, None if safe_mode is None else not safe_mode)
    try:
        loaded = keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe,
                                         custom_objects=objects or None)
    except Exception as e:
        v = Verification(runtime="keras", atol=atol, rtol=rtol, batch=batch, seed=seed)
        v.error = f"keras could not reload the written model: {str(e).strip().splitlines()[0][:300]}"
        return v
    names = [getattr(t, "name", str(i)) for i, t in enumerate(model.outputs)]
    return _check("keras", lambda xs: keras_outputs(loaded, xs), model, atol, rtol, batch, seed, names)
