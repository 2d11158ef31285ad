"""Each model rebuilt by the framework that wrote it, verified against the original file.

Every model here is written by tf_keras (Keras 2) -- some then rewritten into the
config dialects of older writers (Keras 2.1 list-form Sequential, tf.keras 1.x
initializers with ``dtype``, wrappers without ``module``) -- with randomized BN
statistics. The reference is always tf_keras's own ``load_model`` of the file the
test wrote (a trusted fixture) run in inference mode, never bnrewrite.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import bnrewrite
from conftest import assert_close


# ---------------------------------------------------------------- building test files
def _rand_bn(model, seed=0):
    import tf_keras

    rng = np.random.default_rng(seed)
    for layer in model.submodules if hasattr(model, "submodules") else model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization) and layer.weights:
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.5, b.shape),
                               rng.normal(0, 0.5, m.shape), rng.uniform(0.5, 2.0, v.shape)])


def _rewrite_config(path, fn, version=None):
    """Rewrite a saved ``.h5``'s model_config (older writers' dialects)."""
    import h5py

    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(fn(cfg)).encode()
        if version:
            f.attrs["keras_version"] = version.encode()


def _strip_modules(obj):
    if isinstance(obj, dict):
        return {k: _strip_modules(v) for k, v in obj.items() if k not in ("module", "registered_name")}
    if isinstance(obj, list):
        return [_strip_modules(v) for v in obj]
    return obj


def _add_initializer_dtype(obj):
    if isinstance(obj, dict):
        out = {k: _add_initializer_dtype(v) for k, v in obj.items()}
        for k, v in out.items():
            if k.endswith("_initializer") and isinstance(v, dict) and isinstance(v.get("config"), dict):
                v["config"]["dtype"] = "float32"
        return out
    if isinstance(obj, list):
        return [_add_initializer_dtype(v) for v in obj]
    return obj


def _build(name, folder):
    import tensorflow as tf
    import tf_keras as K

    L = K.layers
    tf_keras_seed = {"seed": 0}
    K.utils.set_random_seed(tf_keras_seed["seed"])
    path = folder / f"{name}.h5"
    if name == "sequential_k21":  # Keras 2.1: Sequential config is the plain list of layers
        m = K.Sequential([L.Dense(8, input_shape=(6,)), L.BatchNormalization(), L.Activation("relu"),
                          L.Dense(3), L.BatchNormalization(axis=[1])])
        _rand_bn(m)
        m.save(path)
        _rewrite_config(path, lambda c: _strip_modules(c["config"]["layers"]) and
                        {"class_name": "Sequential", "config": _strip_modules(c["config"]["layers"])}, "2.1.6")
    elif name == "tf1_dtype_init":  # tf.keras 1.x: initializers carry dtype, wrappers no module
        i = K.Input((4, 10, 10, 3))
        x = L.TimeDistributed(L.Conv2D(4, 3))(i)
        x = L.TimeDistributed(L.BatchNormalization())(x)
        x = L.TimeDistributed(L.GlobalAveragePooling2D())(x)
        x = L.LSTM(5)(x)
        m = K.Model(i, x)
        _rand_bn(m)
        m.save(path)
        _rewrite_config(path, lambda c: _add_initializer_dtype(_strip_modules(c)), "2.2.4-tf")
    elif name == "leaky_separable":  # LeakyReLU(alpha), SeparableConv2D + BN, tf.* op layers
        i = K.Input((12, 12, 3))
        x = L.SeparableConv2D(8, 3, padding="same", use_bias=False)(i)
        x = L.BatchNormalization(name="bn_sep")(x)
        x = L.LeakyReLU(alpha=0.2)(x)
        x = x * 2.0 + 1.0
        x = tf.nn.relu6(x)[:, 1:, :, :]
        # the activations Keras 2 code calls on tensors (keras.activations.swish / gelu -> tf.nn.*)
        x = tf.nn.silu(x) + tf.nn.silu(x, beta=1.5) + tf.nn.gelu(x) + tf.nn.gelu(x, approximate=True)
        x = tf.nn.elu(x) + tf.nn.selu(x) + tf.math.softplus(x) + tf.nn.leaky_relu(x, alpha=0.1)
        x = tf.math.erf(x) * tf.math.reciprocal(x * x + 1.0)
        x = L.GlobalAveragePooling2D()(x)
        m = K.Model(i, x)
        _rand_bn(m)
        m.save(path)
    elif name == "hard_sigmoid_lstm":  # tf.keras hard_sigmoid: no Keras 3 equivalent
        i = K.Input((6,), dtype="int32")
        x = L.Embedding(40, 8)(i)
        x = L.BatchNormalization()(x)
        x = L.LSTM(5, recurrent_activation="hard_sigmoid")(x)
        m = K.Model(i, x)
        _rand_bn(m)
        m.save(path)
    elif name == "hard_sigmoid_zoo":  # every layer whose old hard_sigmoid input its weights produce
        i = K.Input((6,), dtype="int32")
        x = L.Embedding(40, 8)(i)
        x = L.BatchNormalization()(x)
        x = L.LSTM(5, recurrent_activation="hard_sigmoid", return_sequences=True)(x)
        x = L.Bidirectional(L.GRU(4, activation="hard_sigmoid", recurrent_activation="hard_sigmoid",
                                  reset_after=False, return_sequences=True))(x)
        x = L.Bidirectional(L.LSTM(3, recurrent_activation="hard_sigmoid"),
                            backward_layer=L.GRU(2, recurrent_activation="hard_sigmoid", go_backwards=True))(x)
        v = K.Input((4, 8, 8, 2))
        y = L.ConvLSTM2D(3, 3, recurrent_activation="hard_sigmoid", return_sequences=True)(v)
        y = L.TimeDistributed(L.Conv2D(2, 3, activation="hard_sigmoid"))(y)
        y = L.TimeDistributed(L.GlobalAveragePooling2D())(y)
        y = L.SimpleRNN(3, activation="hard_sigmoid", return_sequences=True)(y)
        y = L.RNN(L.GRUCell(3, recurrent_activation="hard_sigmoid"))(y)  # reset_after=True: bias (2, 3u)
        u = K.Input((9, 9, 3))
        z = L.SeparableConv2D(4, 3, activation="hard_sigmoid")(u)
        z = L.SpatialDropout2D(0.3)(z)  # Keras 3's takes no ``trainable``
        z = L.BatchNormalization()(z)
        z = L.DepthwiseConv2D(3, activation="hard_sigmoid")(z)
        z = L.Concatenate()([L.Flatten()(z), L.Dense(6, activation="hard_sigmoid", name="dense_hard")(L.Flatten()(u))])
        m = K.Model([i, v, u], [x, y, z])
        rng = np.random.default_rng(1)
        for layer in m.layers:  # large weights: pre-activations reach both clipped ends
            if layer.weights and not isinstance(layer, L.BatchNormalization):
                layer.set_weights([w * 3 + rng.normal(0, .3, w.shape) for w in layer.get_weights()])
        _rand_bn(m)
        m.save(path)
    elif name in ("hard_sigmoid_activation_layer", "hard_sigmoid_lstm_cell_state"):
        i = K.Input((5, 4))
        x = L.Dense(3)(i)
        x = L.Activation("hard_sigmoid")(x) if name == "hard_sigmoid_activation_layer" else \
            L.LSTM(3, activation="hard_sigmoid")(x)
        m = K.Model(i, x)
        m.save(path)
    elif name in ("augmentation", "augmentation_crop"):  # augmentation inside the model (Keras tutorials)
        i = K.Input((16, 16, 3))
        x = L.RandomFlip()(i)
        x = L.RandomRotation(0.1)(x)
        x = L.RandomZoom(0.1)(x)
        x = L.RandomTranslation(0.1, 0.1)(x)
        x = L.RandomContrast(0.2)(x)
        x = L.RandomBrightness(0.2)(x)
        x = L.RandomCrop(12, 12)(x) if name == "augmentation_crop" else x
        x = L.Conv2D(4, 3)(x)
        x = L.BatchNormalization()(x)
        m = K.Model(i, L.GlobalAveragePooling2D()(x))
        _rand_bn(m)
        m.save(path)
    elif name in ("thresholded_relu", "locally_connected"):  # Keras 2 layers Keras 3 lacks
        i = K.Input((8, 8, 3))
        x = L.BatchNormalization()(L.Conv2D(4, 3)(i))
        if name == "thresholded_relu":
            x = L.ThresholdedReLU(theta=0.3)(x)
        else:  # DeepFace-style: unshared weights per position
            x = L.BatchNormalization()(L.LocallyConnected2D(3, 3, activation="relu")(x))
        m = K.Model(i, L.Flatten()(x))
        _rand_bn(m)
        m.save(path)
    elif name == "td_sequential":  # a per-frame encoder model inside TimeDistributed (video classifiers)
        enc = K.Sequential([L.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(),
                            L.GlobalAveragePooling2D()], name="enc")
        i = K.Input((5, 8, 8, 3))
        m = K.Model(i, L.GRU(3)(L.TimeDistributed(enc)(i)))
        _rand_bn(m)
        m.save(path)
    elif name.startswith("cudnn_"):  # Keras 2.2.4 CuDNNLSTM/CuDNNGRU (GPU-only), BN in front
        i = K.Input((6, 3))
        x = L.BatchNormalization(name="bn")(i)
        rnn = {"cudnn_lstm": L.LSTM(4, name="rnn", return_sequences=True),
               "cudnn_gru": L.GRU(4, name="rnn", reset_after=True, return_sequences=True),
               "cudnn_bidi": L.Bidirectional(L.LSTM(4, name="rl"), name="rnn")}[name]
        m = K.Model(i, rnn(x))
        _rand_bn(m)
        m.save(path)
        _to_cudnn(path)
    elif name.startswith("mha_"):  # MultiHeadAttention: plain, with a mask, robust softmax with a mask
        q = K.Input((5, 8))
        x = L.BatchNormalization()(q)
        if name == "mha_plain":
            m = K.Model(q, L.MultiHeadAttention(2, 4, name="mha")(x, x, use_causal_mask=True))
        elif name == "mha_embedding_mask":  # Keras's implicit mask, from mask_zero
            t = K.Input((5,), dtype="int32")
            e = L.Embedding(20, 8, mask_zero=True, name="emb")(t)
            m = K.Model(t, L.MultiHeadAttention(2, 4, name="mha")(e, e))
        else:
            mask = K.Input((5, 5))
            robust = {"softmax_robust_masking": True} if name == "mha_robust_mask" else {}
            m = K.Model([q, mask], L.MultiHeadAttention(2, 4, name="mha", **robust)(x, x, attention_mask=mask))
        _rand_bn(m)
        m.save(path)
    elif name == "td_chain_mask":  # consecutive TimeDistributed with reshapes; BN called with a mask
        i = K.Input((5, 12, 12, 3))
        x = L.TimeDistributed(L.Conv2D(4, 3))(i)
        x = L.TimeDistributed(L.BatchNormalization())(x)
        x = L.TimeDistributed(L.MaxPooling2D())(x)
        x = L.TimeDistributed(L.Flatten())(x)
        s = K.Input((7, 3))
        y = L.Masking()(s)
        y = L.Dense(4)(y)
        y = L.BatchNormalization()(y)
        y = L.LSTM(3)(y)
        x = L.LSTM(4)(x)
        m = K.Model([i, s], L.Concatenate()([x, y]))
        _rand_bn(m)
        m.save(path)
    elif name == "unet_open":  # open spatial size that needs a multiple of 4
        u = K.Input((None, None, 3))
        a = L.Conv2D(4, 3, padding="same")(u)
        a = L.BatchNormalization()(a)
        b = L.MaxPooling2D()(a)
        b = L.Conv2D(8, 3, padding="same")(b)
        c = L.MaxPooling2D()(b)
        c = L.UpSampling2D()(c)
        c = L.Concatenate()([c, b])
        c = L.UpSampling2D()(c)
        c = L.Concatenate()([c, a])
        m = K.Model(u, L.Conv2D(2, 1)(c))
        _rand_bn(m)
        m.save(path)
    else:  # pragma: no cover
        raise KeyError(name)
    return path


def _to_cudnn(path, seed=5):
    """Rewrite a saved LSTM/GRU model as Keras 2.2.4 writes the same model with CuDNNLSTM/CuDNNGRU:
    the class and its config keys (as the real-model set's keras-2.2.4-cudnn dialect writes them), and
    random weights in the CuDNN layout (bias: 2 x gates x units)."""
    import h5py
    from realmodels.legacy import _CUDNN, _cudnn_config

    rng = np.random.default_rng(seed)

    def cudnn(lc):
        cls = _CUDNN.get(lc["class_name"])
        if cls:
            lc["class_name"], lc["config"] = cls, _cudnn_config(lc["class_name"], lc["config"])
        elif isinstance(lc.get("config", {}).get("layer"), dict):
            cudnn(lc["config"]["layer"])
        return cls is not None or lc["class_name"] == "Bidirectional"

    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        names = [lc["name"] for lc in cfg["config"]["layers"] if cudnn(lc)]
        f.attrs["model_config"] = json.dumps(cfg).encode()
        f.attrs["keras_version"] = b"2.2.4"
        for name in names:
            g = f[f"model_weights/{name}"]
            for w in g.attrs["weight_names"]:
                w = w.decode() if isinstance(w, bytes) else w
                shape = g[w].shape
                del g[w]
                if w.endswith("bias:0"):
                    shape = (2 * shape[-1],)  # LSTM (4u,) / GRU (2, 3u) -> input and recurrent biases
                g[w] = rng.normal(0, 0.5, shape).astype("float32")


def _cudnn_numpy(path, x):
    """cuDNN's recurrences in numpy, from the raw file: each gate's kernel block (inputs x units) is
    read by cuDNN as a row-major (units x inputs) matrix W, a recurrent block R (units x units)
    as itself; the bias is [input biases; recurrent biases]. LSTM gates i, f, c, o; GRU (Keras's
    order) z, r, h with the reset gate applied after the recurrent product."""
    import h5py

    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        bn = {k: f[f"model_weights/bn/bn/{k}:0"][()] for k in ("gamma", "beta", "moving_mean", "moving_variance")}
        rl = next(lc for lc in cfg["config"]["layers"] if lc["name"] == "rnn")
        g = f["model_weights/rnn"]
        kern, rec, bias = [g[w][()] for w in g.attrs["weight_names"]]
    eps = next(lc for lc in cfg["config"]["layers"] if lc["name"] == "bn")["config"]["epsilon"]
    x = (x - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + eps) * bn["gamma"] + bn["beta"]
    x = x.astype("float64")
    u = rec.shape[0]
    gates = 4 if rl["class_name"] == "CuDNNLSTM" else 3
    W = [np.ascontiguousarray(b).reshape(u, -1) for b in np.hsplit(kern, gates)]
    R = [np.ascontiguousarray(b).reshape(u, u) for b in np.hsplit(rec, gates)]
    bw, br = np.split(bias, 2)
    bw, br = np.split(bw, gates), np.split(br, gates)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h = np.zeros((x.shape[0], u))
    c = np.zeros_like(h)
    out = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        lin = [xt @ W[k].T + bw[k] for k in range(gates)]
        rh = [h @ R[k].T + br[k] for k in range(gates)]
        if gates == 4:
            i, f_, o = sig(lin[0] + rh[0]), sig(lin[1] + rh[1]), sig(lin[3] + rh[3])
            c = f_ * c + i * np.tanh(lin[2] + rh[2])
            h = o * np.tanh(c)
        else:
            z, r = sig(lin[0] + rh[0]), sig(lin[1] + rh[1])
            h = z * h + (1 - z) * np.tanh(lin[2] + r * rh[2])
        out.append(h)
    return np.stack(out, 1)


@pytest.fixture(scope="session")
def legacy_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _build(name, folder)
        return cache[name]

    return get


def _reference(path, xs):
    """tf_keras's own reading of the file, in inference mode."""
    import tf_keras

    model = tf_keras.models.load_model(path, compile=False)
    ys = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(y) for y in (ys if isinstance(ys, (list, tuple)) else [ys])]


def _inputs(path, sizes=None, seed=3):
    import tf_keras

    model = tf_keras.models.load_model(path, compile=False)
    rng = np.random.default_rng(seed)
    xs = []
    for t in model.inputs:
        shape = [2] + [d if d is not None else (sizes or 16) for d in t.shape[1:]]
        if t.dtype.is_integer:
            xs.append(rng.integers(0, 40, size=shape).astype(t.dtype.as_numpy_dtype))
        else:
            xs.append(rng.standard_normal(shape).astype("float32"))
    return xs


def _onnx(path, xs):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})


def _keras3(path, xs):
    import keras

    model = keras.saving.load_model(path, compile=False)
    ys = model(xs, training=False)
    return [np.asarray(y) for y in keras.tree.flatten(ys)]


@pytest.fixture(scope="session")
def converted(legacy_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    cache = {}

    def get(name, fmt, **options):
        key = (name, fmt, tuple(sorted(options.items())))
        if key not in cache:
            dst = out / f"{name}.{len(cache)}.{fmt}"
            cache[key] = (bnrewrite.convert(legacy_files(name), dst, **options), dst)
        return cache[key]

    return get


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("name", ["sequential_k21", "tf1_dtype_init", "leaky_separable", "td_chain_mask"])
@pytest.mark.parametrize("fmt", ["onnx", "keras"])
def test_legacy_dialects_match_tf_keras(legacy_files, converted, name, fmt):
    """Older writers' dialects are read as tf_keras reads them; .onnx (rebuilt by tf_keras)
    and .keras (migrated to Keras 3) both match tf_keras on the original file."""
    rep, dst = converted(name, fmt)
    assert rep.verification["ok"] and rep.verification["no_reference"] is None, rep.verification
    assert rep.verification["reference"].startswith("tf_keras")
    assert rep.output["framework"] == ("tf_keras" if fmt == "onnx" else "keras")
    xs = _inputs(legacy_files(name))
    got = _onnx(dst, xs) if fmt == "onnx" else _keras3(dst, xs)
    for g, w in zip(got, _reference(legacy_files(name), xs)):
        assert_close(g, w, f"{name} {fmt}")


def test_leaky_relu_alpha_survives_migration(legacy_files, converted):
    """LeakyReLU(alpha=0.2) keeps its slope in Keras 3 (it used to become 0.3, silently)."""
    import keras

    rep, dst = converted("leaky_separable", "keras")
    model = keras.saving.load_model(dst, compile=False)
    leaky = [l for l in model.layers if isinstance(l, keras.layers.LeakyReLU)]
    assert leaky and all(abs(l.negative_slope - 0.2) < 1e-7 for l in leaky)
    assert any("negative_slope" in n for n in rep.migration)


def test_separable_conv_bn_folds_into_pointwise(converted):
    rep, dst = converted("leaky_separable", "onnx")
    fold = next(p for p in rep.passes if p["name"] == "fold_bn")
    assert fold["changed"] == ["bn_sep"], fold
    assert "BatchNormalization" not in rep.output["ops"]


def test_old_hard_sigmoid_exact_in_onnx_and_keras(legacy_files, converted):
    """tf.keras's hard_sigmoid(z) = clip(0.2z + 0.5) is Keras 3's clip(z'/6 + 0.5) of z' = 1.2z: the
    migration scales the weights producing z, and the Keras 3 reload matches tf_keras's reading."""
    for fmt in ("onnx", "keras"):
        rep, dst = converted("hard_sigmoid_lstm", fmt)
        xs = _inputs(legacy_files("hard_sigmoid_lstm"))
        got = _onnx(dst, xs)[0] if fmt == "onnx" else _keras3(dst, xs)[0]
        assert_close(got, _reference(legacy_files("hard_sigmoid_lstm"), xs)[0], f"hard_sigmoid {fmt}")
    assert any("recurrent_activation hard_sigmoid" in n and "gates i, f, o" in n for n in rep.migration), \
        rep.migration


def test_old_hard_sigmoid_migrates_in_every_layer_that_can_take_it(legacy_files, converted):
    """LSTM, GRU (both reset_after forms, activation and recurrent_activation), Bidirectional with a
    different backward layer, ConvLSTM2D, TimeDistributed(Conv2D), SimpleRNN, RNN(GRUCell),
    SeparableConv2D, DepthwiseConv2D, Dense: the .keras output matches tf_keras on the original.
    (A SpatialDropout2D rides along: tf.keras saves ``trainable``, which Keras 3's refuses.)"""
    import tf_keras

    path = legacy_files("hard_sigmoid_zoo")
    rep, dst = converted("hard_sigmoid_zoo", "keras")
    assert rep.verification["ok"] and rep.verification["reference"].startswith("tf_keras")
    xs = _inputs(path)
    xs[1] *= 3
    xs[2] *= 4
    want = _reference(path, xs)
    for i, (g, w) in enumerate(zip(_keras3(dst, xs), want)):
        assert_close(g, w, f"hard_sigmoid zoo output {i}")
    # the inputs reach both clipped ends and the slope between (else 1/6 vs 0.2 would not show)
    original = tf_keras.models.load_model(path, compile=False)
    dense = tf_keras.Model(original.inputs, original.get_layer("dense_hard").output)(xs, training=False)
    dense = np.asarray(dense)
    assert (dense == 0).any() and (dense == 1).any() and ((dense > 0) & (dense < 1)).any()
    folded = [n for n in rep.migration if "scaled by 1.2" in n]
    assert len(folded) == 14, folded  # 11 layers; one per activation and Bidirectional side


def test_a_wrong_hard_sigmoid_slope_is_caught_against_the_original(legacy_files, tmp_path, monkeypatch):
    """Negative case: without the factor (1.0), Keras 3's hard_sigmoid differs from tf.keras's and
    verification against tf_keras's reading of the file fails: exit 3, nothing written."""
    from bnrewrite.build import migrate as mig

    monkeypatch.setattr(mig, "HARD_SIGMOID_SLOPE", 1.0)
    with pytest.raises(bnrewrite.VerificationError, match="differs from the original model"):
        bnrewrite.convert(legacy_files("hard_sigmoid_lstm"), tmp_path / "o.keras")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["hard_sigmoid_activation_layer", "hard_sigmoid_lstm_cell_state"])
def test_old_hard_sigmoid_without_weights_to_scale_is_refused_for_keras(legacy_files, tmp_path, name):
    """An Activation layer has no weights to take the factor; LSTM's ``activation`` also takes the
    cell state. Refused for .keras, naming the way out; the ONNX output (tf_keras) is exact."""
    with pytest.raises(bnrewrite.UnsupportedModelError, match=r"hard_sigmoid.*write \.onnx or \.h5"):
        bnrewrite.convert(legacy_files(name), tmp_path / "out.keras")
    assert not (tmp_path / "out.keras").exists()
    bnrewrite.convert(legacy_files(name), tmp_path / "out.onnx")
    xs = _inputs(legacy_files(name))
    assert_close(_onnx(tmp_path / "out.onnx", xs)[0], _reference(legacy_files(name), xs)[0], name)


def test_augmentation_layers_pass_through_and_migrate(legacy_files, converted, tmp_path):
    """tf.keras augmentation layers are read (pure tensor ops, the identity at inference), exported to
    ONNX and migrated (``rng_type`` dropped); RandomCrop, whose inference resize differs in Keras 3,
    is refused for .keras, and tf2onnx cannot export tf_keras's: one clear refusal each, nothing written."""
    xs = _inputs(legacy_files("augmentation"))
    for fmt in ("onnx", "keras"):
        rep, dst = converted("augmentation", fmt)
        got = _onnx(dst, xs)[0] if fmt == "onnx" else _keras3(dst, xs)[0]
        assert_close(got, _reference(legacy_files("augmentation"), xs)[0], f"augmentation {fmt}")
    with pytest.raises(bnrewrite.UnsupportedModelError, match="RandomCrop.*write .onnx"):
        bnrewrite.convert(legacy_files("augmentation_crop"), tmp_path / "o.keras")
    # tf_keras's RandomCrop keeps a stateful RNG op under its inference branch, which tf2onnx cannot export
    with pytest.raises(bnrewrite.UnsupportedModelError, match="tf2onnx could not export"):
        bnrewrite.convert(legacy_files("augmentation_crop"), tmp_path / "o.onnx")
    assert not list(tmp_path.iterdir())


def test_thresholded_relu_migrates_to_relu_threshold(legacy_files, converted):
    """tf.keras ThresholdedReLU(theta) (x where x > theta, else 0) is Keras 3's ReLU(threshold=theta):
    .onnx and .keras match tf_keras, on inputs that land on both sides of theta."""
    import keras

    path = legacy_files("thresholded_relu")
    xs = _inputs(path)
    want = _reference(path, xs)[0]
    assert (want == 0).mean() > 0.2 and (np.abs(want) > 0.3).mean() > 0.2  # both sides of theta occur
    for fmt in ("onnx", "keras"):
        rep, dst = converted("thresholded_relu", fmt)
        got = _onnx(dst, xs)[0] if fmt == "onnx" else _keras3(dst, xs)[0]
        assert_close(got, want, f"thresholded_relu {fmt}")
    relu = [l for l in keras.saving.load_model(dst, compile=False).layers if isinstance(l, keras.layers.ReLU)]
    assert len(relu) == 1 and abs(relu[0].threshold - 0.3) < 1e-7
    assert any("ThresholdedReLU" in n for n in rep.migration)


@pytest.mark.parametrize("name, why", [
    ("locally_connected", "Keras 3 has no layer class 'LocallyConnected2D'"),
])
def test_legacy_content_converts_and_is_refused_for_keras3(legacy_files, converted, tmp_path, name, why):
    """LocallyConnected2D (tf_keras only, DeepFace-style) is read and exported to ONNX exactly; .keras
    (no such Keras 3 class) is refused with the reason and the way out, nothing written."""
    path = legacy_files(name)
    xs = _inputs(path)
    rep, dst = converted(name, "onnx")
    assert_close(_onnx(dst, xs)[0], _reference(path, xs)[0], f"{name} onnx")
    with pytest.raises(bnrewrite.UnsupportedModelError, match=f"{why}.*write .onnx or .h5"):
        bnrewrite.convert(path, tmp_path / "o.keras")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["cudnn_lstm", "cudnn_gru"])
def test_cudnn_rnn_runs_as_the_standard_layer(legacy_files, converted, name):
    """Keras 2.2.4 CuDNNLSTM/CuDNNGRU files (GPU-only: no CPU kernel, no ONNX op) convert: the pass
    rewrites them as LSTM / GRU(reset_after=True) with the weights in that layout. .onnx and .keras
    equal cuDNN's recurrence computed in numpy from the raw file, and verification ran against
    tf_keras's own reading (its loader converts the CuDNN weights itself)."""
    path = legacy_files(name)
    xs = _inputs(path)
    want = _cudnn_numpy(path, xs[0])
    for fmt in ("onnx", "keras"):
        rep, dst = converted(name, fmt)
        assert next(p for p in rep.passes if p["name"] == "cudnn_rnn")["changed"] == ["rnn"]
        assert rep.verification["ok"] and rep.verification["reference"].startswith("tf_keras")
        got = _onnx(dst, xs)[0] if fmt == "onnx" else _keras3(dst, xs)[0]
        assert_close(got, want, f"{name} {fmt} vs numpy cuDNN")


def test_cudnn_bidirectional_converts(legacy_files, converted):
    """Bidirectional(CuDNNLSTM): both directions converted; .onnx and .keras match tf_keras's reading."""
    path = legacy_files("cudnn_bidi")
    xs = _inputs(path)
    from bnrewrite.build.tf_keras import cudnn_config_as_standard

    for fmt in ("onnx", "keras"):
        rep, dst = converted("cudnn_bidi", fmt)
        assert next(p for p in rep.passes if p["name"] == "cudnn_rnn")["changed"] == ["rnn"]
        assert rep.verification["ok"]
    import h5py
    import tf_keras

    with h5py.File(path, "r") as f:  # tf_keras's own load of the standard-layer config + its weight conversion
        cfg = cudnn_config_as_standard(json.loads(f.attrs["model_config"]))
        model = tf_keras.models.model_from_config(cfg)
        from tf_keras.src.saving.legacy import hdf5_format

        hdf5_format.load_weights_from_hdf5_group(f["model_weights"], model)
    want = np.asarray(model(xs[0], training=False))
    assert_close(_onnx(converted("cudnn_bidi", "onnx")[1], xs)[0], want, "bidi onnx")
    assert_close(_keras3(converted("cudnn_bidi", "keras")[1], xs)[0], want, "bidi keras")


def test_a_wrong_cudnn_layout_is_caught_against_the_original(legacy_files, tmp_path, monkeypatch):
    """Negative case: the kernel blocks taken as they lie (no cuDNN reading) give another function;
    verification against tf_keras's independent conversion fails: exit 3, nothing written."""
    from bnrewrite.passes import cudnn_rnn

    real = cudnn_rnn.convert_weights

    def wrong(cls, k, r, b):
        return [k, *real(cls, k, r, b)[1:]]

    monkeypatch.setattr(cudnn_rnn, "convert_weights", wrong)
    with pytest.raises(bnrewrite.VerificationError, match="differs from the original model"):
        bnrewrite.convert(legacy_files("cudnn_lstm"), tmp_path / "o.onnx")
    assert not list(tmp_path.iterdir())




def test_bn_inside_a_wrapped_model_is_reported_and_inlined(legacy_files, converted, tmp_path):
    """The encoder's BN inside TimeDistributed(Sequential) is no node of the graph as read: inspect
    says so (BN_IN_WRAPPED_MODEL, naming it) instead of '0 BN layers, no findings'; convert inlines
    the encoder, so it folds, and the .keras migration (a flat model now) matches tf_keras.
    (Calibration and the cases left wrapped: tests/test_td_model.py.)"""
    import tf_keras

    path = legacy_files("td_sequential")
    inner = tf_keras.models.load_model(path, compile=False).layers[1].layer
    bn = next(lay.name for lay in inner.layers if isinstance(lay, tf_keras.layers.BatchNormalization))
    audit = bnrewrite.inspect(path)
    found = [f for f in audit.findings if f["code"] == "BN_IN_WRAPPED_MODEL"]
    assert len(found) == 1 and bn in found[0]["message"] and found[0]["severity"] == "warning", audit.findings
    xs = _inputs(path)
    rep, dst = converted("td_sequential", "keras")
    assert bn in {p["name"]: p for p in rep.passes}["fold_bn"]["changed"]
    assert_close(_keras3(dst, xs)[0], _reference(path, xs)[0], "td_sequential .keras")
    rep, dst = converted("td_sequential", "onnx")
    assert_close(_onnx(dst, xs)[0], _reference(path, xs)[0], "td_sequential .onnx")


def test_multi_head_attention_migrates_only_where_masking_agrees(legacy_files, converted, tmp_path):
    """tf.keras adds -1e9 to masked attention scores and keeps nonzero mask values; Keras 3 puts -1e9
    there and keeps values > 0.5. Without a mask (a causal one included) the .keras output matches
    tf_keras; an attention_mask, in either softmax form, or a mask_zero Embedding is refused; the ONNX
    output is exact."""
    rep, dst = converted("mha_plain", "keras")
    xs = _inputs(legacy_files("mha_plain"))
    assert_close(_keras3(dst, xs)[0], _reference(legacy_files("mha_plain"), xs)[0], "mha plain")
    for name in ("mha_mask", "mha_robust_mask"):
        with pytest.raises(bnrewrite.UnsupportedModelError, match="mask.*called with an attention_mask"):
            bnrewrite.convert(legacy_files(name), tmp_path / "o.keras")
        assert not list(tmp_path.iterdir())
    with pytest.raises(bnrewrite.UnsupportedModelError, match="layer 'emb' makes a Keras mask"):
        bnrewrite.convert(legacy_files("mha_embedding_mask"), tmp_path / "o.keras")
    rep, dst = converted("mha_mask", "onnx")
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, 5, 8)).astype("float32"), (rng.random((2, 5, 5)) > 0.4).astype("float32")]
    xs[1][:, 1, :] = 0  # a query that sees no key
    assert_close(_onnx(dst, xs)[0], _reference(legacy_files("mha_mask"), xs)[0], "mha mask onnx")


def test_timedistributed_before_bn_unwraps_and_bn_with_mask_folds(converted):
    """tf_keras: the TD(Conv2D) -> TD(BN) pair is unwrapped and folded; TD(MaxPool)/TD(Flatten)
    stay wrapped (tf_keras runs them as one reshape). A BN called with a mask folds too."""
    rep, _ = converted("td_chain_mask", "onnx")
    unwrap = next(p for p in rep.passes if p["name"] == "unwrap_timedistributed")
    assert len(unwrap["changed"]) == 2 and len(unwrap["skipped"]) == 2, unwrap
    fold = next(p for p in rep.passes if p["name"] == "fold_bn")
    assert len(fold["changed"]) == 2, fold  # the TD(BN) after TD(Conv2D), and the BN after Dense


def test_consecutive_timedistributed_reshapes_keras3(tmp_path):
    """Keras 3 (which unrolls TimeDistributed): TD(Conv2D) -> TD(MaxPool) -> TD(Flatten) -> TD(BN),
    each needing reshapes, are all unwrapped -- the shape table follows each rewrite -- and the
    output matches Keras 3."""
    import keras

    L = keras.layers
    i = keras.Input((5, 12, 12, 3))
    x = L.TimeDistributed(L.Conv2D(4, 3), name="td_conv")(i)
    x = L.TimeDistributed(L.MaxPooling2D(), name="td_pool")(x)
    x = L.TimeDistributed(L.Flatten(), name="td_flat")(x)
    x = L.TimeDistributed(L.BatchNormalization(), name="td_bn")(x)
    m = keras.Model(i, x)
    bn = m.get_layer("td_bn").layer
    rng = np.random.default_rng(4)
    g, b, mu, v = bn.get_weights()
    bn.set_weights([rng.uniform(.5, 1.5, g.shape), rng.normal(0, .5, b.shape), rng.normal(0, .5, mu.shape),
                    rng.uniform(.5, 2, v.shape)])
    m.save(tmp_path / "td.keras")
    rep = bnrewrite.convert(tmp_path / "td.keras", tmp_path / "td.onnx")
    unwrap = next(p for p in rep.passes if p["name"] == "unwrap_timedistributed")
    assert set(unwrap["changed"]) == {"td_conv", "td_pool", "td_flat", "td_bn"}, unwrap
    xs = [rng.standard_normal((2, 5, 12, 12, 3)).astype("float32")]
    assert_close(_onnx(tmp_path / "td.onnx", xs)[0], np.asarray(m(xs[0], training=False)), "keras3 td chain")


def test_open_dimensions_take_sizes_the_model_accepts(legacy_files, converted):
    rep, _ = converted("unet_open", "onnx")
    ((name, shape),) = rep.verification["input_shapes"].items()
    assert shape[0] % 4 == 0 and shape[0] >= 16, shape
    rep, _ = converted("unet_open", "onnx", input_shapes=((name, (40, 48, 3)),))
    assert rep.verification["input_shapes"] == {name: [40, 48, 3]}


def test_bad_input_shape_is_a_clear_error(legacy_files, tmp_path):
    mg = bnrewrite.load(legacy_files("unet_open"))
    name = mg.layer(mg.inputs[0]).name
    with pytest.raises(bnrewrite.InputError, match="does not fit"):
        bnrewrite.convert(legacy_files("unet_open"), tmp_path / "o.onnx", input_shapes={name: [8, 3]})
    with pytest.raises(bnrewrite.InputError, match="model's inputs are"):
        bnrewrite.convert(legacy_files("unet_open"), tmp_path / "o.onnx", input_shapes={"nope": [8, 8, 3]})
    assert not list(tmp_path.iterdir())


def test_a_wrong_migration_is_caught_against_the_original(legacy_files, tmp_path, monkeypatch):
    """If the migration lost LeakyReLU's alpha (as the old translation did), verification
    against tf_keras's reading of the original fails: exit 3, nothing written."""
    from bnrewrite.build import migrate as mig

    real = mig.migrate_layer

    def lossy(class_name, config, *a, **k):
        if class_name == "LeakyReLU":
            config = {k2: v for k2, v in config.items() if k2 != "alpha"}
        return real(class_name, config, *a, **k)

    monkeypatch.setattr(mig, "migrate_layer", lossy)
    with pytest.raises(bnrewrite.VerificationError, match="differs from the original model"):
        bnrewrite.convert(legacy_files("leaky_separable"), tmp_path / "o.keras")
    assert not list(tmp_path.iterdir())


def test_bn_subclass_counts_as_bn(tmp_path):
    """A user class subclassing BatchNormalization (Mask R-CNN's ``BatchNorm``) is a BN for
    every pass: folded, and verified against tf_keras with the same class."""
    import tf_keras as K

    class BatchNorm(K.layers.BatchNormalization):
        def call(self, inputs, training=None):
            return super().call(inputs, training=training)

    i = K.Input((8, 8, 3))
    x = K.layers.Conv2D(4, 3)(i)
    x = BatchNorm(axis=[3], name="bn_sub")(x, training=False)
    m = K.Model(i, K.layers.Activation("relu")(x))
    _rand_bn(m)
    path = tmp_path / "sub.h5"
    m.save(path)
    objects = {"BatchNorm": BatchNorm}
    rep = bnrewrite.convert(path, tmp_path / "sub.onnx", custom_objects=objects)
    fold = next(p for p in rep.passes if p["name"] == "fold_bn")
    assert fold["changed"] == ["bn_sub"], fold
    assert rep.verification["ok"] and rep.verification["no_reference"] is None
    audit = bnrewrite.inspect(path, custom_objects=objects)
    assert [r["name"] for r in audit.bn_layers] == ["bn_sub"]


def test_tf_op_layers_checked_against_the_allowlist(legacy_files, tmp_path):
    """A tf.keras op layer naming a TF function outside the allowlist (here one that writes
    files) is refused before anything is built."""
    bad = tmp_path / "bad.h5"
    shutil.copy(legacy_files("leaky_separable"), bad)

    def forge(c):
        for lc in c["config"]["layers"]:
            if lc["class_name"] == "TFOpLambda":
                lc["config"]["function"] = "io.write_file"
                break
        return c

    _rewrite_config(bad, forge)
    with pytest.raises(bnrewrite.UnsupportedModelError, match=r"tf\.io\.write_file.*allowlist"):
        bnrewrite.convert(bad, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_root_cause_is_kept():
    from bnrewrite.build.base import root_cause

    try:
        try:
            raise ValueError("the real reason: kernel shape (3, 3) vs (5, 5)")
        except ValueError as inner:
            raise RuntimeError("Exception encountered when calling layer 'x'.\nCould not build") from inner
    except RuntimeError as e:
        msg = root_cause(e)
    assert "Could not build" in msg and "the real reason" in msg


def test_config_expansion_is_linear_when_layers_are_listed_in_reverse():
    """8,000 chained layers listed in reverse order (each call waits on the next layer in the
    list): bnrewrite's own expansion stays linear, and the file is refused in about the time the
    same list in order takes to expand -- Keras's rebuild of it would be quadratic
    (tests/test_hostile_read.py::test_layers_out_of_order_refused)."""
    from bnrewrite.errors import InputError
    import time

    from bnrewrite.io.config import build_graph

    def chain(n, reverse):
        layers = [{"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_input_shape": [None, 4]},
                   "inbound_nodes": []}]
        prev = "x"
        for i in range(n):
            layers.append({"class_name": "Activation", "name": f"a{i}", "config": {"name": f"a{i}",
                           "activation": "relu"}, "inbound_nodes": [[[prev, 0, 0, {}]]]})
            prev = f"a{i}"
        body = layers[1:][::-1] if reverse else layers[1:]
        return {"class_name": "Functional", "config": {"name": "m", "layers": [layers[0], *body],
                "input_layers": [["x", 0, 0]], "output_layers": [[prev, 0, 0]]}}

    times = {}
    for reverse in (False, True):
        t0 = time.perf_counter()
        if reverse:
            with pytest.raises(InputError, match="far out of dependency order"):
                build_graph(chain(8000, reverse), lambda *a: {}, legacy=True)
        else:
            assert build_graph(chain(8000, reverse), lambda *a: {}, legacy=True).graph.number_of_nodes() == 8001
        times[reverse] = time.perf_counter() - t0
    assert times[True] < 3 * times[False] + 2.0, times


def test_keras_34_operation_nodes(tmp_path):
    """A Keras 3.4 archive whose relu/add are operation nodes, not layers
    (fixtures/keras34/make_keras34.py): .onnx and .keras match Keras 3's own reading; .h5
    is refused before writing (Keras 3's HDF5 cannot store op nodes)."""
    import keras

    from conftest import ROOT

    src = ROOT / "fixtures" / "keras34" / "ops_nodes.keras"
    model = keras.saving.load_model(src, compile=False)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((3, 16, 16, 3)).astype("float32"), rng.integers(0, 20, (3, 5)).astype("int32")]
    want = np.asarray(model(xs, training=False))
    rep = bnrewrite.convert(src, tmp_path / "o.onnx")
    assert rep.verification["reference"].startswith("Keras 3")
    assert_close(_onnx(tmp_path / "o.onnx", xs)[0], want, "keras 3.4 ops onnx")
    bnrewrite.convert(src, tmp_path / "o.keras")
    assert_close(_keras3(tmp_path / "o.keras", xs)[0], want, "keras 3.4 ops keras")
    with pytest.raises(bnrewrite.UnsupportedModelError, match="cannot store the op node"):
        bnrewrite.convert(src, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("version", ["3.0.5", "3.3.3"])
@pytest.mark.parametrize("name", ["td_lstm", "nested_shared", "training_true"])
def test_older_keras3_archives(tmp_path, version, name):
    """Archives written by Keras 3.0.5 and 3.3.3 (fixtures/keras3_versions/make_files.py): their LSTM
    names its initializer OrthogonalInitializer, once refused. .onnx and .keras match this Keras's own
    reading of the original file."""
    import zipfile

    import keras

    from conftest import ROOT

    src = ROOT / "fixtures" / "keras3_versions" / f"keras-{version}" / f"{name}.keras"
    with zipfile.ZipFile(src) as z:
        assert json.loads(z.read("metadata.json"))["keras_version"] == version
    model = keras.saving.load_model(src, compile=False)
    xs = [np.random.default_rng(2).standard_normal((3, *model.inputs[0].shape[1:])).astype("float32")]
    want = np.asarray(model(xs[0], training=False))
    rep = bnrewrite.convert(src, tmp_path / "o.onnx")
    assert rep.verification["ok"]
    assert_close(_onnx(tmp_path / "o.onnx", xs)[0], want, f"keras {version} {name} onnx")
    bnrewrite.convert(src, tmp_path / "o.keras")
    assert_close(_keras3(tmp_path / "o.keras", xs)[0], want, f"keras {version} {name} keras")


@pytest.mark.parametrize("name", ["td_bn", "tf_ops", "training_true"])
def test_tf_keras_215_archives(tmp_path, name):
    """.keras archives written by tf.keras 2.15 (Keras 2's dialect, which Keras 3 cannot read;
    fixtures/tfkeras_archives/make_files.py) are rebuilt by tf_keras: .onnx, .h5 and the migrated
    .keras match tf_keras's own load_model of the file (for training_true, with the flag removed)."""
    import tf_keras

    from conftest import ROOT

    src = ROOT / "fixtures" / "tfkeras_archives" / "tf-2.15.1" / f"{name}.keras"
    model = tf_keras.models.load_model(src, compile=False)
    if name == "training_true":  # tf_keras honours the baked flag: the inference reference drops it
        bn = model.layers[2]
        model = tf_keras.Model(model.input, model.layers[-1](model.layers[-2](bn(model.layers[1].output,
                                                                                  training=False))))
    xs = [np.random.default_rng(3).standard_normal((3, *model.inputs[0].shape[1:])).astype("float32")]
    want = np.asarray(model(xs[0], training=False))
    rep = bnrewrite.convert(src, tmp_path / "o.onnx")
    assert rep.verification["ok"] and rep.verification["reference"].startswith("tf_keras")
    folded = next(p for p in rep.passes if p["name"] == "fold_bn")["changed"]
    # the BN's weights are found by name (tf_keras's "gamma:0"); in tf_ops the conv output is also added
    assert len(folded) == {"td_bn": 1, "training_true": 1, "tf_ops": 0}[name], folded
    assert_close(_onnx(tmp_path / "o.onnx", xs)[0], want, f"tf.keras 2.15 {name} onnx")
    bnrewrite.convert(src, tmp_path / "o.keras")
    assert_close(_keras3(tmp_path / "o.keras", xs)[0], want, f"tf.keras 2.15 {name} keras")
    bnrewrite.convert(src, tmp_path / "o.h5")
    back = tf_keras.models.load_model(tmp_path / "o.h5", compile=False)
    assert_close(np.asarray(back(xs[0], training=False)), want, f"tf.keras 2.15 {name} h5")


def test_tf_keras_213_archive_refused(tmp_path):
    """tf.keras 2.13 kept an archive's weights under generated names that no framework reads back:
    exit 2 with the way out (save as .h5), nothing written -- never a guess."""
    from conftest import ROOT

    src = ROOT / "fixtures" / "tfkeras_archives" / "tf-2.13.1" / "td_bn.keras"
    with pytest.raises(bnrewrite.InputError, match="written by tf.keras 2.13.1.*save it as .h5") as err:
        bnrewrite.convert(src, tmp_path / "o.onnx")
    assert err.value.exit_code == 2 and not list(tmp_path.iterdir())


def test_virtual_batch_size_file_refused_with_the_reason(tmp_path):
    """tf.keras saves a BN's axis as build() shifted it for the virtual batch dimension, so neither it nor
    bnrewrite can load the file: one clear error naming the cause and the way out, nothing written."""
    import tf_keras

    x = tf_keras.Input((6, 6, 3))
    h = tf_keras.layers.Conv2D(4, 3)(x)
    h = tf_keras.layers.BatchNormalization(virtual_batch_size=2, name="ghost_bn")(h)
    src = tmp_path / "ghost.h5"
    tf_keras.Model(x, h).save(src)
    with pytest.raises(ValueError, match="axis"):  # the writing framework cannot read it either
        tf_keras.models.load_model(src, compile=False)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(bnrewrite.BnrewriteError, match="'ghost_bn'.*virtual_batch_size.*virtual_batch_size=None"):
        bnrewrite.convert(src, out / "o.onnx")
    assert not list(out.iterdir())


@pytest.mark.parametrize("kind", ["input", "upsampling"])
def test_huge_declared_tensor_refused_before_anything_runs(tmp_path, kind):
    """A small file declaring a 112 GiB input (or an UpSampling by 4,000) is refused before
    export or verification allocate it: one line, no OUT, and this process stays small."""
    import resource

    import tf_keras as K

    if kind == "input":
        i = K.Input((100000, 100000, 3))
        x = K.layers.BatchNormalization()(i)
    else:
        i = K.Input((8, 8, 3))
        x = K.layers.BatchNormalization()(K.layers.UpSampling2D(size=(4000, 4000))(i))
    K.Model(i, x).save(tmp_path / "huge.h5")
    assert (tmp_path / "huge.h5").stat().st_size < 100_000
    with pytest.raises(bnrewrite.InputError, match="BNREWRITE_MAX_TENSOR_BYTES"):
        bnrewrite.convert(tmp_path / "huge.h5", tmp_path / "huge.onnx")
    assert not (tmp_path / "huge.onnx").exists()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 8 * 1024 * 1024  # KiB: well below the GiBs


def _mixed_float16_h5(tmp_path):
    """tf_keras, every layer under the mixed_float16 policy (float16 compute, float32 variables;
    the last Dense in float32, as the mixed-precision guide asks), random BN statistics."""
    import tf_keras

    L = tf_keras.layers
    i = tf_keras.Input((8, 8, 3), name="img")
    y = L.Conv2D(4, 3, dtype="mixed_float16", name="conv")(i)
    y = L.BatchNormalization(dtype="mixed_float16", name="bn")(y)
    y = L.Activation("relu", dtype="mixed_float16")(y)
    y = L.GlobalAveragePooling2D(dtype="mixed_float16")(y)
    m = tf_keras.Model(i, L.Dense(3, dtype="float32", name="head")(y))
    _rand_bn(m, seed=5)
    path = tmp_path / "mixed.h5"
    m.save(path)
    return m, path


def test_mixed_float16_converts_with_float16_tolerances(tmp_path):
    """A model that computes in float16 is verified at float16 tolerances (1e-2, stated in the
    report), to ONNX and through the migration to a Keras 3 archive that keeps the policy; the
    outputs match tf_keras predict at that tolerance; tolerances given explicitly still rule."""
    import keras
    import onnxruntime as ort

    m, src = _mixed_float16_h5(tmp_path)
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)
    want = m.predict(x, verbose=0)
    rep = bnrewrite.convert(src, tmp_path / "out.onnx")
    assert rep.verification["atol"] == rep.verification["rtol"] == 1e-2
    assert any("computes in float16 (dtype policy mixed_float16)" in n for n in rep.notes)
    sess = ort.InferenceSession(str(tmp_path / "out.onnx"))
    np.testing.assert_allclose(sess.run(None, {"img": x})[0], want, atol=2e-2, rtol=2e-2)

    bnrewrite.convert(src, tmp_path / "out.keras")  # tf_keras's Policy dict -> Keras 3's policy name
    back = keras.saving.load_model(tmp_path / "out.keras", compile=False)
    assert back.get_layer("conv").dtype_policy.name == "mixed_float16"
    assert back.get_layer("head").dtype_policy.name == "float32"
    np.testing.assert_allclose(np.asarray(back(x, training=False)), want, atol=2e-2, rtol=2e-2)

    with pytest.raises(bnrewrite.VerificationError) as err:  # float32 tolerances, asked for: float16 fails them
        bnrewrite.convert(src, tmp_path / "strict.onnx", atol=1e-6, rtol=1e-6)
    assert err.value.exit_code == 3 and not (tmp_path / "strict.onnx").exists()


def test_one_hot_like_and_cumsum_ops_migrate(tmp_path):
    """tf.one_hot (on/off values, int dtype), tf.ones_like, tf.zeros_like, tf.math.cumsum and tf.sort recorded as
    TF-op layers (wide-and-deep and TabNet code) migrate to Keras 3's ops: the .keras output matches tf_keras on the
    original file."""
    import tensorflow as tf
    import tf_keras

    i = tf_keras.Input((3,), dtype="int32")
    f = tf_keras.Input((4,))
    h = tf.reshape(tf.one_hot(i, 5, on_value=0.9, off_value=0.1), [-1, 15])
    h = tf.concat([h, tf.cast(tf.one_hot(i, 2, dtype=tf.int32)[:, :, 0], tf.float32), f + tf.ones_like(f),
                   tf.zeros_like(f), tf.math.cumsum(f, axis=1, exclusive=True, reverse=True),
                   tf.sort(f, direction="DESCENDING")], axis=-1)
    y = tf_keras.layers.BatchNormalization()(tf_keras.layers.Dense(6)(h))
    m = tf_keras.Model([i, f], y)
    _rand_bn(m)
    m.save(tmp_path / "oh.h5")
    rep = bnrewrite.convert(tmp_path / "oh.h5", tmp_path / "oh.keras")
    assert rep.verification["ok"] and rep.output["framework"] == "keras"
    xs = _inputs(tmp_path / "oh.h5")
    xs[0] = xs[0] % 6  # 5 is out of range for depth 5: an all-off row in both
    for g, w in zip(_keras3(tmp_path / "oh.keras", xs), _reference(tmp_path / "oh.h5", xs)):
        assert_close(g, w, "one_hot")


def test_a_model_that_mixes_samples_itself_is_refused_naming_the_original(tmp_path):
    """tf.keras's Attention on 2-D inputs attends across the batch (seen in a real Keras 2.11 file,
    dl4j-test-resources' keras-attention.h5): the original's output for one sample depends on the
    others. Verification fails (exit 3, nothing written) and says that the original model, as
    tf_keras runs it, mixes samples too, so it is no BN left in training mode."""
    import tf_keras

    inp = tf_keras.Input((6,), name="x")
    d = tf_keras.layers.Dense(8, activation="relu")(inp)
    a = tf_keras.layers.Attention()([d, d])
    h = tf_keras.layers.BatchNormalization()(tf_keras.layers.Concatenate()([d, a]))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2)(h))
    _rand_bn(model)
    src = tmp_path / "attention_2d.h5"
    model.save(src)
    # the reference: tf_keras itself gives sample 0 different outputs alone and in a batch
    x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    original = tf_keras.models.load_model(src, compile=False)
    batched, alone = np.asarray(original(x, training=False)), np.asarray(original(x[:1], training=False))
    assert np.abs(batched[:1] - alone).max() > 1e-3
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(bnrewrite.VerificationError, match=r"and so do the original model's \(tf_keras") as e:
        bnrewrite.convert(src, out / "m.onnx")
    assert "not a BatchNormalization" in str(e.value)
    assert not list(out.iterdir())


def test_sequential_built_from_build_input_shape(tmp_path):
    """A Sequential whose first layer declares no input (Keras 2.2.4 kept ``input_shape`` given to a
    later layer only as the model's ``build_input_shape``; ``model.build(shape)`` does the same) is
    built from ``build_input_shape``, as both frameworks' ``Sequential.from_config`` do. Seen in a real
    Keras 2.2.4 Conv1D+LSTM file. Compared with tf_keras's own reading of the file, to ONNX and .keras."""
    import h5py
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Conv1D(4, 3, name="conv"), tf_keras.layers.BatchNormalization(),
                                 tf_keras.layers.LSTM(5), tf_keras.layers.Dense(2)])
    model.build((None, 12, 3))
    _rand_bn(model)
    src = tmp_path / "seq_build_shape.h5"
    model.save(src)

    def keras_224(c):  # the dialect of the real file: no InputLayer, the shape only at model level
        layers = [lc for lc in c["config"]["layers"] if lc["class_name"] != "InputLayer"]
        return {**c, "config": {**c["config"], "layers": layers, "build_input_shape": [None, 12, 3]}}

    _rewrite_config(src, keras_224)
    with h5py.File(src) as f:
        cfg = json.loads(f.attrs["model_config"])["config"]
    assert all("batch_input_shape" not in lc["config"] for lc in cfg["layers"])
    xs = _inputs(src)
    for out in ("m.onnx", "m.keras"):
        bnrewrite.convert(src, tmp_path / out)
    assert_close(_onnx(tmp_path / "m.onnx", xs)[0], _reference(src, xs)[0], "onnx vs tf_keras")
    assert_close(_keras3(tmp_path / "m.keras", xs)[0], _reference(src, xs)[0], ".keras vs tf_keras")
    # a hostile build_input_shape is bounded before any framework builds from it
    bad = tmp_path / "huge_build_shape.h5"
    shutil.copy(src, bad)
    _rewrite_config(bad, lambda c: {**c, "config": {**c["config"], "build_input_shape": [None, 2 ** 31, 3]}})
    with pytest.raises(bnrewrite.UnsupportedModelError, match=r"declares an input shape \[None, 2147483648"):
        bnrewrite.convert(bad, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_rnn_initial_states_migrate_as_keyword(tmp_path):
    """tf.keras records ``LSTM(...)(x, initial_state=[h, c])`` as a call on ``[x, h, c]`` (the Keras
    seq2seq example; a real Keras 2.2.5 file), which Keras 3's RNN refuses ("expects 1 input(s)").
    The migration passes the states back as ``initial_state`` -- LSTM, GRU and Bidirectional (forward
    states first) -- and the .keras output equals tf_keras's own reading of the file."""
    import h5py
    import tf_keras

    L = tf_keras.layers
    enc, dec = L.Input((None, 5), name="enc"), L.Input((None, 6), name="dec")
    _, h, c = L.LSTM(8, return_state=True, name="lstm")(enc)
    x = L.LSTM(8, return_sequences=True, name="lstm_1")(dec, initial_state=[h, c])
    _, hf, cf, hb, cb = L.Bidirectional(L.LSTM(4, return_state=True))(enc)
    y = L.Bidirectional(L.LSTM(4, return_sequences=True))(dec, initial_state=[hf, cf, hb, cb])
    _, gh = L.GRU(3, return_state=True)(enc)
    z = L.GRU(3, return_sequences=True)(dec, initial_state=gh)
    model = tf_keras.Model([enc, dec], L.Dense(2)(L.BatchNormalization()(L.Concatenate()([x, y, z]))))
    _rand_bn(model)
    src = tmp_path / "s2s.h5"
    model.save(src)
    with h5py.File(src) as f:  # the states are recorded as extra inputs, not as the keyword
        calls = {lc["name"]: lc["inbound_nodes"] for lc in json.loads(f.attrs["model_config"])["config"]["layers"]}
    assert [e[0] for e in calls["lstm_1"][0]] == ["dec", "lstm", "lstm"]
    rep = bnrewrite.convert(src, tmp_path / "s2s.keras")
    assert rep.verification["ok"]
    xs = _inputs(src, sizes=7)
    got, want = _keras3(tmp_path / "s2s.keras", xs)[0], _reference(src, xs)[0]
    assert_close(got, want, ".keras vs tf_keras")
    # the states matter here: the decoder started from zeros (what dropping them would do) moves
    dec_alone = tf_keras.models.load_model(src, compile=False).get_layer("lstm_1")
    _, h0, c0 = tf_keras.models.load_model(src, compile=False).get_layer("lstm")(xs[0])
    assert np.abs(np.asarray(dec_alone(xs[1])) - np.asarray(dec_alone(xs[1], initial_state=[h0, c0]))).max() > 1e-3


def test_convlstm_recurrent_dropout_to_h5(tmp_path):
    """tf_keras's eager ConvLSTM2D with ``recurrent_dropout`` keeps the dropout mask of its first call:
    called at batch 4, then at batch 1 (the batch-independence check of an .h5 output, which tf_keras
    runs), it fails -- the original file does the same in tf_keras (two real TF 2.7 and 2.15 files).
    The .h5 output converts and equals tf_keras's own predict of the original."""
    import tf_keras

    L = tf_keras.layers
    model = tf_keras.Sequential([tf_keras.Input((5, 8, 8, 2)), L.ConvLSTM2D(4, 3, recurrent_dropout=0.2,
                                 return_sequences=True), L.BatchNormalization(), L.Flatten(), L.Dense(3)])
    bn, rng = model.layers[1], np.random.default_rng(0)  # (submodules trips on the ConvLSTM's mask cache)
    bn.set_weights([rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.5, 4), rng.normal(0, 0.5, 4), rng.uniform(0.5, 2, 4)])
    src = tmp_path / "convlstm.h5"
    model.save(src)
    rep = bnrewrite.convert(src, tmp_path / "out.h5")
    assert rep.verification["ok"] and rep.verification["batch_independent"]
    x = np.random.default_rng(2).random((3, 5, 8, 8, 2)).astype("float32")
    want = tf_keras.models.load_model(src, compile=False).predict(x, verbose=0)
    got = tf_keras.models.load_model(tmp_path / "out.h5", compile=False).predict(x, verbose=0)
    assert_close(got, want, ".h5 vs tf_keras predict")


def test_run_model_falls_back_to_graph_mode_when_the_eager_call_fails():
    """tf_keras's eager ConvLSTM2D in a real TF 2.15 file, called at batch 4 and then at batch 1 (the
    batch-independence check), failed with "Tensor's shape (4, ...) is not compatible with supplied
    shape (1, ...)" -- an "unexpected ValueError" for the .h5 output, whose check runs tf_keras. A
    failing eager call is run again in a function traced for those shapes; a failure there too is
    the one reported."""
    import tensorflow as tf

    from bnrewrite.verify import run_model

    class EagerOnlyFails:
        def __call__(self, xs, training=False):
            if tf.executing_eagerly():
                raise ValueError("stale state shape")
            return xs[0] * 2.0

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert_close(run_model(EagerOnlyFails(), [x])[0], x * 2.0, "graph fallback")

    class AlwaysFails:
        def __call__(self, xs, training=False):
            raise ValueError("broken in both modes")

    with pytest.raises(ValueError, match="broken in both modes"):
        run_model(AlwaysFails(), [x])
