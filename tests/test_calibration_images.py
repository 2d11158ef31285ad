"""AdaBN on a folder of images (``--calibration images/ --preprocess MODE``, :mod:`bnrewrite.io.images`).

The reference is independent of bnrewrite's reader: the same images decoded and
resized with TensorFlow's ops here, preprocessed by
``keras.applications.imagenet_utils.preprocess_input``, saved as a ``.npy``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from test_cli import assert_one_line_error, run_cli

H, W = 12, 10


def _model():
    import keras

    x = keras.Input((H, W, 3), name="image")
    y = keras.layers.BatchNormalization(name="bn_in")(x)
    y = keras.layers.Conv2D(4, 3, name="conv")(y)
    y = keras.layers.BatchNormalization(name="bn_conv")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, keras.layers.Dense(2, name="head")(y))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """PNG and JPEG files of different sizes (one in a subfolder), one corrupt file, one symlink to a device."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    good = []
    for i, (h, w, ext) in enumerate([(12, 10, "png"), (20, 16, "jpg"), (9, 7, "png"), (31, 25, "jpeg"),
                                     (12, 10, "jpg"), (16, 30, "png"), (40, 33, "png")]):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        data = tf.io.encode_png(img) if ext == "png" else tf.io.encode_jpeg(img, quality=90)
        f = (root / "sub" if i == 3 else root) / f"img{i}.{ext}"
        f.write_bytes(data.numpy())
        good.append(f)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, nothing decodable
    (root / "notes.txt").write_text("not an image, ignored")
    if os.path.exists("/dev/null"):
        os.symlink("/dev/null", root / "device.png")
    return root, sorted(good, key=lambda q: q.relative_to(root).as_posix())


def _reference(files, mode):
    """Decode + resize with the same TF ops, preprocess with keras.applications."""
    import tensorflow as tf
    from keras.applications import imagenet_utils

    x = np.stack([tf.image.resize(tf.io.decode_image(f.read_bytes(), channels=3, expand_animations=False),
                                  [H, W], method="bilinear").numpy() for f in files]).astype(np.float32)
    if mode == "scale":
        return x / np.float32(255.0)
    return imagenet_utils.preprocess_input(x, data_format="channels_last", mode=mode)


def _stats(model):
    return {n: (np.asarray(model.get_layer(n).moving_mean, np.float64),
                np.asarray(model.get_layer(n).moving_variance, np.float64)) for n in ("bn_in", "bn_conv")}


def _close(a, b):
    for n in a:
        for got, want in zip(a[n], b[n]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(want).max())))


def test_preprocess_matches_keras_applications():
    from keras.applications import imagenet_utils

    from bnrewrite.io.images import preprocess

    x = np.random.default_rng(1).uniform(0, 255, (3, 5, 4, 3)).astype(np.float32)
    for mode in ("tf", "torch", "caffe"):
        want = imagenet_utils.preprocess_input(x.copy(), data_format="channels_last", mode=mode)
        np.testing.assert_array_equal(preprocess(x.copy(), mode), want)


@pytest.mark.parametrize("mode", ["torch", "caffe", None])
def test_folder_equals_npy(image_folder, tmp_path, mode):
    import bnrewrite

    root, good = image_folder
    model = _model()
    npy = tmp_path / "ref.npy"
    np.save(npy, _reference(good, mode or "scale"))
    ref = bnrewrite.rewrite(model, calibration=str(npy), batch_size=3, verify=False, fold=False)
    new, rep = bnrewrite.rewrite(model, calibration=str(root), preprocess=mode, batch_size=3, verify=False, fold=False,
                                 return_report=True)
    _close(_stats(new), _stats(ref))
    cal = rep.calibration
    assert cal["samples"] == len(good) == 7
    assert cal["bad_images"] == 1 and cal["bad_image_names"][0].startswith("broken.png: ")
    assert cal["images"]["images"] == 7 and cal["images"]["preprocess"] == (mode or "scale")
    if os.path.exists("/dev/null"):
        assert cal["images"]["skipped_not_regular"] == 1 and cal["images"]["skipped_names"] == ["device.png"]


def test_tf_mode_and_batch_size_independent(image_folder):
    import bnrewrite

    root, good = image_folder
    model = _model()
    a = bnrewrite.rewrite(model, calibration=str(root), preprocess="tf", batch_size=2, verify=False, fold=False)
    b = bnrewrite.rewrite(model, calibration=_reference(good, "tf"), batch_size=5, verify=False, fold=False)
    _close(_stats(a), _stats(b))


def test_mixed_folder_and_preprocess_on_arrays_refused(image_folder, tmp_path):
    import bnrewrite
    from bnrewrite.errors import InputError

    root, _ = image_folder
    model = _model()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.png").write_bytes((root / "img0.png").read_bytes())
    np.save(mixed / "x.npy", np.zeros((2, H, W, 3), np.float32))
    with pytest.raises(InputError, match="mixes"):
        bnrewrite.rewrite(model, calibration=str(mixed), verify=False, fold=False)
    with pytest.raises(InputError, match="images only"):
        bnrewrite.rewrite(model, calibration=str(mixed / "x.npy"), preprocess="tf", verify=False, fold=False)


def test_cli_all_bad_folder_exit_2(tmp_path):
    src = tmp_path / "m.keras"
    _model().save(src)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png at all")
    (bad / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    report = tmp_path / "r.json"
    proc = run_cli("convert", src, tmp_path / "out.keras", "--calibration", bad, "--preprocess", "tf",
                   "--report", report, cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert "no usable calibration image" in line and "2 bad" in line, line
    assert not (tmp_path / "out.keras").exists()
    assert json.loads(report.read_text())["ok"] is False


def test_cli_folder_report_counts_bad_images(image_folder, tmp_path):
    root, good = image_folder
    src = tmp_path / "m.keras"
    _model().save(src)
    report = tmp_path / "r.json"
    proc = run_cli("convert", src, tmp_path / "out.keras", "--calibration", root, "--preprocess", "caffe",
                   "--no-fold", "--report", report, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Input file read error" not in proc.stderr
    cal = json.loads(report.read_text())["calibration"]
    assert cal["samples"] == len(good) and cal["bad_images"] == 1, cal
    assert cal["bad_image_names"][0].startswith("broken.png: ")
    assert cal["images"]["preprocess"] == "caffe"


def test_verify_data_folder_read_with_calibration_preprocess(image_folder, monkeypatch):
    """``verify_data=`` an image folder is read with the calibration's ``preprocess`` (it used to be read
    with the default, scale): the verification inputs equal keras.applications' caffe preprocessing."""
    import bnrewrite
    from bnrewrite import verify

    root, good = image_folder
    seen = []
    real = verify._data_inputs

    def spy(data, specs, batch):
        xs = real(data, specs, batch)
        seen.append(xs[0])
        return xs

    monkeypatch.setattr(verify, "_data_inputs", spy)
    _, rep = bnrewrite.rewrite(_model(), calibration=root, preprocess="caffe", verify_data=root, batch_size=4,
                               return_report=True)
    assert rep.verification["ok"]
    want = _reference(good, "caffe")
    np.testing.assert_allclose(seen[0], want[:len(seen[0])], rtol=1e-5, atol=1e-3)
