"""Models whose inputs or outputs are dicts (Keras 3 and tf_keras functional models).

Both frameworks flatten a dict in sorted key order (``keras.tree`` / ``tf.nest``), whatever order the
file lists the keys in. A real Keras 3.8 VAE encoder returning ``{"z_mean", "z_log_var", "z"}`` was
compared output-for-wrong-output (exit 3) when bnrewrite took the file's order, and a model taking a
dict could not be fed. The reference is always the writing framework's own ``load_model`` of the file,
called with a dict; outputs are compared by key."""

from __future__ import annotations

import numpy as np
import pytest

import bnrewrite
from conftest import assert_close


def _random_bn(layers, seed=0):
    rng = np.random.default_rng(seed)
    for layer in layers:
        if type(layer).__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.5, b.shape),
                               rng.normal(0, 0.5, m.shape), rng.uniform(0.5, 2.0, v.shape)])


def _build(K):
    """Inputs ``{"z_in", "a_in"}`` and outputs ``{"z_out", "a_out"}``, both listed out of sorted
    order, and a nested model taking a dict; the two outputs have different widths, so a swap shows."""
    L = K.layers
    zi, ai = K.Input((4,), name="z_in"), K.Input((3,), name="a_in")
    p, q = K.Input((4,), name="p"), K.Input((3,), name="q")
    inner = K.Model({"q": q, "p": p}, L.Concatenate()([L.Dense(5)(p), q]), name="inner")
    h = L.BatchNormalization()(inner({"q": ai, "p": zi}))
    model = K.Model({"z_in": zi, "a_in": ai}, {"z_out": L.Dense(2, name="zd")(h), "a_out": L.Dense(6, name="ad")(h)})
    _random_bn(model.layers)
    return model


@pytest.fixture(scope="module", params=["keras", "tf_keras"])
def dict_model(request, tmp_path_factory):
    import importlib

    K = importlib.import_module(request.param)
    folder = tmp_path_factory.mktemp(f"dict_{request.param}")
    src = folder / ("m.keras" if request.param == "keras" else "m.h5")
    _build(K).save(src)
    rng = np.random.default_rng(1)
    feed = {"z_in": rng.normal(size=(5, 4)).astype("float32"), "a_in": rng.normal(size=(5, 3)).astype("float32")}
    loader = K.saving.load_model if request.param == "keras" else K.models.load_model
    ref = loader(src, compile=False)(feed, training=False)  # the writing framework's own reading
    return request.param, src, feed, {k: np.asarray(v) for k, v in ref.items()}


@pytest.mark.parametrize("suffix", [".onnx", ".keras", ".h5"])
def test_dict_inputs_and_outputs_convert_and_match_by_key(dict_model, suffix, tmp_path):
    framework, src, feed, ref = dict_model
    out = tmp_path / f"out{suffix}"
    rep = bnrewrite.convert(src, out)
    assert rep.verification["ok"]
    if suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})
        # outputs in the frameworks' flatten order: sorted keys
        for key, g in zip(sorted(ref), got):
            assert_close(g, ref[key], f"onnx {key}")
        return
    if suffix == ".keras":
        import keras

        model = keras.saving.load_model(out, compile=False)
    else:
        import tf_keras

        model = tf_keras.models.load_model(out, compile=False) if framework == "tf_keras" else None
        if model is None:
            import keras

            model = keras.saving.load_model(out, compile=False)
    got = model(feed, training=False)  # still a model of dicts: fed and read by key
    assert isinstance(got, dict) and set(got) == set(ref)
    for key in ref:
        assert_close(np.asarray(got[key]), ref[key], f"{suffix} {key}")
