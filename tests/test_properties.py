"""Property-based tests (hypothesis): random small functional graphs convert correctly.

A strategy draws a small functional graph -- Dense, Conv1D, Conv2D,
DepthwiseConv2D, BatchNormalization, TimeDistributed(BatchNormalization),
Add, Concatenate and activations, wired at random (branches, merges, one or
two outputs) over a vector, sequence or image input -- with random BN
statistics (variance positive, gamma of either sign, several epsilons, BNs
without scale or center) and a random call-site ``training=`` (True, False,
or not given) on every BN call. Each graph is built and saved by Keras 3
(``.keras`` or ``.h5``) AND by tf_keras (legacy ``.h5``), converted by
bnrewrite to ONNX (and sometimes to ``.keras``), and the output is compared
with the *writing framework's* inference output.

The reference is subtle where a BN was called with ``training=True``: the
writing framework's ``predict`` then normalizes with the batch's statistics,
while bnrewrite gives every BN inference semantics (moving statistics) on
purpose. So the reference is the same architecture built by the same
framework *without* the call-site flags, given the same weights
(``set_weights``), run with ``predict``. bnrewrite never computes a reference.

Default run: a few derandomized examples (CI time). Long run (at least 200
graphs, random)::

    python3 -m pytest -m slow tests/test_properties.py

``BNREWRITE_PROPERTY_EXAMPLES=N`` overrides the number of examples of either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from models import framework

#: input shape (no batch) per kind of graph
INPUTS = {"vec": (6,), "seq": (5, 4), "img": (5, 5, 3)}
#: ops that keep the spatial shape, per kind (all convolutions use padding="same")
KIND_OPS = {"vec": [], "seq": ["conv1d", "td_bn"], "img": ["conv2d", "dwconv", "td_bn"]}
MAX_CHANNELS = 12
pytestmark = pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")
BATCH = 5  # not the verification batch (4): the ONNX file must take any batch size


@dataclass(frozen=True)
class Graph:
    kind: str
    steps: tuple  # (op, inputs, params) per layer; tensor 0 is the input, step i makes tensor i+1
    outputs: tuple  # tensor indices
    seed: int

    def describe(self) -> str:
        return f"{self.kind}: " + "; ".join(f"{i + 1}={op}{ins}{p}" for i, (op, ins, p) in enumerate(self.steps)) \
            + f" -> {self.outputs}"


@st.composite
def graphs(draw) -> Graph:
    kind = draw(st.sampled_from(sorted(INPUTS)))
    channels = [INPUTS[kind][-1]]
    steps = []
    activation = st.sampled_from([None, None, "relu", "tanh"])
    training = st.sampled_from([True, False, None])  # None: not given at the call
    for _ in range(draw(st.integers(2, 7))):
        ops = ["dense", "bn", "bn", "act", "concat", *KIND_OPS[kind]]
        same = [(i, j) for i in range(len(channels)) for j in range(i + 1, len(channels))
                if channels[i] == channels[j]]
        if same:
            ops.append("add")
        op = draw(st.sampled_from(ops))
        last = len(channels) - 1
        src = draw(st.integers(max(0, last - 2), last))  # mostly recent tensors: chains that fold
        c = channels[src]
        if op == "dense":
            units = draw(st.integers(2, 8))
            steps.append(("dense", (src,), (units, draw(activation), draw(st.booleans()))))
            channels.append(units)
        elif op in ("conv1d", "conv2d"):
            filters = draw(st.integers(2, 8))
            steps.append((op, (src,), (filters, draw(st.sampled_from([1, 3])), draw(activation),
                                       draw(st.booleans()))))
            channels.append(filters)
        elif op == "dwconv":
            steps.append(("dwconv", (src,), (draw(st.sampled_from([1, 3])), draw(activation),
                                             draw(st.booleans()))))
            channels.append(c)
        elif op == "bn":
            steps.append(("bn", (src,), (draw(training), draw(st.sampled_from([1e-3, 1e-5, 0.1])),
                                         draw(st.booleans() | st.just(True)), draw(st.booleans() | st.just(True)))))
            channels.append(c)
        elif op == "td_bn":
            steps.append(("td_bn", (src,), (draw(training), draw(st.sampled_from([1e-3, 0.1])))))
            channels.append(c)
        elif op == "act":
            steps.append(("act", (src,), (draw(st.sampled_from(["relu", "tanh", "sigmoid"])),)))
            channels.append(c)
        elif op == "add":
            i, j = draw(st.sampled_from(same))
            steps.append(("add", (i, j), ()))
            channels.append(channels[i])
        else:  # concat; falls back to a BN when the result would be too wide
            other = draw(st.integers(0, last))
            if channels[src] + channels[other] > MAX_CHANNELS:
                steps.append(("bn", (src,), (draw(training), 1e-3, True, True)))
                channels.append(c)
            else:
                steps.append(("concat", (src, other), ()))
                channels.append(channels[src] + channels[other])
    if not any(op in ("bn", "td_bn") for op, _, _ in steps):
        steps.append(("bn", (len(channels) - 1,), (draw(training), 1e-3, True, True)))
        channels.append(channels[-1])
    outputs = (len(channels) - 1,)
    if len(channels) > 2 and draw(st.booleans()):
        outputs += (draw(st.integers(1, len(channels) - 2)),)
    return Graph(kind, tuple(steps), outputs, draw(st.integers(0, 2**31 - 1)))


def build(K, g: Graph, flags: bool = True):
    """Build ``g`` with framework ``K``; ``flags=False`` leaves out every call-site ``training=``."""
    L = K.layers
    ts = [L.Input(INPUTS[g.kind], name="x")]
    for i, (op, ins, p) in enumerate(g.steps):
        name = f"{op}_{i + 1}"
        x = ts[ins[0]]
        if op == "dense":
            t = L.Dense(p[0], activation=p[1], use_bias=p[2], name=name)(x)
        elif op == "conv1d":
            t = L.Conv1D(p[0], p[1], padding="same", activation=p[2], use_bias=p[3], name=name)(x)
        elif op == "conv2d":
            t = L.Conv2D(p[0], p[1], padding="same", activation=p[2], use_bias=p[3], name=name)(x)
        elif op == "dwconv":
            t = L.DepthwiseConv2D(p[0], padding="same", activation=p[1], use_bias=p[2], name=name)(x)
        elif op in ("bn", "td_bn"):
            if op == "bn":
                layer = L.BatchNormalization(epsilon=p[1], center=p[2], scale=p[3], name=name)
            else:
                layer = L.TimeDistributed(L.BatchNormalization(epsilon=p[1], name=f"{name}_inner"), name=name)
            t = layer(x, training=p[0]) if flags and p[0] is not None else layer(x)
        elif op == "act":
            t = L.Activation(p[0], name=name)(x)
        elif op == "add":
            t = L.Add(name=name)([ts[ins[0]], ts[ins[1]]])
        else:
            t = L.Concatenate(name=name)([ts[ins[0]], ts[ins[1]]])
        ts.append(t)
    outs = [ts[o] for o in g.outputs]
    return K.Model(ts[0], outs if len(outs) > 1 else outs[0], name="prop")


def randomize(model, rng) -> None:
    """BN: gamma +-U(0.5, 1.5), beta N(0, 0.5), mean N(0, 0.5), variance U(0.2, 2) (positive);
    biases N(0, 0.3) (folding must carry them); kernels keep their seeded initialization."""
    draw = {
        "gamma": lambda s: rng.uniform(0.5, 1.5, s) * rng.choice([-1.0, 1.0], s),
        "beta": lambda s: rng.normal(0, 0.5, s), "moving_mean": lambda s: rng.normal(0, 0.5, s),
        "moving_variance": lambda s: rng.uniform(0.2, 2.0, s), "bias": lambda s: rng.normal(0, 0.3, s),
    }
    for layer in model.layers:
        values = []
        for w in layer.weights:
            key = w.name.split("/")[-1].split(":")[0]
            values.append(draw[key](tuple(w.shape)).astype("float32") if key in draw else np.asarray(w.numpy()))
        if values:
            layer.set_weights(values)


def _as_list(y):
    return [np.asarray(o) for o in (y if isinstance(y, (list, tuple)) else [y])]


def assert_matches(got, want, what):
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (what, k, g.shape, w.shape)
        # float32 through folded kernels: tolerance relative to the output's scale
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{what}, output {k}")


def check_graph(g: Graph, fw: str, suffix: str, also_keras: bool, workdir) -> None:
    """Build ``g`` with ``fw``, save as ``suffix``, convert, compare with ``fw``'s inference."""
    import onnxruntime as ort

    import bnrewrite

    K = framework(fw)
    K.backend.clear_session()
    K.utils.set_random_seed(g.seed % 2**31)
    rng = np.random.default_rng(g.seed)
    model = build(K, g)
    randomize(model, rng)
    reference = build(K, g, flags=False)  # same architecture, no training= at any call
    reference.set_weights(model.get_weights())
    x = rng.normal(0, 1, (BATCH, *INPUTS[g.kind])).astype("float32")
    want = _as_list(reference.predict(x, verbose=0))

    src = workdir / f"{fw}{suffix}"
    model.save(src)
    what = f"{fw}{suffix} {g.describe()}"
    out = workdir / f"{fw}_{suffix[1:]}.onnx"
    rep = bnrewrite.convert(src, out)
    assert rep.ok and rep.verification["ok"], what
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert_matches(sess.run(None, {sess.get_inputs()[0].name: x}), want, f"onnx {what}")
    if also_keras:
        import keras

        kout = workdir / f"{fw}_{suffix[1:]}.out.keras"
        bnrewrite.convert(src, kout)
        loaded = keras.saving.load_model(kout, compile=False)
        assert_matches(_as_list(loaded.predict(x, verbose=0)), want, f"keras {what}")


def _run(g: Graph, keras_suffix: str, also_keras: bool, tmp_path_factory) -> None:
    # what the run covered (--hypothesis-show-statistics)
    event(f"input: {g.kind}")
    for op in sorted({op for op, _, _ in g.steps}):
        event(f"has {op}")
    for op, _, p in g.steps:
        if op in ("bn", "td_bn") and p[0] is not None:
            event(f"{op} called with training={p[0]}")
    workdir = tmp_path_factory.mktemp("prop")
    check_graph(g, "keras", keras_suffix, also_keras, workdir)
    check_graph(g, "tf_keras", ".h5", not also_keras, workdir)


_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def _examples(default: int) -> int:
    return int(os.environ.get("BNREWRITE_PROPERTY_EXAMPLES", default))


# Two fixed graphs make sure the short run covers every op, whatever hypothesis draws.
SEQ_EXAMPLE = Graph("seq", (
    ("conv1d", (0,), (6, 3, None, True)), ("bn", (1,), (True, 1e-3, True, True)),
    ("td_bn", (2,), (None, 1e-3)), ("act", (3,), ("relu",)), ("conv1d", (4,), (6, 1, None, False)),
    ("bn", (5,), (False, 1e-5, True, False)), ("add", (2, 6), ())), (7, 3), 17)
IMG_EXAMPLE = Graph("img", (
    ("conv2d", (0,), (4, 3, None, False)), ("bn", (1,), (None, 1e-3, True, True)),
    ("dwconv", (2,), (3, None, True)), ("td_bn", (3,), (True, 0.1)), ("concat", (4, 0), ()),
    ("dense", (5,), (3, "tanh", True)), ("bn", (6,), (True, 1e-3, False, True))), (7,), 23)


@settings(max_examples=_examples(5), deadline=None, derandomize=True, suppress_health_check=_HEALTH,
          database=None)
@given(g=graphs(), keras_suffix=st.sampled_from([".keras", ".h5"]), also_keras=st.booleans())
@example(g=SEQ_EXAMPLE, keras_suffix=".h5", also_keras=True)
@example(g=IMG_EXAMPLE, keras_suffix=".keras", also_keras=False)
def test_random_graphs(g, keras_suffix, also_keras, tmp_path_factory):
    _run(g, keras_suffix, also_keras, tmp_path_factory)


@pytest.mark.slow
@settings(max_examples=_examples(200), deadline=None, suppress_health_check=_HEALTH, database=None)
@given(g=graphs(), keras_suffix=st.sampled_from([".keras", ".h5"]), also_keras=st.booleans())
def test_random_graphs_long(g, keras_suffix, also_keras, tmp_path_factory):
    _run(g, keras_suffix, also_keras, tmp_path_factory)


def test_reference_differs_where_training_was_baked_in():
    """The subtlety above, checked once: with a BN called training=True, the framework's own
    predict (batch statistics) differs from the flag-free reference (moving statistics)."""
    for fw in ("keras", "tf_keras"):
        K = framework(fw)
        K.backend.clear_session()
        g = Graph("vec", (("dense", (0,), (4, None, True)), ("bn", (1,), (True, 1e-3, True, True))), (2,), 3)
        model = build(K, g)
        randomize(model, np.random.default_rng(3))
        reference = build(K, g, flags=False)
        reference.set_weights(model.get_weights())
        # moving statistics by hand (numpy), taken before any predict: a call with
        # training=True also updates them
        kernel, bias = model.get_layer("dense_1").get_weights()
        gamma, beta, mean, var = model.get_layer("bn_2").get_weights()
        x = np.random.default_rng(4).normal(0, 1, (BATCH, 6)).astype("float32")
        flagged, ref = model.predict(x, verbose=0), reference.predict(x, verbose=0)
        by_hand = gamma * ((x @ kernel + bias) - mean) / np.sqrt(var + 1e-3) + beta
        np.testing.assert_allclose(ref, by_hand, rtol=1e-4, atol=1e-4)
        if fw == "tf_keras":  # tf_keras honours the baked-in flag in predict (Keras 3 does not)
            assert np.abs(flagged - ref).max() > 1e-2
