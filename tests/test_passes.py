"""The rewrite passes (inference_mode, unwrap_timedistributed, fold_bn) and the
pass API, checked end to end through ``bnrewrite.convert``.

Every "same outputs" check compares with an independent reference: the writing
framework's own ``predict`` (tf_keras for ``.h5``, Keras 3 for ``.keras``),
recorded when the model was built (tests/passes_models.py). ONNX files are
opened with ``onnx.load`` and run with onnxruntime here, not through bnrewrite.
Models and conversions are built once per module and shared between tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import collections
import sys
from pathlib import Path

import numpy as np
import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import passes_models as pm  # noqa: E402

import bnrewrite  # noqa: E402
from bnrewrite.passes import (  # noqa: E402
    FoldBN, InferenceMode, Pass, PassContext, PassManager, UnwrapTimeDistributed, default_passes,
)

from conftest import ATOL, RTOL, assert_close  # noqa: E402,F401  (shared tolerance and check)


# ---------------------------------------------------------------- helpers

def assert_all_close(gots, wants, what=""):
    assert len(gots) == len(wants), f"{what}: {len(gots)} outputs, expected {len(wants)}"
    for i, (g, w) in enumerate(zip(gots, wants)):
        assert_close(g, w, f"{what} output {i}")


_SESSIONS: dict = {}


def onnx_session(path):
    import onnxruntime as ort

    key = str(path)
    if key not in _SESSIONS:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        _SESSIONS[key] = ort.InferenceSession(key, opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def run_onnx(path, feed: dict) -> list[np.ndarray]:
    sess = onnx_session(path)
    names = [i.name for i in sess.get_inputs()]
    assert set(names) == set(feed), f"ONNX inputs {names} != {sorted(feed)}"
    return sess.run(None, {n: feed[n] for n in names})


def onnx_ops(path) -> collections.Counter:
    """op_type -> count, read from the file itself."""
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def onnx_node_count(path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


def pass_entry(report, name):
    found = [p for p in report.passes if p["name"] == name]
    assert len(found) <= 1, report.passes
    return found[0] if found else None


def skipped_reason(entry, layer) -> str | None:
    for s in entry["skipped"]:
        if s["layer"] == layer:
            return s["reason"]
    return None


def keras_load(path):
    import keras

    return keras.saving.load_model(str(path), compile=False)


def keras_predict(model, xs):
    out = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def bn_layers(model):
    import keras

    return [l for l in pm.all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]


# ---------------------------------------------------------------- shared builds

class Store:
    """Builds each model once and runs each conversion once (failures are re-raised)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.models: dict = {}
        self.conversions: dict = {}

    def model(self, key: str, fw: str, make, seed: int, reference=None, keep=False):
        """``make(K)`` -> model; saved as ``<key><suffix>`` with its reference outputs."""
        if key not in self.models:
            K = pm.framework(fw)
            K.utils.set_random_seed(seed)
            model = make(K)
            ref = reference(K) if reference is not None else None
            saved = pm.save_with_reference(model, K, fw, self.dir / f"{key}{pm.FRAMEWORKS[fw][1]}", seed,
                                           reference=ref)
            self.models[key] = (saved, model if keep else None)
        return self.models[key]

    def convert(self, saved: pm.Saved, suffix: str, tag: str = "", **opts):
        key = (str(saved.path), suffix, tag)
        if key not in self.conversions:
            dst = self.dir / f"{saved.path.stem}.{tag or 'default'}{suffix}"
            try:
                self.conversions[key] = (bnrewrite.convert(saved.path, dst, force=True, **opts), dst)
            except BaseException as e:  # noqa: BLE001 - re-raised for each test asking
                self.conversions[key] = e
        got = self.conversions[key]
        if isinstance(got, BaseException):
            raise got
        return got


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("passes"))


# ====================================================================== 1 + 2
# TimeDistributed(BN), a BN called with training=True, Conv1D/Dense -> BN (tf.keras .h5)

def td_training(store, T):
    """(Saved, live training=True model); the reference is the same architecture
    without training=True, with the same weights."""
    return store.model(
        f"tk_td_training_T{T}", "tk", lambda K: pm.td_training(K, T, training=True), seed=100 + T,
        reference=lambda K: pm.td_training(K, T, training=False), keep=True,
    )


def test_models_have_randomized_bn_everywhere(store):
    """Guard: every BN, also inside (nested) TimeDistributed, got random statistics,
    so an export that dropped or mangled one would not match by luck."""
    expect = {
        "tk_td_training_T16": (td_training(store, 16)[0], {"td_bn_inner", "bn_train", "bn_fc"}),
        "tk_td_mix_T4": (td_mix_saved(store, "tk", 4), {"bn_inner2", "bn_inner"}),
        "k3_td_mix_T4": (td_mix_saved(store, "k3", 4), {"bn_inner2", "bn_inner"}),
    }
    for key, (saved, names) in expect.items():
        assert set(saved.bn_weights) == names, key
        for name, (gamma, beta, mean, var) in saved.bn_weights.items():
            assert np.all((gamma >= 0.5) & (gamma <= 1.5)) and np.all((var >= 0.5) & (var <= 2)), name
            assert np.abs(beta).max() > 0.05 and np.abs(mean).max() > 0.05, name
        assert all(np.all(np.isfinite(y)) for y in saved.ys)


@pytest.mark.parametrize("T", [16, 64])
def test_training_model_onnx_matches_inference_reference(store, T):
    saved, _ = td_training(store, T)
    rep, dst = store.convert(saved, ".onnx")
    assert rep.ok
    assert_all_close(run_onnx(dst, saved.feed()), saved.ys, f"T={T}")

    im = pass_entry(rep, "inference_mode")
    assert {"td_bn", "bn_train", "bn_fc"} <= set(im["changed"])
    assert pass_entry(rep, "unwrap_timedistributed")["changed"] == ["td_bn"]
    fold = pass_entry(rep, "fold_bn")
    assert set(fold["changed"]) == {"bn_train", "bn_fc"}
    assert "td_bn" in {s["layer"] for s in fold["skipped"]}  # fed by the input: nothing to fold into


@pytest.mark.parametrize("T", [16, 64])
def test_training_model_onnx_has_no_batch_statistics(store, T):
    saved, _ = td_training(store, T)
    _, dst = store.convert(saved, ".onnx")
    ops = onnx_ops(dst)
    assert "ReduceMean" not in ops, dict(ops)
    assert "BatchNormalization" not in ops, dict(ops)  # the two after Conv1D/Dense are folded
    assert "Loop" not in ops and "Scan" not in ops, dict(ops)


def test_training_model_onnx_size_independent_of_T(store):
    counts = {}
    for T in (16, 64):
        saved, _ = td_training(store, T)
        rep, dst = store.convert(saved, ".onnx")
        counts[T] = onnx_node_count(dst)
        assert rep.output["nodes"] == counts[T]
        assert sum(rep.output["ops"].values()) == counts[T]
    assert counts[16] == counts[64], counts


def test_training_model_onnx_is_batch_independent(store):
    saved, _ = td_training(store, 16)
    _, dst = store.convert(saved, ".onnx")
    (x,) = saved.xs
    (batch_out,) = run_onnx(dst, {"x": x})
    for i in range(len(x)):
        (alone,) = run_onnx(dst, {"x": x[i:i + 1]})
        assert_close(alone, batch_out[i:i + 1], f"sample {i} alone vs in the batch")
    # and a batch in another order gives the same per-sample answers
    perm = np.random.default_rng(0).permutation(len(x))
    (shuffled,) = run_onnx(dst, {"x": x[perm]})
    assert_close(shuffled, batch_out[perm], "shuffled batch")


def test_training_model_tf_keras_predict_depends_on_batch(store):
    """What was fixed: tf.keras itself runs the training=True BN on batch statistics."""
    saved, model = td_training(store, 16)
    (x,) = saved.xs
    in_batch = np.asarray(model.predict(x, verbose=0))
    diffs = [np.abs(np.asarray(model.predict(x[i:i + 1], verbose=0)) - in_batch[i:i + 1]).max()
             for i in range(len(x))]
    assert max(diffs) > 1e-2, diffs
    # ... and so differs from the inference-mode reference the ONNX file matches
    assert np.abs(in_batch - saved.ys[0]).max() > 1e-2


# ====================================================================== 3
# folding into each producer type, for files written by tf_keras and by keras

#: producers after which tf2onnx itself fuses the BN into the Conv when bnrewrite does not
#: (tf_keras models are exported as TF's own Conv/DepthwiseConv + FusedBatchNorm, which it fuses too)
TF2ONNX_FUSES = {"conv2d", "conv2d_nobias", "conv3d", "depthwise2d"}
FOLD_IDS = [(fw, kind) for fw in ("tk", "k3") for kind in pm.FOLD_CASES]


def fold_saved(store, fw, kind) -> pm.Saved:
    seed = 200 + list(pm.FOLD_CASES).index(kind) + (50 if fw == "k3" else 0)
    saved, _ = store.model(f"{fw}_fold_{kind}", fw, lambda K: pm.fold_model(K, kind), seed=seed)
    return saved


@pytest.mark.parametrize("fw,kind", FOLD_IDS)
def test_fold_onnx(store, fw, kind):
    saved = fold_saved(store, fw, kind)
    rep, dst = store.convert(saved, ".onnx")
    fold = pass_entry(rep, "fold_bn")
    assert fold["changed"] == ["bn"] and fold["skipped"] == [], fold
    assert_all_close(run_onnx(dst, saved.feed()), saved.ys, f"{fw} {kind} folded ONNX")
    ops = onnx_ops(dst)
    assert "BatchNormalization" not in ops, dict(ops)

    rep_nf, dst_nf = store.convert(saved, ".onnx", tag="nofold", fold=False)
    assert pass_entry(rep_nf, "fold_bn") is None
    assert_all_close(run_onnx(dst_nf, saved.feed()), saved.ys, f"{fw} {kind} unfolded ONNX")
    ops_nf = onnx_ops(dst_nf)
    if kind in TF2ONNX_FUSES and ops_nf == ops:
        # tf2onnx's optimizer fuses a Conv + BatchNormalization (4D/5D) on its own, so
        # the unfolded ONNX file is the same size; the .keras test shows bnrewrite folded it.
        assert onnx_node_count(dst) == onnx_node_count(dst_nf)
    else:
        assert onnx_node_count(dst) < onnx_node_count(dst_nf), (dict(ops), dict(ops_nf))


@pytest.mark.parametrize("fw,kind", FOLD_IDS)
def test_fold_keras(store, fw, kind):
    saved = fold_saved(store, fw, kind)
    rep, dst = store.convert(saved, ".keras")
    assert pass_entry(rep, "fold_bn")["changed"] == ["bn"]
    model = keras_load(dst)
    assert bn_layers(model) == []
    assert_all_close(keras_predict(model, saved.xs), saved.ys, f"{fw} {kind} folded .keras")

    prod = model.get_layer("prod")
    assert type(prod).__name__ == pm.FOLD_CLASS[kind]
    assert prod.use_bias, "the fold gives the producer a bias"
    kernel, bias = (np.asarray(w) for w in prod.get_weights())
    assert bias.ndim == 1 and np.abs(bias).max() > 1e-3  # BN's shift moved into the bias
    assert bias.size == saved.bn_weights["bn"][0].size  # one per output channel


def test_fold_adds_bias_to_bias_free_producer(store):
    """use_bias=False producers: the folded bias is exactly beta - mean * s (numpy)."""
    for fw, kind in [("tk", "dense_nobias"), ("k3", "conv2d_nobias")]:
        saved = fold_saved(store, fw, kind)
        _, dst = store.convert(saved, ".keras")
        gamma, beta, mean, var = (w.astype(np.float64) for w in saved.bn_weights["bn"])
        s = gamma / np.sqrt(var + 1e-3)
        _, bias = keras_load(dst).get_layer("prod").get_weights()
        np.testing.assert_allclose(bias, beta - mean * s, atol=1e-5, err_msg=f"{fw} {kind}")


# ====================================================================== 4
# BNs that must stay unfolded

def negatives_saved(store, fw) -> pm.Saved:
    saved, _ = store.model(f"{fw}_negatives", fw, pm.negatives_model, seed=300 + (50 if fw == "k3" else 0))
    return saved


@pytest.mark.parametrize("fw", ["tk", "k3"])
def test_unsafe_folds_skipped_with_reason(store, fw):
    saved = negatives_saved(store, fw)
    rep, dst = store.convert(saved, ".onnx")
    fold = pass_entry(rep, "fold_bn")
    assert fold["changed"] == []
    for layer, words in pm.NEGATIVE_REASONS.items():
        reason = skipped_reason(fold, layer)
        assert reason is not None, f"{layer} not in skipped: {fold['skipped']}"
        for w in words:
            assert w in reason, f"{layer}: {reason!r} lacks {w!r}"
    assert_all_close(run_onnx(dst, saved.feed()), saved.ys, f"{fw} negatives ONNX")


@pytest.mark.parametrize("fw", ["tk", "k3"])
def test_unsafe_folds_leave_graph_untouched(store, fw):
    """Run the default passes on the graph: the BNs stay, the producers' weights are unchanged."""
    saved = negatives_saved(store, fw)
    mg = bnrewrite.load(saved.path)
    before = {n: {k: v.copy() for k, v in mg.layer(n).weights.items()}
              for n in ("conv_relu", "conv_twice", "conv_axis", "fc_seq")}
    PassManager(default_passes()).run(mg, PassContext())
    assert set(pm.NEGATIVE_REASONS) <= set(mg.bn_nodes())
    for n, ws in before.items():
        assert mg.layer(n).config.get("use_bias", True)
        for k, v in ws.items():
            np.testing.assert_array_equal(mg.layer(n).weights[k], v, err_msg=f"{n}.{k}")
    for bn, prod in [("bn_after_relu", "conv_relu"), ("bn_branch", "conv_twice"),
                     ("bn_axis1", "conv_axis"), ("bn_time", "fc_seq")]:
        assert mg.inbound(bn) == [(prod, 0)]


# ====================================================================== 5
# unwrap_timedistributed

def td_mix_saved(store, fw, T) -> pm.Saved:
    seed = 400 + T + (50 if fw == "k3" else 0)
    saved, _ = store.model(f"{fw}_td_mix_T{T}", fw, lambda K: pm.td_mix(K, T), seed=seed)
    return saved


@pytest.mark.parametrize("fw,T", [("tk", 4), ("tk", 16), ("k3", 4), ("k3", 16)])
def test_unwrap_td_onnx_matches_framework(store, fw, T):
    saved = td_mix_saved(store, fw, T)
    rep, dst = store.convert(saved, ".onnx")
    assert_all_close(run_onnx(dst, saved.feed()), saved.ys, f"{fw} td_mix T={T}")
    unwrap = pass_entry(rep, "unwrap_timedistributed")
    # tf_keras runs TimeDistributed as one reshape: only what a BN gains from is unwrapped there
    kept = {"td_flat"} if fw == "tk" else set()
    assert set(unwrap["changed"]) == set(pm.TD_LAYERS) - kept
    assert {s["layer"] for s in unwrap["skipped"]} == kept
    assert all("tf_keras runs TimeDistributed" in s["reason"] for s in unwrap["skipped"])
    # the unwrapped TimeDistributed(BN) now follows a plain Dense and folds into it
    assert "td_bn" in pass_entry(rep, "fold_bn")["changed"]
    ops = onnx_ops(dst)
    assert "Loop" not in ops and "Scan" not in ops, dict(ops)


@pytest.mark.parametrize("fw", ["tk", "k3"])
def test_unwrap_td_onnx_size_independent_of_T(store, fw):
    counts = {T: onnx_node_count(store.convert(td_mix_saved(store, fw, T), ".onnx")[1]) for T in (4, 16)}
    assert counts[4] == counts[16], counts


@pytest.mark.parametrize("fw", ["tk", "k3"])
def test_keep_timedistributed_keras(store, fw):
    saved = td_mix_saved(store, fw, 4)
    rep, dst = store.convert(saved, ".keras", tag="keeptd", keep_timedistributed=True)
    entry = pass_entry(rep, "unwrap_timedistributed")
    assert entry is None or entry["changed"] == []
    model = keras_load(dst)
    wrapped = {l.name for l in model.layers if type(l).__name__ == "TimeDistributed"}
    assert wrapped == set(pm.TD_LAYERS)
    assert_all_close(keras_predict(model, saved.xs), saved.ys, f"{fw} keep_timedistributed .keras")


def test_keep_timedistributed_onnx(store):
    saved = td_mix_saved(store, "tk", 4)
    rep, dst = store.convert(saved, ".onnx", tag="keeptd", keep_timedistributed=True)
    entry = pass_entry(rep, "unwrap_timedistributed")
    assert entry is None or entry["changed"] == []
    assert rep.verification["ok"]
    assert_all_close(run_onnx(dst, saved.feed()), saved.ys, "tk keep_timedistributed ONNX")
    # contrast: the wrapped export is bigger than the unwrapped one
    assert onnx_node_count(dst) > onnx_node_count(store.convert(saved, ".onnx")[1])




def test_keras3_h5_output_keeps_wrappers_that_need_reshapes(store):
    """Keras 3's .h5 stores no op nodes: for that output a wrapper whose unwrapping needs reshapes
    is kept, with the reason, instead of failing the write; wrappers that need none (a BN) are still
    unwrapped, and the reloaded file matches Keras 3's predict of the original."""
    saved = td_mix_saved(store, "k3", 4)
    rep, dst = store.convert(saved, ".h5", tag="k3h5")
    entry = pass_entry(rep, "unwrap_timedistributed")
    kept = {s["layer"] for s in entry["skipped"]}
    assert kept and set(entry["changed"]) | kept == set(pm.TD_LAYERS) and "td_bn" in entry["changed"]
    assert all("Keras 3's .h5 format cannot store" in s["reason"] for s in entry["skipped"])
    assert_all_close(keras_predict(keras_load(dst), saved.xs), saved.ys, "k3 td_mix .h5")


@pytest.mark.parametrize("fw", ["tk", "k3"])
def test_unwrap_nested_td_td_bn_4d(store, fw):
    """TimeDistributed(TimeDistributed(BN)) on (B, T, S, F)."""
    def make(K):
        L = K.layers
        inp = L.Input((3, 4, 2), name="x")
        y = L.TimeDistributed(L.TimeDistributed(L.BatchNormalization(name="bn_in"), name="mid"),
                              name="tdtd")(inp)
        return K.Model(inp, y, name="tdtd")

    saved, _ = store.model(f"{fw}_tdtd4d", fw, make, seed=450 + (50 if fw == "k3" else 0))
    rep, dst = store.convert(saved, ".onnx")
    assert pass_entry(rep, "unwrap_timedistributed")["changed"] == ["tdtd"]
    assert_all_close(run_onnx(dst, saved.feed()), saved.ys, f"{fw} TD(TD(BN))")


@pytest.mark.parametrize("fw", ["tk", "k3"])
def test_unwrap_skips_td_lstm(store, fw):
    saved, _ = store.model(f"{fw}_td_lstm", fw, pm.td_lstm, seed=470 + (50 if fw == "k3" else 0))
    mg = bnrewrite.load(saved.path)
    (res,) = PassManager([UnwrapTimeDistributed()]).run(mg, PassContext())
    assert res.name == "unwrap_timedistributed"
    assert res.changed == []
    reason = skipped_reason(res.to_dict(), "td_lstm")
    assert reason and "LSTM" in reason, res.skipped
    assert mg.layer("td_lstm").class_name == "TimeDistributed"
    assert mg.inbound("bn_after") == [("td_lstm", 0)]


@pytest.fixture(scope="module")
def open_time_td(tmp_path_factory):
    """Keras 3: frames of open length (None, 8, 8, 2) through TimeDistributed Conv2D -> BN -> relu ->
    MaxPooling2D -> Flatten, mean over time, Dense; random BN statistics. Keras 3 runs these wrappers
    as a vectorized_map (the time length is unknown), which tf2onnx exports as a pfor loop."""
    import keras

    L = keras.layers
    x = keras.Input((None, 8, 8, 2), name="frames")
    h = L.TimeDistributed(L.Conv2D(4, 3, padding="same"), name="td_conv")(x)
    h = L.TimeDistributed(L.BatchNormalization(), name="td_bn")(h)
    h = L.TimeDistributed(L.Activation("relu"), name="td_act")(h)
    h = L.TimeDistributed(L.MaxPooling2D(2), name="td_pool")(h)
    h = L.TimeDistributed(L.Flatten(), name="td_flat")(h)
    y = L.Dense(3, name="out")(L.GlobalAveragePooling1D(name="time_mean")(h))
    m = keras.Model(x, y)
    pm.randomize_bn(m, keras, np.random.default_rng(481))
    path = tmp_path_factory.mktemp("open_time") / "open_time_td.keras"
    m.save(path)
    return path, m


def test_unwrap_open_time_length_for_onnx(open_time_td, tmp_path):
    """ONNX output: the wrappers are unwrapped although T is unknown -- the reshape back reads B
    and T at run time -- and the BN folds into the conv through it; onnxruntime matches Keras's own
    predict at several time lengths. Keras output: the wrappers stay (a .keras file could not store
    the run-time reshape), with the reason, and Keras matches too."""
    import keras

    path, m = open_time_td
    dst = tmp_path / "open_time.onnx"
    rep = bnrewrite.convert(path, dst)
    unwrap = pass_entry(rep, "unwrap_timedistributed")
    assert {"td_conv", "td_bn", "td_pool", "td_flat"} <= set(unwrap["changed"]), unwrap
    assert pass_entry(rep, "fold_bn")["changed"] == ["td_bn"]
    ops = onnx_ops(dst)
    assert "Loop" not in ops and "BatchNormalization" not in ops, dict(ops)
    rng = np.random.default_rng(482)
    for T in (1, 3, 6):
        xs = rng.normal(size=(2, T, 8, 8, 2)).astype("float32")
        # Keras called eagerly: its predict() retraced for a new T returns wrong values for these wrappers
        assert_all_close(run_onnx(dst, {"frames": xs}), [np.asarray(m(xs, training=False))], f"open-time TD, T={T}")

    # AdaBN through the run-time reshape: the BN's statistics over batch, time and space of the conv
    # output (Keras's own sub-model, numpy moments), put into Keras's model, match the calibrated ONNX
    data = rng.normal(0.3, 1.5, (40, 5, 8, 8, 2)).astype("float32")
    conv_out = np.asarray(keras.Model(m.inputs, m.get_layer("td_conv").output)(data, training=False), np.float64)
    mean, var = conv_out.mean(axis=(0, 1, 2, 3)), conv_out.var(axis=(0, 1, 2, 3), ddof=1)
    ref = keras.models.clone_model(m)
    ref.set_weights(m.get_weights())
    bn = ref.get_layer("td_bn").layer
    bn.moving_mean.assign(mean.astype("float32"))
    bn.moving_variance.assign(var.astype("float32"))
    cal = tmp_path / "open_time_calibrated.onnx"
    rep_c = bnrewrite.convert(path, cal, calibration=data, batch_size=16)
    assert rep_c.calibration["layers"][0]["values_per_channel"] == 40 * 5 * 8 * 8
    xs = rng.normal(size=(3, 4, 8, 8, 2)).astype("float32")
    assert_all_close(run_onnx(cal, {"frames": xs}), [np.asarray(ref(xs, training=False))], "calibrated open-time TD")

    rep_k = bnrewrite.convert(path, tmp_path / "open_time.keras")
    reason = skipped_reason(pass_entry(rep_k, "unwrap_timedistributed"), "td_conv")
    assert reason and "time length" in reason and "unknown" in reason
    assert rep_k.verification["ok"]

    # AdaBN with the wrappers kept (.keras output): calibration traces each level for the data's time
    # length (Keras 3's TimeDistributed fails in a graph where it is open); Keras reads numpy's statistics
    kept = tmp_path / "open_time_calibrated.keras"
    bnrewrite.convert(path, kept, calibration=data, batch_size=16, fold=False)
    got = keras.saving.load_model(kept).get_layer("td_bn")  # unwrapped: BN needs no reshape
    np.testing.assert_allclose(np.asarray(got.moving_mean), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.moving_variance), var, rtol=1e-5, atol=1e-5)


# ====================================================================== 6
# inference_mode: frozen BN in the .keras output

def test_inference_mode_keras_output_frozen(store):
    saved, _ = td_training(store, 16)
    rep, dst = store.convert(saved, ".keras")
    model = keras_load(dst)
    bns = bn_layers(model)
    assert [l.name for l in bns] == ["td_bn"]  # bn_train and bn_fc were folded
    assert all(not l.trainable for l in bns)
    assert_all_close(keras_predict(model, saved.xs), saved.ys, ".keras vs inference reference")
    # frozen: even a training-mode call uses the moving statistics
    import keras

    out = keras.ops.convert_to_numpy(model(saved.xs[0], training=True))
    assert_close(out, saved.ys[0], ".keras called with training=True")


def test_inference_mode_keep_trainable(store):
    saved, _ = td_training(store, 16)
    rep, dst = store.convert(saved, ".keras", tag="keeptrain", keep_trainable=True)
    fold = pass_entry(rep, "fold_bn")
    assert fold["changed"] == []
    assert all("keep-trainable" in s["reason"] for s in fold["skipped"]), fold["skipped"]
    model = keras_load(dst)
    bns = bn_layers(model)
    assert sorted(l.name for l in bns) == ["bn_fc", "bn_train", "td_bn"]
    assert all(l.trainable for l in bns)
    assert_all_close(keras_predict(model, saved.xs), saved.ys, "keep_trainable .keras predict")


def test_explicit_passes_take_their_options_when_constructed(store, tmp_path):
    """``keep_trainable`` given to the passes themselves does what ``keep_trainable=True`` does for
    the default pipeline; given to convert beside an explicit list it is refused, not ignored."""
    saved, _ = td_training(store, 16)
    rep, dst = store.convert(saved, ".keras", tag="keeptrain-explicit",
                             passes=[InferenceMode(keep_trainable=True), UnwrapTimeDistributed(),
                                     FoldBN(keep_trainable=True)])
    assert pass_entry(rep, "fold_bn")["changed"] == []
    model = keras_load(dst)
    bns = bn_layers(model)
    assert sorted(l.name for l in bns) == ["bn_fc", "bn_train", "td_bn"] and all(l.trainable for l in bns)
    assert_all_close(keras_predict(model, saved.xs), saved.ys, "explicit keep_trainable .keras predict")

    out = tmp_path / "refused.onnx"
    for opts, named in (({"keep_trainable": True}, "keep_trainable"), ({"fold": False}, "fold"),
                        ({"calibration": saved.xs[0], "keep_timedistributed": True},
                         "keep_timedistributed, calibration")):
        with pytest.raises(bnrewrite.InputError, match=f"^{named} configure.*FoldBN\\(keep_trainable=True\\)"):
            bnrewrite.convert(saved.path, out, passes=[InferenceMode(), FoldBN()], **opts)
        assert not out.exists()


def test_inference_mode_freezes_nested_td_bn(store):
    """A BN inside TimeDistributed(TimeDistributed(...)) is frozen like any other."""
    saved = td_mix_saved(store, "k3", 4)
    # without folding: folded, td_td_bn goes into the conv (through the time reshape), td_bn into the Dense
    rep, dst = store.convert(saved, ".keras", tag="nofold", fold=False)
    model = keras_load(dst)
    bns = bn_layers(model)
    assert [l.name for l in bns] == ["td_td_bn", "td_bn"]
    assert_all_close(keras_predict(model, saved.xs), saved.ys, "td_mix .keras")
    assert all(not l.trainable for l in bns), [(l.name, l.trainable) for l in bns]
    assert "td_td_bn" in pass_entry(rep, "inference_mode")["changed"]


# ====================================================================== 7
# custom pass lists

class RecordBN(Pass):
    """Records the BN calls it sees; changes nothing."""

    name = "record_bn"

    def __init__(self):
        self.seen = []

    def candidates(self, mg):
        return [n for n in mg.topo() if mg.layer(n).is_bn()]

    def check(self, mg, node, ctx):
        self.seen.append(node)
        return None

    def rewrite(self, mg, node, ctx):
        return []


class NegateBN(Pass):
    """Negates gamma and beta: the BN's output changes sign."""

    name = "negate_bn"
    changes_function = True  # on purpose: verified against the rewritten model

    def candidates(self, mg):
        return [n for n in mg.topo() if mg.layer(n).is_bn()]

    def check(self, mg, node, ctx):
        return None if mg.layer(node).name == "bn" else "not the BN under test"

    def rewrite(self, mg, node, ctx):
        w = mg.layer(node).weights
        w["gamma"] = -w["gamma"]
        w["beta"] = -w["beta"]
        return [mg.layer(node).name]


def test_empty_pass_list_keeps_bn(store):
    # Dense -> BN: tf2onnx does not fuse this BN on its own (it does after Conv2D/Conv3D)
    saved = fold_saved(store, "tk", "dense")
    rep, dst = store.convert(saved, ".onnx", tag="nopasses", passes=[])
    assert rep.passes == []
    ops = onnx_ops(dst)
    assert "BatchNormalization" in ops or ("Mul" in ops and "Add" in ops), dict(ops)
    assert_all_close(run_onnx(dst, saved.feed()), saved.ys, "passes=[] ONNX")
    assert onnx_node_count(dst) > onnx_node_count(store.convert(saved, ".onnx")[1])

    rep_k, dst_k = store.convert(saved, ".keras", tag="nopasses", passes=[])
    assert rep_k.passes == []
    model = keras_load(dst_k)
    assert [l.name for l in bn_layers(model)] == ["bn"]
    assert model.get_layer("bn").trainable  # inference_mode did not run either
    assert_all_close(keras_predict(model, saved.xs), saved.ys, "passes=[] .keras")


def test_user_defined_passes_run_in_order(store):
    saved = fold_saved(store, "tk", "dense")
    rec = RecordBN()
    rep, dst = store.convert(saved, ".onnx", tag="custom", passes=[rec, NegateBN(), InferenceMode(), FoldBN()])
    assert [p["name"] for p in rep.passes] == ["record_bn", "negate_bn", "inference_mode", "fold_bn"]
    assert rec.seen == ["bn"]
    assert pass_entry(rep, "record_bn") == {"name": "record_bn", "changed": [], "skipped": []}
    assert pass_entry(rep, "negate_bn")["changed"] == ["bn"]
    assert pass_entry(rep, "fold_bn")["changed"] == ["bn"]
    ops = onnx_ops(dst)
    assert "BatchNormalization" not in ops and "Mul" not in ops, dict(ops)
    # y = tanh(BN(x)); negating gamma and beta negates BN(x), and tanh is odd
    assert_all_close(run_onnx(dst, saved.feed()), [-y for y in saved.ys], "negated BN")
    assert rep.verification["no_reference"] and "negate_bn" in rep.verification["no_reference"]


def test_function_changing_pass_without_the_flag_fails_verification(store):
    """A pass that changes the model's function without saying so is caught: the output is
    compared with the original model (exit 3), not with bnrewrite's own rewrite."""

    class SilentNegate(NegateBN):
        changes_function = False

    saved = fold_saved(store, "tk", "dense")
    with pytest.raises(bnrewrite.VerificationError, match="differs from the original model"):
        store.convert(saved, ".onnx", tag="silent", passes=[SilentNegate(), InferenceMode(), FoldBN()])


def test_user_pass_skip_reason_reported(store):
    saved = negatives_saved(store, "tk")
    mg = bnrewrite.load(saved.path)
    (res,) = PassManager([NegateBN()]).run(mg, PassContext())
    assert res.changed == []
    assert {s["layer"] for s in res.skipped} == set(pm.NEGATIVE_REASONS)
    assert all(s["reason"] == "not the BN under test" for s in res.skipped)


def test_pass_manager_rejects_non_pass():
    with pytest.raises(TypeError):
        PassManager([object()]).run(bnrewrite.ModelGraph())


def test_empty_kernel_not_folded(tmp_path):
    """A Dense on a zero-width slice (TabNet with feature_dim == output_dim) has an empty kernel: folding
    would give it a bias, and TensorFlow's oneDNN aborts the process on a K=0 MatMul + BiasAdd in graph
    mode. The BN stays, with the reason."""
    import tf_keras

    i = tf_keras.Input((4,))
    e = tf_keras.layers.Dense(3, use_bias=False, name="fc_empty")(i[:, 4:])
    m = tf_keras.Model(i, tf_keras.layers.BatchNormalization(name="bn_empty")(e))
    m.save(tmp_path / "e.h5")
    mg = bnrewrite.load(tmp_path / "e.h5")
    PassManager(default_passes()).run(mg, PassContext())
    assert "bn_empty" in mg.bn_nodes()
    assert not mg.layer("fc_empty").config.get("use_bias")


def test_saturated_model_verified_on_scaled_inputs(tmp_path):
    """A sigmoid that is exactly 1 on unit-variance inputs (a real wake-word model of mlcommons/tiny gave
    softmax [0, 0, 1] for every sample) makes every output the same for every sample: a comparison of
    constants, which a wrong fold would pass. Verification scales the seeded inputs until the outputs
    vary, and says so; a model whose outputs never vary gets a warning in the report."""
    import tf_keras

    L = tf_keras.layers
    i = tf_keras.Input((4,))
    a = L.ReLU()(L.BatchNormalization(name="bn")(L.Dense(2, name="fa")(i)))
    b = L.ReLU()(L.Dense(2, name="fb")(i))
    y = L.Activation("sigmoid")(L.Dense(2, name="head")(L.Add()([a, b])))  # sigmoid(|Wx|-ish - 5)
    m = tf_keras.Model(i, y)
    w = np.array([[900., -700.], [-500., 800.], [650., 400.], [-300., -900.]], np.float32)
    m.get_layer("fa").set_weights([w, np.zeros(2, np.float32)])
    m.get_layer("fb").set_weights([-w, np.zeros(2, np.float32)])
    m.get_layer("head").set_weights([np.eye(2, dtype=np.float32), np.full(2, -5.0, np.float32)])
    m.get_layer("bn").set_weights([np.array(v, np.float32) for v in ([1.2, .8], [.1, -.2], [.5, -1.], [.8, 1.5])])
    m.save(tmp_path / "sat.h5")
    rep = bnrewrite.convert(tmp_path / "sat.h5", tmp_path / "sat.onnx")
    v = rep.verification
    assert v["ok"] and v["input_scale"] in (0.1, 0.01, 0.001) and not v["constant_outputs"], v
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32) * v["input_scale"]
    got = run_onnx(tmp_path / "sat.onnx", {onnx_session(tmp_path / "sat.onnx").get_inputs()[0].name: x})[0]
    want = tf_keras.models.load_model(tmp_path / "sat.h5", compile=False)(x, training=False).numpy()
    assert np.ptp(want, axis=0).max() > 1e-3  # the scaled inputs reach the model's working range
    assert_close(got, want, "saturated")

    z = tf_keras.Model(i, L.BatchNormalization(name="bn0")(L.Dense(3, kernel_initializer="zeros")(i)))
    z.save(tmp_path / "const.h5")
    rep = bnrewrite.convert(tmp_path / "const.h5", tmp_path / "const.onnx")
    assert rep.verification["ok"] and rep.verification["constant_outputs"]
