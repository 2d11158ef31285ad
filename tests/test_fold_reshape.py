"""fold_bn through a Reshape: conv -> reshape -> BN folds when the reshape keeps the
channel (last) axis, as unwrapping ``TimeDistributed(Conv2D) -> TimeDistributed(BN)``
leaves it; reshapes that move the channel axis are skipped with the reason.

References are the writing framework's own ``predict`` (tests/passes_models.py);
ONNX files are run with onnxruntime here.
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
from conftest import assert_close  # noqa: E402


def td_conv_bn(K):
    """TimeDistributed(Conv2D) -> TimeDistributed(BN): the BN reads the time-split reshape."""
    L = K.layers
    inp = L.Input((6, 5, 5, 3), name="frames")
    x = L.TimeDistributed(L.Conv2D(4, 3, padding="same", use_bias=False, name="conv"), name="td_conv")(inp)
    x = L.TimeDistributed(L.BatchNormalization(name="bn"), name="td_bn")(x)
    x = L.TimeDistributed(L.ReLU(name="relu"), name="td_relu")(x)
    return K.Model(inp, x, name="td_conv_bn")


def reshape_cases(K):
    """conv -> Reshape keeping C -> BN (folds); conv -> Reshape merging C -> BN (skipped);
    conv -> Reshape -> BN with the reshape also read elsewhere (skipped)."""
    L = K.layers
    inp = L.Input((4, 4, 3), name="image")
    a = L.Conv2D(5, 3, padding="same", name="conv_keep")(inp)
    a = L.Reshape((16, 5), name="rs_keep")(a)
    a = L.BatchNormalization(name="bn_keep")(a)
    b = L.Conv2D(4, 3, padding="same", name="conv_merge")(inp)
    b = L.Reshape((4, 16), name="rs_merge")(b)
    b = L.BatchNormalization(name="bn_merge")(b)
    c = L.Conv2D(5, 3, padding="same", name="conv_twice")(inp)
    c_rs = L.Reshape((16, 5), name="rs_twice")(c)
    c = L.BatchNormalization(name="bn_twice")(c_rs)
    c = L.Add(name="add_twice")([c, c_rs])
    return K.Model(inp, [a, b, c], name="reshape_cases")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("fold_reshape")


def build(tmp, key, fw, make, seed):
    K = pm.framework(fw)
    K.utils.set_random_seed(seed)
    return pm.save_with_reference(make(K), K, fw, tmp / f"{key}{pm.FRAMEWORKS[fw][1]}", seed)


def run_onnx(path, saved):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, saved.feed())


def fold_entry(rep):
    (entry,) = [p for p in rep.passes if p["name"] == "fold_bn"]
    return entry


@pytest.mark.parametrize("fw", ["tk", "k3"])
def test_td_conv_bn_folds_through_time_reshape(tmp, fw):
    saved = build(tmp, f"{fw}_td_conv_bn", fw, td_conv_bn, seed=31)
    dst = tmp / f"{fw}_td_conv_bn.onnx"
    rep = bnrewrite.convert(saved.path, dst, force=True)
    assert fold_entry(rep)["changed"] == ["td_bn"], rep.passes
    import onnx

    ops = collections.Counter(n.op_type for n in onnx.load(str(dst)).graph.node)
    assert "BatchNormalization" not in ops and "Mul" not in ops, dict(ops)  # the BN is in the conv now
    for g, w in zip(run_onnx(dst, saved), saved.ys):
        assert_close(g, w, f"{fw} folded through the time reshape")
    # and in Keras: the conv got the BN's scale and shift as kernel and bias
    kdst = tmp / f"{fw}_td_conv_bn.folded.keras"
    bnrewrite.convert(saved.path, kdst, force=True)
    import keras

    model = keras.saving.load_model(str(kdst), compile=False)
    assert not [l for l in pm.all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    assert_close(model.predict(saved.xs[0], verbose=0), saved.ys[0], f"{fw} folded .keras")


@pytest.mark.parametrize("fw", ["tk", "k3"])
def test_reshape_that_moves_the_channel_is_not_folded(tmp, fw):
    saved = build(tmp, f"{fw}_reshape_cases", fw, reshape_cases, seed=32)
    dst = tmp / f"{fw}_reshape_cases.onnx"
    rep = bnrewrite.convert(saved.path, dst, force=True)
    fold = fold_entry(rep)
    assert fold["changed"] == ["bn_keep"], fold
    reasons = {s["layer"]: s["reason"] for s in fold["skipped"]}
    assert "does not keep the channel axis" in reasons["bn_merge"], reasons
    assert "also used elsewhere" in reasons["bn_twice"], reasons
    for i, (g, w) in enumerate(zip(run_onnx(dst, saved), saved.ys)):
        assert_close(g, w, f"{fw} reshape cases output {i}")


def test_fold_needs_no_trace_for_conv_and_last_axis(tmp, monkeypatch):
    """Conv producers and BNs on the last axis fold without the symbolic shape trace."""
    from bnrewrite.passes import fold_bn

    saved = build(tmp, "k3_fold_conv", "k3", lambda K: pm.fold_model(K, "conv2d"), seed=33)
    calls = []
    real = fold_bn.FoldBN.run

    def spy(self, mg, ctx):
        result = real(self, mg, ctx)
        calls.append(self._shapes is not None)
        return result

    monkeypatch.setattr(fold_bn.FoldBN, "run", spy)
    rep = bnrewrite.convert(saved.path, tmp / "k3_fold_conv.onnx", force=True)
    assert fold_entry(rep)["changed"] == ["bn"]
    assert calls == [False], "fold_bn traced the model although no shape was needed"
    assert rep.verification["ok"] and rep.verification["max_abs"] < 1e-4
