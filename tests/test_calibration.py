"""AdaBN calibration (``convert --calibration``, ``calibration=``).

References are independent of bnrewrite: numpy statistics of the data, a numpy
forward pass, or an exact layer-by-layer re-estimation done in the framework
that wrote the model (predict each BN's input with a sub-model, set that BN's
statistics from numpy float64 moments, go on to the next BN).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import models
from conftest import ROOT, assert_close
from test_cli import assert_one_line_error, run_cli

FIX = ROOT / "fixtures"


# ----------------------------------------------------------------- helpers
def ort_run(path, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if not isinstance(feed, dict):
        feed = {sess.get_inputs()[0].name: feed}
    return sess.run(None, feed)


def keras_bn_stats(path, name):
    """(moving_mean, moving_variance) of BN ``name`` in a written .keras file, loaded by Keras itself."""
    import keras

    m = keras.saving.load_model(str(path), compile=False)
    lay = m.get_layer(name)
    return np.asarray(lay.moving_mean), np.asarray(lay.moving_variance)


def numpy_moments(x, axis, ddof=1):
    x = np.asarray(x, np.float64)
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return x.mean(axes), x.var(axes, ddof=ddof)


def adabn_reference(model, K, data, bn_layers, ddof=1):
    """Exact layer-by-layer AdaBN in the writing framework, in place.

    ``bn_layers``: (BN layer, the model whose inputs feed it) in topological order; each BN's input is predicted over ``data`` with
    the statistics set so far, then its statistics are set from numpy moments.
    """
    for bn, owner in bn_layers:
        xs = K.Model(owner.inputs, bn.input).predict(data, batch_size=256, verbose=0)
        inner = getattr(bn, "layer", bn)  # TimeDistributed(BN): the wrapped BN
        axis = inner.axis[0] if isinstance(inner.axis, (list, tuple)) else inner.axis
        rank = np.ndim(xs)
        axis = axis % (rank - (1 if inner is not bn else 0)) + (1 if inner is not bn else 0)
        mean, var = numpy_moments(xs, axis, ddof)
        w = bn.get_weights()
        keys = [v.name.split("/")[-1].split(":")[0] for v in bn.weights]
        w[keys.index("moving_mean")] = mean.astype("float32")
        w[keys.index("moving_variance")] = var.astype("float32")
        bn.set_weights(w)


# ----------------------------------------------------------------- models
def _residual(K, rng):
    """Conv block with a projection shortcut, BNs at levels 0, 0, 1, 2 and a skip across levels."""
    x = K.Input((10, 10, 3), name="img")
    a = K.layers.Conv2D(6, 3, padding="same", name="conv_a")(x)
    a = K.layers.BatchNormalization(name="bn_a")(a)
    a = K.layers.ReLU(name="relu_a")(a)
    a = K.layers.DepthwiseConv2D(3, padding="same", name="dw_b")(a)
    a = K.layers.BatchNormalization(name="bn_b")(a)
    a = K.layers.ReLU(name="relu_b")(a)
    s = K.layers.Conv2D(6, 1, name="conv_s")(x)
    s = K.layers.BatchNormalization(name="bn_s")(s)
    h = K.layers.Add(name="add")([a, s])
    h = K.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_c")(h)
    h = K.layers.BatchNormalization(name="bn_c")(h)
    h = K.layers.GlobalAveragePooling2D(name="gap")(h)
    y = K.layers.Dense(3, name="out")(h)
    m = K.Model(x, y)
    models.randomize_bn(m, K, rng)
    return m


def _chain3(K, rng):
    """x(6) -> Dense(8) -> bn1 -> relu -> Dense(6) -> bn2 -> relu -> Dense(5) -> bn3: three levels, each
    BN's input read by the next level only (the cache's batch-by-batch release is visible in its peak)."""
    x = K.Input((6,), name="x")
    h = x
    for i, width in enumerate((8, 6, 5), 1):
        h = K.layers.Dense(width, name=f"d{i}")(h)
        h = K.layers.BatchNormalization(name=f"bn{i}")(h)
        if i < 3:
            h = K.layers.ReLU(name=f"relu{i}")(h)
    m = K.Model(x, h)
    models.randomize_bn(m, K, rng)
    return m


def _shared(K, rng):
    """One BN shared by two parallel branches (same level) and one called twice in a chain."""
    a = K.Input((4,), name="a")
    b = K.Input((4,), name="b")
    shared = K.layers.BatchNormalization(name="bn_shared")
    chain = K.layers.BatchNormalization(name="bn_chain")
    d = K.layers.Dense(4, name="mix")
    ya = shared(a)
    yb = shared(b)
    c = chain(d(K.layers.Add(name="add")([ya, yb])))
    c = chain(d(c))
    m = K.Model([a, b], c)
    models.randomize_bn(m, K, rng)
    return m


@pytest.fixture(scope="session")
def calib_models(tmp_path_factory):
    """Keras 3 test models as .keras files: {name: (path, model)}."""
    K = models.framework("keras")
    d = tmp_path_factory.mktemp("calib_models")
    out = {}
    for i, (name, make) in enumerate([("dense_stack", models.dense_stack), ("residual", _residual), ("shared", _shared),
                                          ("chain3", _chain3)]):
        m = make(K, np.random.default_rng(100 + i))
        p = d / f"{name}.keras"
        m.save(p)
        out[name] = p
    return out


# ----------------------------------------------------------------- done-when checks
def test_lone_bn_batch_size_2(tmp_path):
    """10,000 samples of N(3, 2^2) at batch size 2: mean within 0.02, variance within 1% (ddof=1)."""
    import bnrewrite

    data = np.load(FIX / "lone_bn_calib.npy")
    out = tmp_path / "lone.keras"
    rep = bnrewrite.convert(FIX / "lone_bn.keras", out, calibration=FIX / "lone_bn_calib.npy",
                            batch_size=2, fold=False)
    mean, var = keras_bn_stats(out, "bn")
    want_mean, want_var = data.astype(np.float64).mean(0), data.astype(np.float64).var(0, ddof=1)
    assert abs(mean[0] - want_mean[0]) < 0.02
    assert abs(var[0] / want_var[0] - 1) < 0.01
    # exact, in fact: float64 moments, float32 storage
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-6)
    (layer,) = rep.calibration["layers"]
    assert layer["layer"] == "bn" and layer["values_per_channel"] == 10000
    assert rep.calibration["samples"] == 10000 and rep.calibration["batches"] == 5000
    assert layer["old_mean"]["max"] == 0.0 and abs(layer["new_mean"]["max"] - want_mean[0]) < 1e-5
    assert rep.passes[[p["name"] for p in rep.passes].index("calibrate_bn")]["changed"] == ["bn"]


def test_batch_size_and_variance_modes():
    """Batch size does not change the result; 'biased' divides by n."""
    import bnrewrite
    from bnrewrite.calibration import calibrate

    data = np.load(FIX / "lone_bn_calib.npy")
    got = {}
    for bs, variance in [(7, "unbiased"), (10000, "unbiased"), (333, "biased")]:
        mg = bnrewrite.load(FIX / "lone_bn.h5")
        calibrate(mg, data, batch_size=bs, variance=variance)
        w = mg.layer("bn").weights
        got[(bs, variance)] = (w["moving_mean"], w["moving_variance"])
    x = data.astype(np.float64)
    for (bs, variance), (mean, var) in got.items():
        np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
        np.testing.assert_allclose(var, x.var(0, ddof=1 if variance == "unbiased" else 0), rtol=1e-6)
    np.testing.assert_array_equal(got[(7, "unbiased")][1], got[(10000, "unbiased")][1])


def test_domain_shift_cli(tmp_path):
    """README example: chance accuracy as is, >= 95% after --calibration on the shifted inputs."""
    import tf_keras

    d = np.load(FIX / "domain_shift_data.npz")
    np.save(tmp_path / "shifted.npy", d["x_shift"])
    as_is = tf_keras.models.load_model(FIX / "domain_shift.h5", compile=False).predict(d["x_shift"], verbose=0)
    acc_as_is = float(((as_is[:, 0] > 0.5) == d["y_shift"]).mean())
    assert acc_as_is < 0.6

    out, report = tmp_path / "adapted.onnx", tmp_path / "report.json"
    proc = run_cli("convert", FIX / "domain_shift.h5", out, "--calibration", "shifted.npy", "--report", report,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "calibrated 2 BatchNormalization layers on 2,000 samples" in proc.stdout
    (y,) = ort_run(out, d["x_shift"])
    acc = float(((y[:, 0] > 0.5) == d["y_shift"]).mean())
    assert acc >= 0.95, acc
    rep = json.loads(report.read_text())
    assert [r["layer"] for r in rep["calibration"]["layers"]] == ["bn_in", "bn_hidden"]
    assert rep["calibration"]["samples"] == 2000 and rep["verification"]["ok"]


def test_two_stacked_bns_match_numpy_reference(calib_models, tmp_path):
    """Dense -> bn1 -> relu -> Dense -> bn2 -> Dense against a numpy layer-by-layer AdaBN, within 1e-4."""
    import bnrewrite
    import keras

    path = calib_models["dense_stack"]
    m = keras.saving.load_model(path)
    W = {n: m.get_layer(n).get_weights() for n in ("d1", "d2", "out", "bn1", "bn2")}
    rng = np.random.default_rng(7)
    data = rng.normal(2.0, 3.0, (3000, 6)).astype("float32")

    def bn(x, w, mean, var):
        return (x - mean) / np.sqrt(var + 1e-3) * w[0] + w[1]

    x = data.astype(np.float64)
    h1 = x @ W["d1"][0] + W["d1"][1]
    m1, v1 = h1.mean(0), h1.var(0, ddof=1)
    h2 = np.maximum(bn(h1, W["bn1"], m1, v1), 0) @ W["d2"][0] + W["d2"][1]
    m2, v2 = h2.mean(0), h2.var(0, ddof=1)

    test_x = rng.normal(2.0, 3.0, (64, 6)).astype("float32")
    t = test_x.astype(np.float64) @ W["d1"][0] + W["d1"][1]
    t = np.maximum(bn(t, W["bn1"], m1, v1), 0) @ W["d2"][0] + W["d2"][1]
    want = bn(t, W["bn2"], m2, v2) @ W["out"][0] + W["out"][1]

    onnx_out = tmp_path / "stack.onnx"
    ticks = []
    bnrewrite.convert(path, onnx_out, calibration=data, batch_size=50,
                      calibration_progress=lambda done, total: ticks.append((done, total)))
    # 60 batches per level, 2 levels: an array's size, so the total is known from the first batch
    assert ticks[-1] == (120, 120) and ticks[0] == (1, 120) and len(ticks) == 120
    assert_close(ort_run(onnx_out, test_x)[0], want, "onnx vs numpy AdaBN")

    keras_out = tmp_path / "stack.keras"
    bnrewrite.convert(path, keras_out, calibration=data, batch_size=64, fold=False)
    for name, (mean, var) in (("bn1", (m1, v1)), ("bn2", (m2, v2))):
        got_mean, got_var = keras_bn_stats(keras_out, name)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(got_var, var, rtol=1e-4, atol=1e-4, err_msg=name)


def test_cache_frees_each_batch_after_its_last_reader(calib_models):
    """Level 1 reads bn1's input for the last time and caches bn2's: each batch of the first is freed
    as soon as level 1 has run on it, so the live cache peaks at all of bn1's input plus one batch
    of bn2's (8 * 200 + 6 * 32 floats), not both in full; spilled, the same on disk. Statistics:
    numpy, layer by layer; with everything spilled, the same bits."""
    import bnrewrite
    import keras
    from bnrewrite.calibration import calibrate

    path = calib_models["chain3"]
    m = keras.saving.load_model(path)
    data = np.random.default_rng(11).normal(0.5, 2.0, (200, 6)).astype("float32")
    h, want = data.astype(np.float64), {}
    for i in (1, 2, 3):
        kernel, bias = m.get_layer(f"d{i}").get_weights()
        h = h @ kernel + bias
        want[f"bn{i}"] = (h.mean(0), h.var(0, ddof=1))
        gamma, beta = m.get_layer(f"bn{i}").get_weights()[:2]
        h = np.maximum((h - want[f"bn{i}"][0]) / np.sqrt(want[f"bn{i}"][1] + 1e-3) * gamma + beta, 0)

    got = {}
    for cache_mb in (1024, 0):
        mg = bnrewrite.load(path)
        rep = calibrate(mg, data, batch_size=32, cache_mb=cache_mb)
        got[cache_mb] = {n: [np.array(mg.layer(n).weights[k]) for k in ("moving_mean", "moving_variance")]
                         for n in want}
        if cache_mb:
            assert rep["cache"]["peak_live_bytes"] == 4 * (8 * 200 + 6 * 32)
            assert rep["cache"]["spilled_bytes"] == 0
        else:  # spilled: a batch's bytes are punched out of the file after its last reader (Linux)
            assert rep["cache"]["spilled_bytes"] == 4 * (8 + 6) * 200
            assert rep["cache"]["peak_disk_bytes"] == (4 * (8 * 200 + 6 * 32) if sys.platform == "linux"
                                                       else 4 * (8 + 6) * 200)
    for name, (mean, var) in want.items():
        np.testing.assert_allclose(got[1024][name][0], mean, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got[1024][name][1], var, rtol=1e-5, atol=1e-5, err_msg=name)
        for a, b in zip(got[1024][name], got[0][name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_calibrate_bn_in_an_explicit_pipeline(calib_models, tmp_path):
    """``CalibrateBN(data, batch_size=...)`` in ``passes=[...]`` calibrates like ``calibration=data``:
    the written .keras, loaded by Keras, holds numpy's statistics."""
    import bnrewrite
    import keras
    from bnrewrite.passes import CalibrateBN, InferenceMode

    path = calib_models["dense_stack"]
    m = keras.saving.load_model(path)
    data = np.random.default_rng(12).normal(1.0, 2.0, (300, 6)).astype("float32")
    kernel, bias = m.get_layer("d1").get_weights()
    h1 = data.astype(np.float64) @ kernel + bias
    out = tmp_path / "explicit.keras"
    rep = bnrewrite.convert(path, out, passes=[InferenceMode(), CalibrateBN(data, batch_size=64, shards=2)])
    assert rep.calibration["batch_size"] == 64 and len(rep.calibration["shards"]) == 2
    got_mean, got_var = keras_bn_stats(out, "bn1")
    np.testing.assert_allclose(got_mean, h1.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_var, h1.var(0, ddof=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache_mb", [1024, 0], ids=["ram", "spilled"])
def test_residual_block_matches_keras_layer_by_layer(calib_models, tmp_path, cache_mb):
    """Levels 0/0/1/2 with a skip across levels, Conv/Depthwise BNs; also with every cached tensor spilled."""
    import bnrewrite
    import keras

    path = calib_models["residual"]
    rng = np.random.default_rng(3)
    data = rng.normal(0.5, 2.0, (200, 10, 10, 3)).astype("float32")
    test_x = rng.normal(0.5, 2.0, (16, 10, 10, 3)).astype("float32")

    ref = keras.saving.load_model(path)
    adabn_reference(ref, keras, data, [(ref.get_layer(n), ref) for n in ("bn_a", "bn_s", "bn_b", "bn_c")])
    want = ref.predict(test_x, verbose=0)

    out = tmp_path / f"residual_{cache_mb}.onnx"
    rep = bnrewrite.convert(path, out, calibration=data, batch_size=32, cache_mb=cache_mb)
    assert_close(ort_run(out, test_x)[0], want, "onnx vs keras layer-by-layer AdaBN")
    levels = {r["layer"]: r["level"] for r in rep.calibration["layers"]}
    assert levels == {"bn_a": 0, "bn_s": 0, "bn_b": 1, "bn_c": 2}
    assert rep.calibration["levels"] == 3
    cache = rep.calibration["cache"]
    assert (cache["spilled_bytes"] > 0) == (cache_mb == 0)
    assert {r["layer"]: r["values_per_channel"] for r in rep.calibration["layers"]}["bn_a"] == 200 * 100


@pytest.mark.parametrize("keep_td", [False, True], ids=["unwrapped", "kept-wrapped"])
def test_timedistributed_bn(tmp_path, keep_td):
    """td_bn_stale.h5: the TD(BN) is estimated over batch and time (unwrapped or still wrapped); tf_keras reference."""
    import bnrewrite
    import tf_keras

    data = np.load(FIX / "td_bn_stale_calib.npy")
    ref = tf_keras.models.load_model(FIX / "td_bn_stale.h5", compile=False)
    adabn_reference(ref, tf_keras, data, [(ref.get_layer("td_bn"), ref), (ref.get_layer("bn_trained"), ref)])
    test_x = np.random.default_rng(5).normal(2.0, 3.0, (8, 16, 8)).astype("float32")
    want = ref.predict(test_x, verbose=0)

    out = tmp_path / "td.onnx"
    rep = bnrewrite.convert(FIX / "td_bn_stale.h5", out, calibration=FIX / "td_bn_stale_calib.npy",
                            keep_timedistributed=keep_td)
    assert_close(ort_run(out, test_x)[0], want, "onnx vs tf_keras AdaBN")
    per = {r["layer"]: r for r in rep.calibration["layers"]}
    assert per["td_bn"]["values_per_channel"] == 256 * 16  # batch x time
    fixed = {(f["code"], f["layer"]) for f in rep.findings["fixed"]}
    assert ("STALE_STATS", "td_bn") in fixed
    unwrap = rep.passes[[p["name"] for p in rep.passes].index("unwrap_timedistributed")] if not keep_td else None
    assert keep_td or "td_bn" in unwrap["changed"]


def test_nested_frozen_bn(tmp_path):
    """BNs of a nested, frozen base model (transfer learning) are re-estimated too."""
    import bnrewrite
    import tf_keras

    rng = np.random.default_rng(11)
    data = rng.normal(0.5, 2.0, (96, 16, 16, 3)).astype("float32")
    ref = tf_keras.models.load_model(FIX / "transfer_frozen.h5", compile=False)
    base = ref.get_layer("base")
    adabn_reference(ref, tf_keras, data, [(base.get_layer("base_bn1"), base), (base.get_layer("base_bn2"), base)])
    test_x = rng.normal(0.5, 2.0, (8, 16, 16, 3)).astype("float32")
    want = ref.predict(test_x, verbose=0)

    out = tmp_path / "frozen.onnx"
    rep = bnrewrite.convert(FIX / "transfer_frozen.h5", out, calibration=data)
    assert_close(ort_run(out, test_x)[0], want, "onnx vs tf_keras AdaBN")
    assert sorted(r["layer"] for r in rep.calibration["layers"]) == ["base_bn1", "base_bn2"]


def test_multi_input_npz_and_dict(tmp_path):
    """multi_io.keras: an .npz by input name, and the same data as a dict; keras layer-by-layer reference."""
    import bnrewrite
    import keras

    rng = np.random.default_rng(12)
    data = {"image": rng.normal(1.0, 2.0, (80, 12, 12, 3)).astype("float32"),
            "features": rng.normal(-1.0, 0.5, (80, 10)).astype("float32")}
    np.savez_compressed(tmp_path / "calib.npz", labels=np.zeros(80), **data)  # an extra array is ignored
    ref = keras.saving.load_model(FIX / "multi_io.keras")
    adabn_reference(ref, keras, data, [(ref.get_layer(n), ref) for n in ("bn_conv", "bn_dense", "bn_dwconv")])
    test = {k: rng.normal(1.0, 2.0, (6, *v.shape[1:])).astype("float32") for k, v in data.items()}
    want = ref.predict(test, verbose=0)

    for i, source in enumerate([tmp_path / "calib.npz", data]):
        out = tmp_path / f"multi_{i}.onnx"
        bnrewrite.convert(FIX / "multi_io.keras", out, calibration=source, batch_size=17)
        for got, w in zip(ort_run(out, test), want):
            assert_close(got, w, f"multi_io output, source {i}")


def test_shared_bn(calib_models):
    """A BN shared by parallel calls is estimated over both inputs; one called in a chain is skipped."""
    import bnrewrite
    from bnrewrite.calibration import calibrate

    rng = np.random.default_rng(4)
    data = {"a": rng.normal(1.0, 1.0, (500, 4)).astype("float32"),
            "b": rng.normal(-2.0, 3.0, (500, 4)).astype("float32")}
    mg = bnrewrite.load(calib_models["shared"])
    before = np.array(mg.layer("bn_chain").weights["moving_mean"])
    rep = calibrate(mg, data, batch_size=64)
    both = np.concatenate([data["a"], data["b"]]).astype(np.float64)
    w = mg.layer("bn_shared").weights
    np.testing.assert_allclose(w["moving_mean"], both.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w["moving_variance"], both.var(0, ddof=1), rtol=1e-5)
    assert {r["layer"]: r["values_per_channel"] for r in rep["layers"]} == {"bn_shared": 1000}
    (skip,) = rep["skipped"]
    assert skip["layer"] == "bn_chain" and "different depths" in skip["reason"]
    np.testing.assert_array_equal(mg.layer("bn_chain").weights["moving_mean"], before)


# ----------------------------------------------------------------- data sources
@pytest.fixture(scope="module")
def lone():
    data = np.load(FIX / "lone_bn_calib.npy")[:1000]
    x = data.astype(np.float64)
    return data, x.mean(0), x.var(0, ddof=1)


def _lone_stats(source, **kw):
    import bnrewrite
    from bnrewrite.calibration import calibrate

    mg = bnrewrite.load(FIX / "lone_bn.h5")
    rep = calibrate(mg, source, **kw)
    w = mg.layer("bn").weights
    return w["moving_mean"], w["moving_variance"], rep


def _sources(data, tmp_path):
    import tensorflow as tf

    np.save(tmp_path / "a.npy", data[:300])
    np.savez(tmp_path / "b.npz", x=data[300:700])
    np.save(tmp_path / "c.npy", data[700:])
    os.makedirs(tmp_path / "shards")
    for f in ("a.npy", "b.npz", "c.npy"):
        os.replace(tmp_path / f, tmp_path / "shards" / f)
    (tmp_path / "shards" / "README.txt").write_text("not a shard")
    np.savez(tmp_path / "single.npz", whatever=data)
    return {
        "list of batches": [data[i:i + 100] for i in range(0, 1000, 100)],
        "generator of (x, y)": ((data[i:i + 64], np.zeros(64)) for i in range(0, 1000, 64)),
        "single samples": (row for row in data),
        "tf.data batched": tf.data.Dataset.from_tensor_slices(data).batch(48),
        "tf.data (x, y) unbatched": tf.data.Dataset.from_tensor_slices((data, np.zeros(1000))),
        "folder of shards": tmp_path / "shards",
        "npz with one array": tmp_path / "single.npz",
        "float64 array": data.astype(np.float64),
    }


def test_data_sources(lone, tmp_path):
    data, want_mean, want_var = lone
    for name, source in _sources(data, tmp_path).items():
        mean, var, rep = _lone_stats(source, batch_size=40)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(var, want_var, rtol=1e-6, err_msg=name)
        assert rep["samples"] == 1000, name


def test_max_samples_and_npy_windows(lone, tmp_path):
    from bnrewrite.io.data import _NpyWindows

    data, _, _ = lone
    np.save(tmp_path / "d.npy", data)
    mean, var, rep = _lone_stats(tmp_path / "d.npy", batch_size=64, max_samples=250)
    x = data[:250].astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, x.var(0, ddof=1), rtol=1e-6)
    assert rep["samples"] == 250 and rep["batches"] == 4
    windows = list(_NpyWindows(tmp_path / "d.npy").windows(300))
    assert [len(w) for w in windows] == [300, 300, 300, 100]
    assert all(type(w) is np.ndarray for w in windows)  # copies, not views of a map kept open
    np.testing.assert_array_equal(np.concatenate(windows), data)


# ----------------------------------------------------------------- bad data
def _bad_cases(tmp_path):
    np.save(tmp_path / "shape.npy", np.zeros((10, 3), np.float32))
    nan = np.ones((10, 1), np.float32)
    nan[7] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "empty.npy", np.zeros((0, 1), np.float32))
    np.save(tmp_path / "text.npy", np.array([["a"], ["b"]]))
    np.save(tmp_path / "objects.npy", np.array([[1], [None]], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "wrong_names.npz", u=np.zeros((4, 1)), v=np.zeros((4, 1)))
    raw = (tmp_path / "shape.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(raw[: len(raw) - 20])
    (tmp_path / "notes.txt").write_text("1 2 3")
    return {
        "shape.npy": "expects samples of shape (1,)",
        "nan.npy": "NaN or inf",
        "empty.npy": "empty",
        "text.npy": "dtype <U1",
        "objects.npy": "pickle",
        "wrong_names.npz": "no array for model input 'x'",
        "truncated.npy": "truncated",
        "notes.txt": "must be .npy, .npz",
        "missing.npy": "not found",
    }


def test_bad_calibration_data_api(tmp_path):
    import bnrewrite

    cases = _bad_cases(tmp_path)
    for fname, expect in cases.items():
        out = tmp_path / "out.onnx"
        with pytest.raises(bnrewrite.InputError) as e:
            bnrewrite.convert(FIX / "lone_bn.h5", out, calibration=tmp_path / fname)
        assert expect in str(e.value), (fname, str(e.value))
        assert not out.exists()
    with pytest.raises(bnrewrite.InputError, match="'x'.*expects samples of shape"):
        bnrewrite.convert(FIX / "lone_bn.h5", tmp_path / "o.onnx", calibration=[np.zeros((4, 2), np.float32)])
    with pytest.raises(bnrewrite.InputError, match="model input 'features'"):
        bnrewrite.convert(FIX / "multi_io.keras", tmp_path / "o.onnx",
                          calibration={"image": np.zeros((4, 12, 12, 3), np.float32)})
    with pytest.raises(bnrewrite.InputError, match="2 inputs"):
        bnrewrite.convert(FIX / "multi_io.keras", tmp_path / "o.onnx", calibration=FIX / "lone_bn_calib.npy")
    with pytest.raises(bnrewrite.InputError, match="variance must be"):
        bnrewrite.convert(FIX / "lone_bn.h5", tmp_path / "o.onnx", calibration=np.ones((4, 1)), variance="sample")
    with pytest.raises(bnrewrite.InputError, match="at least 2 are needed"):
        bnrewrite.convert(FIX / "lone_bn.h5", tmp_path / "o.onnx", calibration=np.ones((1, 1), np.float32))
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp*"))


def test_bad_calibration_data_cli(tmp_path):
    """Exit 2, one line naming the input and the expected shape, nothing written; -q prints nothing else."""
    np.save(tmp_path / "wrong.npy", np.zeros((5, 4, 4), np.float32))
    out = tmp_path / "out.onnx"
    proc = run_cli("convert", FIX / "td_bn_stale.h5", out, "--calibration", "wrong.npy", "-q", cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert "input 'x'" in line and "(16, 8)" in line, line
    assert proc.stdout == ""
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["wrong.npy"]


# ----------------------------------------------------------------- phases that share a function
def _repeated(K, rng, odd: bool = False):
    """Four residual blocks of the same shapes (conv-BN-relu-conv-BN, add, relu) after a stem: the
    blocks' phases have one structure, so they run one traced function with each block's weights.
    With ``odd`` the third block's first conv has another kernel size (its phase is its own)."""
    x = K.Input((8, 8, 3), name="x")
    h = K.layers.Conv2D(8, 3, padding="same", name="stem")(x)
    h = K.layers.BatchNormalization(name="stem_bn")(h)
    h = K.layers.ReLU(name="stem_relu")(h)
    for i in range(4):
        k = 1 if odd and i == 2 else 3
        a = K.layers.Conv2D(8, k, padding="same", name=f"b{i}_c1")(h)
        a = K.layers.BatchNormalization(name=f"b{i}_bn1")(a)
        a = K.layers.ReLU(name=f"b{i}_r1")(a)
        a = K.layers.Conv2D(8, 3, padding="same", name=f"b{i}_c2")(a)
        a = K.layers.BatchNormalization(name=f"b{i}_bn2")(a)
        h = K.layers.ReLU(name=f"b{i}_out")(K.layers.Add(name=f"b{i}_add")([h, a]))
    m = K.Model(x, h)
    rng_w = np.random.default_rng(rng.integers(1 << 30))
    for lay in m.layers:  # distinct weights per block: a block run with another's weights would show
        if isinstance(lay, K.layers.Conv2D):
            lay.set_weights([rng_w.normal(0, 0.4, w.shape).astype("float32") for w in lay.get_weights()])
    models.randomize_bn(m, K, rng)
    return m


@pytest.mark.parametrize("framework", ["keras", "tf_keras"])
def test_repeated_blocks_share_functions(framework, tmp_path):
    """Blocks of one structure run one traced function with their own weights, and every BN matches
    the framework's own layer-by-layer AdaBN; a block of another structure gets its own function."""
    import bnrewrite
    from bnrewrite.calibration import calibrate
    from bnrewrite.passes import InferenceMode, PassContext, PassManager

    K = models.framework(framework)
    rng = np.random.default_rng(21)
    data = rng.normal(0.3, 1.5, (70, 8, 8, 3)).astype("float32")
    counts = {}
    for odd in (False, True):
        m = _repeated(K, np.random.default_rng(22), odd=odd)
        path = tmp_path / f"rep_{odd}.{'keras' if framework == 'keras' else 'h5'}"
        m.save(path)
        mg = bnrewrite.load(path)
        PassManager([InferenceMode()]).run(mg, PassContext())
        rep = calibrate(mg, data, batch_size=32)
        counts[odd] = (rep["levels"], rep["functions"])

        ref = K.models.load_model(path, compile=False)
        bns = [ref.get_layer(n) for n in ["stem_bn"] + [f"b{i}_bn{j}" for i in range(4) for j in (1, 2)]]
        adabn_reference(ref, K, data, [(bn, ref) for bn in bns])
        for bn in bns:
            w = mg.layer(bn.name).weights
            np.testing.assert_allclose(w["moving_mean"], np.asarray(bn.moving_mean), rtol=1e-5, atol=1e-6,
                                       err_msg=bn.name)
            np.testing.assert_allclose(w["moving_variance"], np.asarray(bn.moving_variance), rtol=1e-5,
                                       err_msg=bn.name)
    levels, functions = counts[False]
    assert levels == 9 and functions < levels
    # phases 2/4/6 (BN1 -> conv2) and 3/5 (add -> conv1, storing the block's output) repeat; phase 7
    # stores no block output (nothing reads it) and phase 8 stores nothing: 9 phases, 6 functions
    assert functions == 6
    assert counts[True][1] > functions  # the odd block's phase is traced on its own


@pytest.mark.parametrize("shape,axis", [((5, 6, 7, 4), 3), ((5, 4, 6, 7), 1), ((5, 3, 4, 6, 2), 2),
                                        ((5, 9, 4), 2), ((5, 4, 9), 1)],
                         ids=["nhwc", "nchw", "middle-axis", "ntc", "nct"])
def test_sample_moments_match_numpy(shape, axis):
    """Per-sample, per-channel mean and M2 against numpy float64 -- static and open sizes alike."""
    import tensorflow as tf

    from bnrewrite.calibration import _sample_moments

    x = np.random.default_rng(7).normal(3.0, 2.0, shape).astype("float32")
    inner = tuple(i for i in range(1, len(shape)) if i != axis)
    x64 = x.astype(np.float64)
    want_mean = x64.mean(inner)
    want_m2 = ((x64 - np.expand_dims(want_mean, inner)) ** 2).sum(inner)
    open_spec = tf.TensorSpec((None,) * len(shape), tf.float32)
    for fn in (lambda t: _sample_moments(t, axis),
               tf.function(lambda t: _sample_moments(t, axis), input_signature=[open_spec])):
        mean, m2 = fn(tf.constant(x))
        np.testing.assert_allclose(mean.numpy(), want_mean.reshape(shape[0], -1), rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(m2.numpy(), want_m2.reshape(shape[0], -1), rtol=2e-6)


def test_data_the_model_rejects_is_a_clear_error(tmp_path):
    """An embedding index out of range in the calibration data: TensorFlow's op error becomes one
    line naming the level, the batch, the layer and TF's reason; exit 2, nothing written."""
    import keras

    import bnrewrite

    x = keras.Input((6,), name="tokens")
    h = keras.layers.Embedding(10, 4, name="emb")(x)
    m = keras.Model(x, keras.layers.BatchNormalization(name="bn")(keras.layers.Conv1D(3, 2, name="c")(h)))
    src = tmp_path / "emb.keras"
    m.save(src)
    data = np.zeros((8, 6), "float32")
    data[5, 2] = 50  # sample 6: batch 2 at batch size 4
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(bnrewrite.InputError) as err:
        bnrewrite.convert(src, out / "o.onnx", calibration=data, batch_size=4)
    msg = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in msg
    assert "level 1, batch 2 in layer 'emb'" in msg and "50" in msg and "[0, 10)" in msg, msg
    assert not list(out.iterdir())
