"""Build the benchmark model files (offline, seeded) into the cache folder.

    python bench/models.py --cache bench/.cache [--quick] NAME

Writes the model file(s) of ``NAME`` (see ``bench/common.py``), and
``NAME.ref.npz`` with a seeded input batch ``x`` and the reference output
``ref``: the inference output of the framework that wrote the file (Keras 3
``model(x, training=False)`` for ``.keras``, tf_keras ``predict`` for ``.h5``).
Every BN gets random gamma/beta/moving statistics (moving variance > 0), so a
converter that drops or mishandles a BN changes the output.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from common import emit, model_specs, settings  # noqa: E402

warnings.filterwarnings("ignore")
SEED = 1234


def random_bn(layer, rng) -> None:
    """gamma ~ U(0.5, 1.5), beta ~ N(0, 0.5), mean ~ N(0, 0.5), variance ~ U(0.5, 2)."""
    shape = layer.get_weights()[0].shape
    ws = [rng.uniform(0.5, 1.5, shape), rng.normal(0.0, 0.5, shape),
          rng.normal(0.0, 0.5, shape), rng.uniform(0.5, 2.0, shape)]
    layer.set_weights([w.astype("float32") for w in ws])


def is_bn(layer, K) -> bool:
    inner = getattr(layer, "layer", None)
    return isinstance(layer, K.layers.BatchNormalization) or isinstance(inner, K.layers.BatchNormalization)


def seeded_input(shape, batch: int, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype("float32")


def build_zoo(spec, cache: Path, ref_batch: int) -> dict:
    import keras

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    app = getattr(keras.applications, spec.extra["app"])
    model = app(weights=None, input_shape=spec.input_shape)
    n_bn = 0
    for layer in model.layers:
        if is_bn(layer, keras):
            random_bn(layer, rng)
            n_bn += 1
    model.save(cache / spec.file)
    x = seeded_input(spec.input_shape, ref_batch)
    ref = keras.ops.convert_to_numpy(model(x, training=False))
    np.savez(cache / spec.ref_file, x=x, ref=ref)
    return {"layers": len(model.layers), "bn": n_bn, "params": int(model.count_params())}


def video_model(K, frames: int):
    L = K.layers
    inp = L.Input((frames, 16, 16, 3), name="frames")
    x = L.TimeDistributed(L.Conv2D(8, 3, padding="same", use_bias=False, name="conv"), name="td_conv")(inp)
    x = L.TimeDistributed(L.BatchNormalization(name="bn1"), name="td_bn1")(x)
    x = L.TimeDistributed(L.ReLU(name="relu"), name="td_relu")(x)
    x = L.TimeDistributed(L.GlobalAveragePooling2D(name="gap2d"), name="td_gap")(x)
    x = L.TimeDistributed(L.Dense(32, name="dense"), name="td_dense")(x)
    x = L.TimeDistributed(L.BatchNormalization(name="bn2"), name="td_bn2")(x)
    x = L.GlobalAveragePooling1D(name="gap_time")(x)
    out = L.Dense(10, name="logits")(x)
    return K.Model(inp, out, name="video_td")


def copy_weights(src, dst) -> None:
    for layer in src.layers:
        if layer.get_weights():
            dst.get_layer(layer.name).set_weights(layer.get_weights())


def build_video(spec, cache: Path, ref_batch: int) -> dict:
    import keras
    import tf_keras

    frames = spec.extra["frames"]
    tf_keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = video_model(tf_keras, frames)
    for layer in model.layers:
        if is_bn(layer, tf_keras):
            random_bn(layer, rng)
    model.save(cache / spec.file)  # tf.keras HDF5, TimeDistributed(BN): Keras 3 cannot load it
    x = seeded_input(spec.input_shape, ref_batch)
    ref = model.predict(x, verbose=0)

    twin = video_model(keras, frames)  # the same model as Keras 3 would hold it
    copy_weights(model, twin)
    got = keras.ops.convert_to_numpy(twin(x, training=False))
    diff = float(np.abs(got - ref).max())
    assert diff < 1e-4, f"Keras 3 twin differs from the tf_keras model by {diff}"
    twin.save(cache / spec.extra["twin"])
    np.savez(cache / spec.ref_file, x=x, ref=ref)
    return {"layers": len(model.layers), "bn": 2, "twin_max_abs": diff, "params": int(model.count_params())}


def training_model(K, training_true: bool):
    L = K.layers
    inp = L.Input((32, 32, 3), name="image")
    x = L.Conv2D(16, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x, training=True) if training_true else \
        L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(32, 3, strides=2, padding="same", name="conv2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(32, name="fc")(x)
    x = L.BatchNormalization(name="bn3")(x, training=True) if training_true else \
        L.BatchNormalization(name="bn3")(x)
    out = L.Dense(10, name="logits")(x)
    return K.Model(inp, out, name="training_true_cnn")


def build_training(spec, cache: Path, ref_batch: int) -> dict:
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = training_model(tf_keras, True)
    for layer in model.layers:
        if is_bn(layer, tf_keras):
            random_bn(layer, rng)
    model.save(cache / spec.file)
    twin = training_model(tf_keras, False)
    copy_weights(model, twin)  # before predict: a training=True call updates the moving statistics
    x = seeded_input(spec.input_shape, ref_batch)
    orig = model.predict(x, verbose=0)  # batch statistics in bn1 and bn3, even in predict
    ref = twin.predict(x, verbose=0)  # the inference output: moving statistics everywhere
    np.savez(cache / spec.ref_file, x=x, ref=ref, orig=orig)
    return {"layers": len(model.layers), "bn": 3, "orig_vs_ref_max_abs": float(np.abs(orig - ref).max()),
            "params": int(model.count_params())}


BUILDERS = {"zoo": build_zoo, "video": build_video, "training": build_training}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    spec = {s.name: s for s in model_specs(a.quick)}[a.name]
    a.cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    info = BUILDERS[spec.group](spec, a.cache, settings(a.quick)["ref_batch"])
    info["build_s"] = time.perf_counter() - t
    emit(info)


if __name__ == "__main__":
    main()
