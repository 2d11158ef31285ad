"""Helpers shared by the real-model builders and the harness.

Nothing here imports TensorFlow at module import time: ``framework(name)``
imports ``tf_keras`` or ``keras`` on demand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

#: default size for an open (None) non-batch dimension of a model input
OPEN_DIM = 64
#: batch size of the reference inputs
REF_BATCH = 2


def quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def framework(name: str):
    """``tf_keras`` (Keras 2 API, legacy .h5) or ``keras`` (Keras 3)."""
    quiet()
    if name == "tf_keras":
        import tf_keras

        return tf_keras
    if name == "keras":
        import keras

        return keras
    raise ValueError(f"unknown framework {name!r}")


def seed_of(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


# --------------------------------------------------------------------------- weights


def _iter_layers(layer):
    """Every layer object reachable from ``layer`` (nested models, wrappers), each once."""
    seen = set()
    stack = [layer]
    while stack:
        lay = stack.pop()
        if id(lay) in seen:
            continue
        seen.add(id(lay))
        yield lay
        for attr in ("layers", "_layers"):
            sub = getattr(lay, attr, None)
            if isinstance(sub, (list, tuple)):
                stack.extend(s for s in sub if hasattr(s, "weights"))
        for attr in ("layer", "forward_layer", "backward_layer", "cell"):
            sub = getattr(lay, attr, None)
            if sub is not None and hasattr(sub, "weights"):
                stack.append(sub)


def _is_bn(K, layer) -> bool:
    """BatchNormalization, its subclasses, and tf_keras's BatchNormalizationV1 (a sibling class)."""
    return isinstance(layer, K.layers.BatchNormalization) or any(
        c.__name__ in ("BatchNormalizationBase", "BatchNormalizationV1") for c in type(layer).__mro__)


def _key(w) -> str:
    # tf_keras: "bn/gamma:0"; keras 3: "gamma" (w.name) / "bn/gamma" (w.path)
    return str(getattr(w, "name", "")).split("/")[-1].split(":")[0]


BN_DRAW = {
    "gamma": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
    "beta": lambda rng, shape: rng.normal(0.0, 0.5, shape),
    "moving_mean": lambda rng, shape: rng.normal(0.0, 0.5, shape),
    "moving_variance": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
}

#: other weights that get redrawn (their fresh values are often 0 or 1, which hides mistakes)
OTHER_DRAW = {"bias", "alpha"}


def randomize(model, K, seed: int) -> dict:
    """Redraw every BN's gamma/beta/moving_mean/moving_variance (variance > 0), every bias
    (N(0, 0.1)) and PReLU alpha; returns {bn layer name: {key: array}}.

    Kernels keep their (seeded) Glorot/He initialisation, which is already random and
    well scaled; drawing them again would only make deep models overflow.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for layer in _iter_layers(model):
        if _is_bn(K, layer):
            ws = {}
            vals = []
            for w in layer.weights:
                key = _key(w)
                arr = BN_DRAW[key](rng, tuple(w.shape)).astype("float32")
                ws[key] = arr
                vals.append(arr)
            layer.set_weights(vals)
            written[layer.name] = ws
        elif not getattr(layer, "layers", None) and layer.weights and not hasattr(layer, "layer"):
            own = layer.weights
            vals = layer.get_weights()
            changed = False
            for i, w in enumerate(own):
                if _key(w) in OTHER_DRAW and vals[i].dtype.kind == "f":
                    vals[i] = rng.normal(0.0, 0.1, vals[i].shape).astype(vals[i].dtype)
                    changed = True
            if changed:
                layer.set_weights(vals)
    if not written:
        raise AssertionError(f"model {model.name!r} has no BatchNormalization")
    return written


def bn_ranks(model, K) -> dict:
    """{BN layer name: rank of the tensor it normalizes} (for TimeDistributed(BN): per step)."""
    out = {}
    for layer in _iter_layers(model):
        if _is_bn(K, layer):
            try:
                shape = layer.input_shape if hasattr(layer, "input_shape") else layer.input.shape
                if isinstance(shape, list):
                    shape = shape[0]
                out[layer.name] = len(shape)
            except Exception:  # noqa: BLE001 - unbuilt/inner layers: filled from the wrapper below
                pass
        inner = getattr(layer, "layer", None)
        if inner is not None and _is_bn(K, inner):
            try:
                shape = layer.input_shape if hasattr(layer, "input_shape") else layer.input.shape
                out[inner.name] = len(shape) - 1
            except Exception:  # noqa: BLE001
                pass
    return out


# --------------------------------------------------------------------------- inputs


def input_specs(model):
    """[(name, shape with None for open dims incl. batch, numpy dtype str)] in model order."""
    specs = []
    for t in model.inputs:
        name = getattr(t, "name", "input").split(":")[0]
        shape = tuple(None if d is None else int(d) for d in t.shape)
        dt = t.dtype
        dt = getattr(dt, "name", dt)
        specs.append((name, shape, str(dt)))
    return specs


def make_inputs(model, seed: int, batch: int = REF_BATCH, sample_shapes: dict | None = None,
                int_ranges: dict | None = None) -> list[np.ndarray]:
    """Seeded inputs, one per model input, open dims filled from ``sample_shapes`` (by input
    name or index) or with OPEN_DIM; integer inputs drawn from ``int_ranges`` (default [0, 10))."""
    rng = np.random.default_rng(seed)
    sample_shapes = sample_shapes or {}
    int_ranges = int_ranges or {}
    xs = []
    for i, (name, shape, dt) in enumerate(input_specs(model)):
        want = sample_shapes.get(name, sample_shapes.get(i))
        dims = []
        for j, d in enumerate(shape[1:]):
            if want is not None:
                dims.append(int(want[j]))
            else:
                dims.append(OPEN_DIM if d is None else d)
        full = (batch, *dims)
        rng_int = int_ranges.get(name, int_ranges.get(i))
        if rng_int is not None or "int" in dt:
            lo, hi = rng_int or (0, 10)
            xs.append(rng.integers(lo, hi, full).astype(dt if dt != "float64" else "float32"))
        else:
            xs.append(rng.normal(0.0, 1.0, full).astype("float32"))
    return xs


def as_list(out) -> list[np.ndarray]:
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(o) for o in out]


def parity(got: list, want: list, got_graph: list | None = None, want_graph: list | None = None):
    """:func:`max_err` of ``got`` against ``want`` (eager); where the framework's graph mode disagrees
    with its eager call (for the reference or for a reloaded Keras output), matching in graph mode on
    both sides is parity too, and the note says so."""
    worst, ok, note = max_err(got, want)
    if not ok and (got_graph is not None or want_graph is not None):
        g = got_graph if got_graph is not None else got
        w = want_graph if want_graph is not None else want
        worst2, ok2, _ = max_err(g, w)
        if ok2:
            return worst2, True, f"matches the framework's graph mode (eager: {worst:.2g} off; its two modes disagree)"
    return worst, ok, note


def max_err(got: list, want: list) -> tuple[float, bool, str]:
    """(max abs error, within ATOL 1e-4 + RTOL 1e-4 * |want| everywhere, note)."""
    if len(got) != len(want):
        return float("inf"), False, f"{len(got)} outputs, expected {len(want)}"
    worst, ok = 0.0, True
    for g, w in zip(got, want):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if g.shape != w.shape:
            if g.size == w.size:
                g = g.reshape(w.shape)
            else:
                return float("inf"), False, f"shape {g.shape} != {w.shape}"
        if not np.all(np.isfinite(g)) or not np.all(np.isfinite(w)):
            return float("inf"), False, "non-finite values"
        d = np.abs(g - w)
        worst = max(worst, float(d.max()) if d.size else 0.0)
        ok = ok and bool(np.all(d <= 1e-4 + 1e-4 * np.abs(w)))
    return worst, ok, ""
