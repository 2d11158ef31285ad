"""Keras 1.x files (issue 13, part 3): the Keras 1 dialect mapped to Keras 2, Keras 1 weight layouts
converted, Theano kernels flipped, what does not map refused by name.

How we know the layout: no Keras 1 runs here, so the fixtures are written by hand with h5py
(``fixtures/make_fixtures.py: write_keras1_h5``) in Keras 1.2.2's layout, read from the Keras-1.2.2
sdist on PyPI: ``keras/models.py: save_model`` (root attrs ``keras_version`` + ``model_config``, no
``backend``), ``keras/engine/topology.py: save_weights_to_hdf5_group`` (``model_weights`` with
``layer_names``, per layer ``weight_names`` = the variables' names, ``dense_1_W:0`` under
TensorFlow, ``dense_1_W`` under Theano), the layers' ``get_config`` (``nb_filter``/``nb_row``/
``nb_col``/``border_mode``/``subsample``/``dim_ordering``/``init``/``bias``, Dropout ``p``, BN
``mode``/``axis``, Merge ``mode``/``mode_type``/``concat_axis``...), Convolution2D's ``W_shape``
((rows, cols, in, filters) for "tf", (filters, in, rows, cols) for "th") and BatchNormalization's
weights ``[gamma, beta, running_mean, running_std]`` with ``running_std`` passed as the variance to
``K.batch_normalization``. Theano's ``conv2d`` is a true convolution (the kernel is flipped), which
is why Keras 2.0.8's ``preprocess_weights_for_loading`` applied ``conv_utils.convert_kernel``.

Every expected output is computed here with numpy from the arrays in the file, with Keras 1's
semantics; never by bnrewrite.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_close

import bnrewrite
from bnrewrite.errors import InputError, UnsupportedModelError

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
EPS = 1e-3  # Keras 1 BatchNormalization's default epsilon (the fixtures' configs say so too)


def _weights(path, layer):
    with h5py.File(path, "r") as f:
        g = f["model_weights"][layer]
        return [np.asarray(g[n]) for n in [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]]


def _bn(x, gamma, beta, mean, var, axis=-1):
    shape = [1] * x.ndim
    shape[axis] = -1
    r = lambda a: a.reshape(shape)  # noqa: E731
    return (x - r(mean)) / np.sqrt(r(var) + EPS) * r(gamma) + r(beta)


def _correlate_nhwc_same(x, w, b):
    """TensorFlow's conv2d (cross-correlation), padding same, stride 1: x (N, H, W, C), w (r, c, C, F)."""
    r, c = w.shape[:2]
    xp = np.pad(x, ((0, 0), (r // 2, r - 1 - r // 2), (c // 2, c - 1 - c // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (w.shape[3],))
    for i in range(r):
        for j in range(c):
            out += np.einsum("nhwc,cf->nhwf", xp[:, i:i + x.shape[1], j:j + x.shape[2], :], w[i, j])
    return out + b


def _convolve_nchw_valid(x, w, b):
    """Theano's conv2d (true convolution: the kernel flipped), valid: x (N, C, H, W), w (F, C, r, c)."""
    f_, c_, r, c = w.shape
    ho, wo = x.shape[2] - r + 1, x.shape[3] - c + 1
    wf = w[:, :, ::-1, ::-1]
    out = np.zeros((x.shape[0], f_, ho, wo))
    for i in range(r):
        for j in range(c):
            out += np.einsum("nchw,fc->nfhw", x[:, :, i:i + ho, j:j + wo], wf[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def _onnx(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype("float32")})[0]


def _with_attr(tmp_path, name, **attrs) -> Path:
    p = tmp_path / name
    shutil.copy(FIX / name, p)
    with h5py.File(p, "r+") as f:
        for k, v in attrs.items():
            f.attrs[k] = v.encode()
    return p


def test_functional_tensorflow_kernels(tmp_path):
    """Convolution2D (tf ordering), BN mode 0, MaxPooling2D, Merge(sum), Dropout(p), Dense(output_dim):
    the user states the backend as the refusal line asks; the ONNX matches numpy's Keras 1 forward pass."""
    src = _with_attr(tmp_path, "keras1_functional.h5", backend="tensorflow")
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3))
    w, b = _weights(src, "convolution2d_1")
    y = _bn(_correlate_nhwc_same(x, w, b), *_weights(src, "batchnormalization_1"))
    y = np.maximum(y, 0).reshape(4, 4, 2, 4, 2, 4).max(axis=(2, 4)).reshape(4, -1)
    (w1, b1), (w2, b2), (w3, b3) = (_weights(src, n) for n in ("dense_1", "dense_2", "dense_3"))
    z = (y @ w1 + b1) + (y @ w2 + b2)
    z = z @ w3 + b3
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)

    out = tmp_path / "f.onnx"
    rep = bnrewrite.convert(src, out)
    assert_close(_onnx(out, x), want, "Keras 1 functional vs numpy")
    mg = bnrewrite.load(src)
    assert mg.layer("merge_1").class_name == "Add" and mg.layer("convolution2d_1").class_name == "Conv2D"
    assert mg.layer("convolution2d_1").config["kernel_size"] == [3, 3]
    assert mg.layer("dropout_1").config["rate"] == 0.5
    assert any("Keras 1 file" in n for n in rep.notes)


def test_no_backend_with_convolutions_refused():
    with pytest.raises(UnsupportedModelError) as ei:
        bnrewrite.load(FIX / "keras1_functional.h5")
    msg = str(ei.value)
    assert "\n" not in msg and "convolution2d_1" in msg and "backend" in msg and "Theano" in msg, msg


def test_theano_kernels_flipped(tmp_path):
    """dim_ordering "th", backend "theano": Keras 1 computed a true convolution on (F, C, r, c) kernels."""
    src = FIX / "keras1_theano.h5"
    x = np.random.default_rng(1).normal(size=(4, 3, 6, 6))
    w, b = _weights(src, "convolution2d_1")
    y = _bn(_convolve_nchw_valid(x, w, b), *_weights(src, "batchnormalization_1"), axis=1).reshape(4, -1)
    wd, bd = _weights(src, "dense_1")
    want = y @ wd + bd
    out = tmp_path / "t.onnx"
    bnrewrite.convert(src, out)
    assert_close(_onnx(out, x), want, "Theano Keras 1 vs numpy true convolution")
    # the flip matters: the same kernels used as TensorFlow's (a correlation) give another answer
    corr = _convolve_nchw_valid(x, w[:, :, ::-1, ::-1], b)
    unflipped = _bn(corr, *_weights(src, "batchnormalization_1"), axis=1).reshape(4, -1) @ wd + bd
    assert np.abs(unflipped - want).max() > 1e-2


def test_dense_sequential_without_version(tmp_path):
    """Keras 1.0-style (no keras_version): Dense(output_dim) -> BN -> tanh -> Dense, to .h5 and .keras."""
    import keras
    import tf_keras

    src = FIX / "keras1_dense.h5"
    x = np.random.default_rng(2).normal(size=(5, 6))
    (w1, b1), bn, (w2, b2) = (_weights(src, n) for n in ("dense_1", "batchnormalization_1", "dense_2"))
    want = np.tanh(_bn(x @ w1 + b1, *bn)) @ w2 + b2
    bnrewrite.convert(src, tmp_path / "d.h5")
    got = tf_keras.models.load_model(tmp_path / "d.h5", compile=False).predict(x.astype("float32"), verbose=0)
    assert_close(got, want, ".h5 vs numpy")
    bnrewrite.convert(src, tmp_path / "d.keras")
    got = keras.saving.load_model(tmp_path / "d.keras", compile=False).predict(x.astype("float32"), verbose=0)
    assert_close(got, want, ".keras vs numpy")


def _edited(tmp_path, edit) -> Path:
    p = tmp_path / "edited.h5"
    shutil.copy(FIX / "keras1_dense.h5", p)
    with h5py.File(p, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg["config"])
        f.attrs["model_config"] = json.dumps(cfg).encode()
    return p


@pytest.mark.parametrize("edit, needles", [
    (lambda layers: layers[1]["config"].update(mode=2), ["batchnormalization_1", "mode=2"]),
    (lambda layers: layers.insert(3, {"class_name": "LSTM", "config": {"name": "lstm_1", "output_dim": 2}}),
     ["lstm_1", "LSTM", "no mapping"]),
    (lambda layers: layers[0]["config"].update(W_learning_rate_multiplier=2.0),
     ["dense_1", "W_learning_rate_multiplier"]),
    (lambda layers: layers[0]["config"].update(init="my_init"), ["dense_1", "my_init"]),
])
def test_what_does_not_map_is_refused_by_name(tmp_path, edit, needles):
    with pytest.raises(InputError) as ei:
        bnrewrite.load(_edited(tmp_path, edit))
    msg = str(ei.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


@pytest.mark.parametrize("merge, needles", [
    ({"mode": "cos", "mode_type": "raw"}, ["merge_1", "cos"]),
    ({"mode": "\x00code", "mode_type": "lambda"}, ["merge_1", "Python function"]),
])
def test_merge_modes_refused(tmp_path, merge, needles):
    p = tmp_path / "m.h5"
    shutil.copy(FIX / "keras1_functional.h5", p)
    with h5py.File(p, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        lc = next(lc for lc in cfg["config"]["layers"] if lc["name"] == "merge_1")
        lc["config"].update(merge)
        f.attrs["model_config"] = json.dumps(cfg).encode()
        f.attrs["backend"] = b"tensorflow"
    with pytest.raises(InputError) as ei:
        bnrewrite.load(p)
    assert all(n in str(ei.value) for n in needles), str(ei.value)


@pytest.mark.parametrize("mode, combine", [
    ("mul", lambda a, b: a * b), ("ave", lambda a, b: (a + b) / 2), ("max", np.maximum),
])
def test_merge_modes_map(tmp_path, mode, combine):
    """Merge(mode) -> Multiply / Average / Maximum, checked with numpy through ``rewrite`` of the path."""
    p = tmp_path / "m.h5"
    shutil.copy(FIX / "keras1_functional.h5", p)
    with h5py.File(p, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        next(lc for lc in cfg["config"]["layers"] if lc["name"] == "merge_1")["config"]["mode"] = mode
        f.attrs["model_config"] = json.dumps(cfg).encode()
        f.attrs["backend"] = b"tensorflow"
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3))
    w, b = _weights(p, "convolution2d_1")
    y = _bn(_correlate_nhwc_same(x, w, b), *_weights(p, "batchnormalization_1"))
    y = np.maximum(y, 0).reshape(2, 4, 2, 4, 2, 4).max(axis=(2, 4)).reshape(2, -1)
    (w1, b1), (w2, b2), (w3, b3) = (_weights(p, n) for n in ("dense_1", "dense_2", "dense_3"))
    z = combine(y @ w1 + b1, y @ w2 + b2) @ w3 + b3
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    model = bnrewrite.rewrite(p)
    assert_close(model.predict(x.astype("float32"), verbose=0), want, f"Merge(mode={mode!r}) vs numpy")
