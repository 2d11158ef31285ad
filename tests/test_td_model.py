"""A per-frame encoder model inside TimeDistributed (video and speech classifiers):
``TimeDistributed(Sequential/Functional[Conv, BN, ...])``.

unwrap_timedistributed inlines the wrapped model between two reshapes, so its BNs fold
and calibrate. References: the writing framework's own load_model (tf_keras or Keras 3),
and for calibration that framework's layer-by-layer AdaBN of the encoder over all
frames (batch x time), with numpy moments. A wrapper called twice shares the inlined
layers. Negative case: a tf_keras encoder over an open number of frames is kept (the
reshape back needs the time length; the reason is reported) and calibration is refused
with that reason.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnrewrite
from test_calibration import adabn_reference, ort_run
from test_frameworks import assert_close


def _rand_bn(layers, seed=0):
    rng = np.random.default_rng(seed)
    for lay in layers:
        if type(lay).__name__ == "BatchNormalization":
            lay.set_weights(_bn_values(lay, rng))


def _bn_values(lay, rng):
    out = []
    for v in lay.weights:
        key = (getattr(v, "path", None) or v.name).split(":")[0].rsplit("/", 1)[-1]
        shape = tuple(v.shape)
        out.append({"gamma": rng.uniform(0.5, 1.5, shape), "beta": rng.normal(0, 0.5, shape),
                    "moving_mean": rng.normal(0, 0.5, shape), "moving_variance": rng.uniform(0.5, 2.0, shape)}[key])
    return out


def _encoder(K, functional: bool):
    L = K.layers
    if not functional:
        return K.Sequential([L.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv_a"), L.BatchNormalization(name="bn_a"),
                             L.ReLU(), L.GlobalAveragePooling2D()], name="enc")
    i = K.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", name="conv_a")(i)
    h = L.BatchNormalization(name="bn_a")(h)
    h = L.ReLU()(h)
    h = L.Conv2D(5, 3, use_bias=False, name="conv_b")(h)
    h = L.BatchNormalization(center=False, name="bn_b")(h)
    return K.Model(i, L.GlobalAveragePooling2D()(L.ReLU()(h)), name="enc")


def _build(K, kind, path):
    L = K.layers
    enc = _encoder(K, functional=kind == "functional")
    x = K.Input((None if kind == "open" else 5, 8, 8, 3), name="clip")
    if kind == "shared":  # one wrapper called on two clips
        x2 = K.Input((5, 8, 8, 3), name="clip2")
        td = L.TimeDistributed(enc, name="frames")
        y = L.Concatenate()([td(x), td(x2)])
        m = K.Model([x, x2], L.GRU(3, name="gru")(y))
    else:
        m = K.Model(x, L.GRU(3, name="gru")(L.TimeDistributed(enc, name="frames")(x)))
    _rand_bn(enc.layers)
    m.save(path)
    return path


CASES = [("tf_keras", "functional", "h5"), ("tf_keras", "sequential", "h5"), ("keras", "sequential", "keras"),
         ("keras", "functional", "h5"), ("tf_keras", "shared", "h5"), ("tf_keras", "open", "h5")]


@pytest.fixture(scope="module")
def td_files(tmp_path_factory):
    import importlib

    folder = tmp_path_factory.mktemp("td_model")
    made = {}

    def get(fw, kind, ext):
        if (fw, kind, ext) not in made:
            made[(fw, kind, ext)] = _build(importlib.import_module(fw), kind, folder / f"{fw}_{kind}.{ext}")
        return made[(fw, kind, ext)]

    return get


def _load(fw, path):
    if fw == "tf_keras":
        import tf_keras

        return tf_keras.models.load_model(path, compile=False)
    import keras

    return keras.saving.load_model(path, compile=False)


def _clips(n_inputs, n=3, seed=4):
    rng = np.random.default_rng(seed)
    return [rng.normal(0.5, 2.0, (n, 5, 8, 8, 3)).astype("float32") for _ in range(n_inputs)]


def _passes(rep):
    return {p["name"]: p for p in rep.passes}


@pytest.mark.parametrize("fw, kind, ext", CASES[:4], ids=["-".join(c) for c in CASES[:4]])
def test_wrapped_encoder_is_inlined_and_its_bns_fold(td_files, tmp_path, fw, kind, ext):
    path = td_files(fw, kind, ext)
    ref = _load(fw, path)
    xs = _clips(1)
    want = np.asarray(ref(xs[0], training=False))
    bns = ["bn_a", "bn_b"] if kind == "functional" else ["bn_a"]
    for out in ("o.onnx", "o.keras"):
        rep = bnrewrite.convert(path, tmp_path / out)
        p = _passes(rep)
        assert p["unwrap_timedistributed"]["changed"] == ["frames"], p["unwrap_timedistributed"]
        assert sorted(p["fold_bn"]["changed"]) == bns, p["fold_bn"]
        assert rep.verification["ok"] and rep.verification["no_reference"] is None
        if out.endswith("onnx"):
            import onnx

            ops = {n.op_type for n in onnx.load(str(tmp_path / out)).graph.node}
            assert "BatchNormalization" not in ops and "Conv" in ops, ops
            got = ort_run(tmp_path / out, xs[0])[0]
        else:
            import keras

            got = np.asarray(keras.saving.load_model(tmp_path / out, compile=False)(xs[0], training=False))
        assert_close(got, want, f"{fw} {kind} {out} vs {fw} load_model")


@pytest.mark.parametrize("fw, kind, ext", [CASES[0], CASES[2]], ids=["tf_keras-functional", "keras-sequential"])
def test_wrapped_encoder_calibrates_over_batch_and_time(td_files, tmp_path, fw, kind, ext):
    """AdaBN of the inlined encoder: statistics over every frame of every clip, as the framework's
    own layer-by-layer AdaBN of the encoder on the frames gives them."""
    import importlib

    K = importlib.import_module(fw)
    path = td_files(fw, kind, ext)
    data = _clips(1, n=12, seed=7)[0] * 0.5 + 1.0  # a shifted domain
    ref = _load(fw, path)
    enc = ref.get_layer("frames").layer
    bns = [lay for lay in enc.layers if type(lay).__name__ == "BatchNormalization"]
    adabn_reference(enc, K, data.reshape(-1, 8, 8, 3), [(bn, enc) for bn in bns])
    xs = _clips(1, seed=9)
    want = np.asarray(ref(xs[0], training=False))

    rep = bnrewrite.convert(path, tmp_path / "c.onnx", calibration=data)
    per = {r["layer"]: r for r in rep.calibration["layers"]}
    assert sorted(per) == sorted(b.name for b in bns)
    assert per["bn_a"]["values_per_channel"] == 12 * 5 * (6 * 6 if kind == "sequential" else 8 * 8)
    assert_close(ort_run(tmp_path / "c.onnx", xs[0])[0], want, f"{fw} calibrated vs {fw} AdaBN")
    # the verification reference got the same statistics (inside its wrapper) and agreed
    assert rep.verification["ok"] and rep.verification["no_reference"] is None


def test_shared_wrapper_inlines_once_and_shares_the_layers(td_files, tmp_path):
    path = td_files(*CASES[4])
    xs = _clips(2)
    want = np.asarray(_load("tf_keras", path)(xs, training=False))
    rep = bnrewrite.convert(path, tmp_path / "o.onnx")
    assert _passes(rep)["unwrap_timedistributed"]["changed"] == ["frames"]
    assert_close(ort_run(tmp_path / "o.onnx", dict(zip(("clip", "clip2"), xs)))[0], want, "shared wrapper")
    import onnx

    convs = [n for n in onnx.load(str(tmp_path / "o.onnx")).graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and convs[0].input[1] == convs[1].input[1]  # one kernel, two calls


def test_open_time_tf_keras_encoder_is_kept_and_calibration_says_why(td_files, tmp_path):
    path = td_files(*CASES[5])
    xs = _clips(1)
    want = np.asarray(_load("tf_keras", path)(xs[0], training=False))
    rep = bnrewrite.convert(path, tmp_path / "o.onnx")
    skipped = {s["layer"]: s["reason"] for s in _passes(rep)["unwrap_timedistributed"]["skipped"]}
    assert "time length" in skipped["frames"] and _passes(rep)["fold_bn"]["changed"] == []
    assert_close(ort_run(tmp_path / "o.onnx", xs[0])[0], want, "open-time encoder")
    with pytest.raises(bnrewrite.UnsupportedModelError, match="cannot reach.*bn_a.*time length") as err:
        bnrewrite.convert(path, tmp_path / "c.onnx", calibration=xs[0])
    assert err.value.exit_code == 2 and not (tmp_path / "c.onnx").exists()


def test_keep_timedistributed_keeps_the_encoder(td_files, tmp_path):
    path = td_files(*CASES[1])
    rep = bnrewrite.convert(path, tmp_path / "o.onnx", keep_timedistributed=True)
    assert _passes(rep)["fold_bn"]["changed"] == []
    assert any(f["code"] == "BN_IN_WRAPPED_MODEL" for f in bnrewrite.inspect(path).findings)
    with pytest.raises(bnrewrite.UnsupportedModelError, match="cannot reach.*keep-timedistributed"):
        bnrewrite.convert(path, tmp_path / "c.onnx", calibration=_clips(1)[0], keep_timedistributed=True)


def test_keras_2_0_sequential_inside_timedistributed(td_files, tmp_path):
    """Keras 2.0/2.1 write a Sequential's config as the bare list of its layers, also inside a wrapper;
    such a file was 'malformed' to the reader. Now read, inlined and exact (reference: tf_keras's own
    reading of the rewritten file)."""
    import json

    import h5py
    from realmodels.legacy import rewrite

    src = td_files(*CASES[1])
    dst = tmp_path / "keras208.h5"
    rewrite(src, dst, "keras-2.0.8")
    with h5py.File(dst) as f:
        td = next(lc for lc in json.loads(f.attrs["model_config"])["config"]["layers"]
                  if lc["class_name"] == "TimeDistributed")
    assert isinstance(td["config"]["layer"]["config"], list)  # the 2.0 form really is in the file
    xs = _clips(1)
    want = np.asarray(_load("tf_keras", dst)(xs[0], training=False))
    rep = bnrewrite.convert(dst, tmp_path / "o.onnx")
    assert _passes(rep)["fold_bn"]["changed"] == ["bn_a"]
    assert_close(ort_run(tmp_path / "o.onnx", xs[0])[0], want, "Keras 2.0.8 TD(Sequential)")
