"""Calibration data from TFRecord files (``DataPath(path, feature=NAME)``, :mod:`bnrewrite.io.tfrecord`).

References are independent of bnrewrite's reader: the numpy arrays the records
were written from, and for image bytes the images decoded and resized with
TensorFlow's ops here and preprocessed by ``keras.applications``' ``preprocess_input``.
The records are written with ``tf.io.TFRecordWriter``; broken files are made by
hand, their header checksums computed by a CRC-32C written here (checked
against TensorFlow's own headers).
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

N, SHAPE = 23, (4, 3)
H, W = 12, 10


# ----------------------------------------------------------------- writing records
def _example(**features) -> bytes:
    import tensorflow as tf

    def feature(v):
        if isinstance(v, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        v = np.asarray(v).ravel()
        if v.dtype.kind == "f":
            return tf.train.Feature(float_list=tf.train.FloatList(value=v))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def _write(path, records, gzipped=False):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path), options="GZIP" if gzipped else None) as w:
        for r in records:
            w.write(r)
    return path


def _crc32c(data: bytes) -> int:
    """Masked CRC-32C of a TFRecord header, bit by bit (independent of bnrewrite's table)."""
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 * (c & 1))
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _offsets(data: bytes) -> list[int]:
    """Byte offset of each record of an uncompressed TFRecord file."""
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        pos += 12 + struct.unpack("<Q", data[pos:pos + 8])[0] + 4
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One file with a float, an int64 and a serialized-tensor feature of the same samples; the
    same floats gzipped and split into a folder of shards; a file of PNG/JPEG bytes with bad records."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("tfrecord")
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (N, *SHAPE)).astype(np.float32)
    ints = rng.integers(-2**40, 2**40, (N, 6))
    tensors = [tf.io.serialize_tensor(s).numpy() for s in x]
    _write(root / "floats.tfrecord", [_example(x=s, label=i, t=t) for s, i, t in zip(x, ints, tensors)])
    _write(root / "floats_gz.tfrec", [_example(x=s) for s in x], gzipped=True)
    (root / "shards").mkdir()
    for k, (a, b) in enumerate([(0, 9), (9, 10), (10, N)]):  # read in name order, batches across files
        _write(root / "shards" / f"part-{k}.tfrecord", [_example(x=s) for s in x[a:b]], gzipped=k == 1)

    images, names, bad = [], [], {}
    for i, (h, w, ext) in enumerate([(12, 10, "png"), (20, 16, "jpg"), (9, 7, "png"), (31, 25, "jpg"),
                                     (None, None, "garbage"), (16, 30, "png"), (None, None, "jpeg-head")]):
        if ext == "garbage":
            img = b"not an image"
            bad[i] = "not a PNG or JPEG file"
        elif ext == "jpeg-head":
            img = b"\xff\xd8\xff\xe0" + b"\x00" * 20
            bad[i] = "not a decodable JPEG"
        else:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = (tf.io.encode_png(pixels) if ext == "png" else tf.io.encode_jpeg(pixels, quality=90)).numpy()
            names.append(i)
        images.append(img)
    _write(root / "images.tfrecord", [_example(image=img, label=np.int64(i)) for i, img in enumerate(images)])
    return {"root": root, "x": x, "ints": ints, "images": images, "good": names, "bad": bad}


def _spec(shape=SHAPE, dtype="float32", name="x"):
    from bnrewrite.io.data import InputSpec

    return [InputSpec(name, (None, *shape), dtype)]


def _read(path, specs=None, batch_size=5, **kw):
    from bnrewrite.io.data import CalibrationData, DataPath

    dp = DataPath(path, kw.pop("preprocess", None), kw.pop("feature", None))
    c = CalibrationData(dp, specs or _spec(), batch_size=batch_size, **kw)
    return [b[0] for b in c.batches()], c, dp


def _raises(match, path, specs=None, **kw):
    from bnrewrite.errors import InputError

    with pytest.raises(InputError, match=match) as e:
        _read(path, specs, **kw)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    return str(e.value)


def _reference_images(blobs, mode):
    """Decode + resize with TF's ops, preprocess with keras.applications."""
    import tensorflow as tf
    from keras.applications import imagenet_utils

    x = np.stack([tf.image.resize(tf.io.decode_image(b, channels=3, expand_animations=False), [H, W],
                                  method="bilinear").numpy() for b in blobs]).astype(np.float32)
    if mode == "scale":
        return x / np.float32(255.0)
    return imagenet_utils.preprocess_input(x, data_format="channels_last", mode=mode)


# ----------------------------------------------------------------- numeric features
def test_crc_reference_matches_tensorflow(data):
    head = (data["root"] / "floats.tfrecord").read_bytes()[:12]
    assert struct.unpack("<I", head[8:12])[0] == _crc32c(head[:8])


def test_float_feature_equals_numpy(data):
    batches, c, dp = _read(data["root"] / "floats.tfrecord", feature="x")
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3] and batches[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(batches), data["x"])
    assert "23 records" in c.description and "'x': float_list" in c.description
    assert dp.found == {}  # nothing bad to report for numbers


def test_gzip_file_and_folder_of_shards(data):
    for path in (data["root"] / "floats_gz.tfrec", data["root"] / "shards"):
        batches, c, _ = _read(path, batch_size=4, feature="x")
        assert [len(b) for b in batches] == [4] * 5 + [3], path  # batches span the shard files
        np.testing.assert_array_equal(np.concatenate(batches), data["x"])
    batches, _, _ = _read(data["root"] / "shards", batch_size=4, max_samples=6, feature="x")
    np.testing.assert_array_equal(np.concatenate(batches), data["x"][:6])


def test_int64_feature_for_int_and_float_inputs(data):
    path = data["root"] / "floats.tfrecord"
    batches, _, _ = _read(path, _spec((2, 3), "int64"), feature="label")
    np.testing.assert_array_equal(np.concatenate(batches), data["ints"].reshape(N, 2, 3))
    batches, _, _ = _read(path, _spec((6,), "float32"), feature="label")  # ints cast to a float input
    assert batches[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(batches), data["ints"].astype(np.float32))
    _raises("is float32, but model input 'x' is int32", path, _spec(SHAPE, "int32"), feature="x")


def test_serialized_tensor_feature(data):
    path = data["root"] / "floats.tfrecord"
    batches, c, _ = _read(path, feature="t")
    np.testing.assert_array_equal(np.concatenate(batches), data["x"])
    assert "serialized tensors" in c.description
    batches, _, _ = _read(path, _spec((4, None)), feature="t")  # a tensor brings its own shape
    np.testing.assert_array_equal(np.concatenate(batches), data["x"])
    _raises(r"floats.tfrecord feature 't' is float32, but model input 'x' is int32", path,
            _spec(SHAPE, "int32"), feature="t")
    _raises(r"floats.tfrecord#0: feature 't' is a tensor of shape \(4, 3\); model input 'x' expects samples "
            r"of shape \(3, 4\)", path, _spec((3, 4)), feature="t")


def test_tensor_with_huge_declared_shape_refused_before_parsing(tmp_path):
    """parse_tensor would fill a declared shape with zeros: a few bytes could ask for any amount of memory."""
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=1)  # DT_FLOAT, no values
    for d in (2**20, 2**20, 3):
        proto.tensor_shape.dim.add().size = d
    path = _write(tmp_path / "bomb.tfrecord", [_example(t=proto.SerializeToString())])
    _raises(r"bomb.tfrecord#0: feature 't' is a tensor of shape \(1048576, 1048576, 3\) whose data is 0 bytes, "
            r"not 13,194,139,533,312", path, _spec((None, None, 3)), feature="t")


def test_bad_feature_names_and_counts(data, tmp_path):
    path = data["root"] / "floats.tfrecord"
    msg = _raises(r"give the feature name to read \(--tfrecord-feature NAME\)", path)
    assert "label (int64_list), t (bytes_list), x (float_list)" in msg
    msg = _raises("no feature 'pixels' in the first record", path, feature="pixels")
    assert "label (int64_list), t (bytes_list), x (float_list)" in msg
    _raises(r"floats.tfrecord#0: feature 'x' has 12 values; model input 'x' expects samples of shape "
            r"\(5, 3\), 15 values", path, _spec((5, 3)), feature="x")
    _raises(r"has open dimensions \(samples of shape \(None, 3\)\); every dimension but the batch must be known", path,
            _spec((None, 3)), feature="x")
    # a later record with a wrong count, another kind, or without the feature: named by its index
    recs = [_example(x=np.zeros(12, np.float32)) for _ in range(8)]
    for i, bad, match in [(7, _example(x=np.zeros(11, np.float32)), r"odd.tfrecord#7: feature 'x' has 11 values"),
                          (3, _example(x=np.zeros(12, np.int64)), r"odd.tfrecord#3: feature 'x' is int64_list, "
                                                                    "but the first record's is float_list"),
                          (5, _example(y=np.zeros(12, np.float32)), r"odd.tfrecord#5: record has no feature 'x' "
                                                                    r"\(it has: y \(float_list\)\)")]:
        _write(tmp_path / "odd.tfrecord", recs[:i] + [bad] + recs[i + 1:])
        _raises(match, tmp_path / "odd.tfrecord", feature="x")


def test_options_refused_where_they_do_not_apply(data, tmp_path):
    from bnrewrite.io.data import InputSpec

    path = data["root"] / "floats.tfrecord"
    _raises("applies to images only", path, feature="x", preprocess="tf")
    np.save(tmp_path / "x.npy", data["x"])
    _raises(r"feature='x' \(--tfrecord-feature\) applies to .tfrecord/.tfrec files only", tmp_path / "x.npy",
            feature="x")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", data["x"])
    (mixed / "b.tfrecord").write_bytes(path.read_bytes())
    _raises(r"folder mixes .npy/.npz shards \(a.npy, ...\) and .tfrecord files \(b.tfrecord, ...\)", mixed,
            feature="x")
    two = [InputSpec("a", (None, *SHAPE), "float32"), InputSpec("b", (None, *SHAPE), "float32")]
    _raises("a .tfrecord feature feeds one input, but the model has 2 inputs", path, two, feature="x")


# ----------------------------------------------------------------- broken framing
def test_corrupt_and_truncated_files(data, tmp_path):
    good = (data["root"] / "floats.tfrecord").read_bytes()
    offsets = _offsets(good)
    assert len(offsets) == N
    cases = {
        # payload byte of the last record: found by TensorFlow's checksum while reading
        "flip_data": (good[:-10] + bytes([good[-10] ^ 0xFF]) + good[-9:], r"corrupted record at \d+"),
        # length bytes of record 3: the header checksum no longer matches
        "flip_length": (good[:offsets[3]] + bytes([good[offsets[3]] ^ 0x01]) + good[offsets[3] + 1:],
                        "record 3: the checksum of its length does not match"),
        "truncated": (good[:-7], f"truncated: record {N - 1} needs"),
        "cut_header": (good[:offsets[5] + 5], "truncated: record 5 has a 5-byte header"),
        "not_tfrecord": (b"\x93NUMPY" + b"\x00" * 200, "record 0: the checksum of its length does not match"),
        "bad_gzip": (b"\x1f\x8b" + b"\x00" * 50, "cannot decompress it"),
    }
    for name, (blob, why) in cases.items():
        path = tmp_path / f"{name}.tfrecord"
        path.write_bytes(blob)
        _raises(f"{name}.tfrecord: not a valid TFRecord file \\(.*{why}", path, feature="x")
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    _raises("no records", tmp_path / "empty.tfrecord", feature="x")
    gz = tmp_path / "cut_gz.tfrecord"
    gz.write_bytes(gzip.compress(good)[:-30])
    _raises("cut_gz.tfrecord: not a valid TFRecord file", gz, feature="x")


@pytest.mark.parametrize("gzipped", [False, True])
def test_huge_declared_record_length_refused(data, tmp_path, gzipped):
    """A header with a valid checksum declaring 1 TiB: TensorFlow would try to allocate it (and crash)."""
    head = struct.pack("<Q", 2**40)
    blob = head + struct.pack("<I", _crc32c(head)) + b"x" * 100
    blob = (data["root"] / "floats.tfrecord").read_bytes() + blob  # after good records: found before any read
    path = tmp_path / "huge.tfrecord"
    path.write_bytes(gzip.compress(blob) if gzipped else blob)
    _raises(f"huge.tfrecord: record {N} declares 1,099,511,627,776 bytes, more than the 67,108,864 allowed",
            path, feature="x")


# ----------------------------------------------------------------- image bytes
@pytest.mark.parametrize("mode", ["caffe", "tf", None])
def test_image_feature_matches_keras_applications(data, mode):
    batches, c, dp = _read(data["root"] / "images.tfrecord", _spec((H, W, 3)), batch_size=2, feature="image",
                           preprocess=mode)
    want = _reference_images([data["images"][i] for i in data["good"]], mode or "scale")
    np.testing.assert_allclose(np.concatenate(batches), want, rtol=1e-6, atol=1e-4)
    found = dp.found
    assert found["images"] == len(data["good"]) == 5 and found["records"] == 7
    assert found["bad_images"] == 2 and found["feature"] == "image" and found["preprocess"] == (mode or "scale")
    assert [n.split(": ")[0] for n in found["bad_image_names"]] == [f"images.tfrecord#{i}" for i in data["bad"]]
    for name, (i, why) in zip(found["bad_image_names"], data["bad"].items()):
        assert why in name, name


def test_all_bad_images_and_broken_image_file(data, tmp_path):
    path = _write(tmp_path / "bad.tfrecord", [_example(image=b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),
                                              _example(image=b"raw pixels, not encoded")])
    msg = _raises("bad.tfrecord: no usable calibration image among 2 records of feature 'image' "
                  r"\(2 bad, e.g. bad.tfrecord#0: ", path, _spec((H, W, 3)), feature="image")
    assert "PNG/JPEG images or tensors from tf.io.serialize_tensor" in msg
    good = (data["root"] / "images.tfrecord").read_bytes()
    flipped = tmp_path / "flipped.tfrecord"  # framing broken after good images: raised, not a bad image
    flipped.write_bytes(good[:-10] + bytes([good[-10] ^ 0xFF]) + good[-9:])
    _raises(r"flipped.tfrecord: not a valid TFRecord file \(corrupted record at \d+\)", flipped, _spec((H, W, 3)),
            feature="image", preprocess="tf")
    _raises("need a model input of shape \\(height, width, 1 or 3\\)", data["root"] / "images.tfrecord",
            _spec((H, W, 4)), feature="image")


# ----------------------------------------------------------------- end to end
def test_calibrate_on_tfrecord_equals_numpy_statistics(data):
    """calibrate() on a TFRecord feature: the BN's statistics are numpy's moments of its input."""
    import keras

    import bnrewrite
    from bnrewrite.calibration import calibrate
    from bnrewrite.io.data import DataPath

    inp = keras.Input(SHAPE, name="x")
    dense = keras.layers.Dense(5, name="dense")
    out = keras.layers.BatchNormalization(name="bn")(dense(inp))
    model = keras.Model(inp, out)
    kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    h = data["x"].astype(np.float64) @ kernel + bias  # the BN's input, (N, 4, 5)

    mg = bnrewrite.load(model)
    rep = calibrate(mg, DataPath(data["root"] / "shards", feature="x"), batch_size=4)
    w = mg.layer("bn").weights
    np.testing.assert_allclose(w["moving_mean"], h.mean((0, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w["moving_variance"], h.var((0, 1), ddof=1), rtol=1e-5)
    assert rep["samples"] == N and rep["layers"][0]["values_per_channel"] == N * SHAPE[0]


def test_rewrite_on_image_records_reports_bad_ones(data, tmp_path):
    """Through the calibrate_bn pass: same statistics as the reference images, bad records in the report."""
    import keras

    import bnrewrite
    from bnrewrite.io.data import DataPath

    x = keras.Input((H, W, 3), name="image")
    y = keras.layers.Conv2D(4, 3, name="conv")(keras.layers.BatchNormalization(name="bn_in")(x))
    model = keras.Model(x, keras.layers.BatchNormalization(name="bn_conv")(y))
    ref = bnrewrite.rewrite(model, calibration=_reference_images([data["images"][i] for i in data["good"]], "torch"),
                            batch_size=3, verify=False, fold=False)
    new, rep = bnrewrite.rewrite(model, calibration=DataPath(data["root"] / "images.tfrecord", "torch", "image"),
                                 batch_size=3, verify=False, fold=False, return_report=True)
    for n in ("bn_in", "bn_conv"):
        for k in ("moving_mean", "moving_variance"):
            a, b = (np.asarray(getattr(m.get_layer(n), k), np.float64) for m in (new, ref))
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(b).max())))
    cal = rep.calibration
    assert cal["samples"] == 5 and cal["bad_images"] == 2
    assert cal["bad_image_names"][0].startswith("images.tfrecord#4: not a PNG or JPEG file")
    assert cal["images"]["records"] == 7 and cal["images"]["feature"] == "image"


def test_cli_tfrecord_feature(tmp_path):
    """``convert --calibration F.tfrecord --tfrecord-feature v``: numpy's mean and ddof=1 variance; without
    the feature name, one error line and exit 2."""
    import json

    from conftest import ROOT
    from test_cli import assert_one_line_error, run_cli

    values = np.random.default_rng(11).normal(3.0, 2.0, (50, 1)).astype("float32")
    _write(tmp_path / "v.tfrecord", [_example(v=row, other=b"x") for row in values])
    proc = run_cli("convert", ROOT / "fixtures" / "lone_bn.h5", "out.onnx", "--calibration", "v.tfrecord",
                   "--tfrecord-feature", "v", "--report", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((tmp_path / "r.json").read_text())["calibration"]["per_channel"]["bn"]
    x = values.astype(np.float64)
    np.testing.assert_allclose(stats["moving_mean"], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["moving_variance"], x.var(0, ddof=1), rtol=1e-6)

    proc = run_cli("convert", ROOT / "fixtures" / "lone_bn.h5", "out2.onnx", "--calibration", "v.tfrecord",
                   cwd=tmp_path)
    assert_one_line_error(proc)
    assert "--tfrecord-feature" in proc.stderr and not (tmp_path / "out2.onnx").exists()
