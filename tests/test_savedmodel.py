"""TF2 Keras SavedModel folders (issue 13, part 2), read as data: ``keras_metadata.pb`` for the
config, the ``variables/`` checkpoint for the weights; the saved graph is never loaded or run.

Fixtures (``fixtures/make_fixtures.py``, written by tf_keras ``model.save(dir, save_format="tf")``):

* ``savedmodel_td_bn/``: TimeDistributed(BN), a BN called with ``training=True``, a nested
  frozen base. ``reference/savedmodel_td_bn_inference.npz`` is tf_keras's *inference* output
  (``predict`` of a twin built without the baked flag, same weights), made when it was written;
* ``savedmodel_writes_file/``: carries a TensorFlow resource whose saved functions run
  ``tf.io.write_file("bnrewrite_pwned.txt")`` when the graph is loaded (the control below shows
  tf_keras's ``load_model`` does write it); ``reference/savedmodel_writes_file.npz`` is tf_keras's predict;
* ``savedmodel_plain_module/``: a plain ``tf.Module``, no Keras metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close

import bnrewrite
from bnrewrite.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
TD = FIX / "savedmodel_td_bn"
TRAP = FIX / "savedmodel_writes_file"
PLAIN = FIX / "savedmodel_plain_module"
PWNED = "bnrewrite_pwned.txt"


def _ref(stem):
    ref = np.load(FIX / "reference" / f"{stem}.npz")
    inputs = {k[len("inputs__"):]: ref[k] for k in ref.files if k.startswith("inputs__")}
    return inputs, ref["outputs__0"]


def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "bnrewrite", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def test_convert_onnx_matches_tf_keras_inference(tmp_path):
    import onnxruntime as ort

    inputs, want = _ref("savedmodel_td_bn_inference")
    out = tmp_path / "td.onnx"
    rep = bnrewrite.convert(TD, out)
    assert rep.ok and rep.input["format"] == "savedmodel"
    assert "SavedModel" in rep.verification["reference"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: inputs["frames"]})[0]
    assert_close(got, want, "onnx vs tf_keras inference output")
    changed = {p["name"]: p["changed"] for p in rep.passes}
    assert changed["inference_mode"] and changed["unwrap_timedistributed"]


def test_convert_keras_matches_tf_keras_inference(tmp_path):
    import keras

    inputs, want = _ref("savedmodel_td_bn_inference")
    out = tmp_path / "td.keras"
    bnrewrite.convert(TD, out)
    model = keras.saving.load_model(out, compile=False)
    assert_close(model.predict(inputs["frames"], verbose=0), want, ".keras (Keras 3) vs tf_keras inference output")


def test_weights_are_the_checkpoints():
    """Every weight in the graph is what tf_keras's own load_model of the (trusted) fixture holds."""
    import tf_keras

    mg = bnrewrite.load(TD)
    loaded = tf_keras.models.load_model(TD, compile=False)
    base = loaded.get_layer("base")
    for node, klayer in [("td_conv", loaded.get_layer("td_conv")), ("td_bn", loaded.get_layer("td_bn")),
                         ("base_fc", base.get_layer("base_fc")), ("base_bn", base.get_layer("base_bn")),
                         ("bn_training", loaded.get_layer("bn_training")), ("logits", loaded.get_layer("logits"))]:
        got = mg.layer(node).weights
        want = {w.name.split(":")[0].rsplit("/", 1)[-1]: w.numpy() for w in klayer.weights}
        assert got.keys() == want.keys(), node
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{node}/{k}")
    assert mg.layer("base_bn").config["trainable"] is False  # the nested frozen base
    assert mg.graph.nodes["bn_training"]["kwargs"].get("training") is True


def test_inspect_json_reports_pitfalls(tmp_path):
    run = _cli("inspect", TD, "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    found = {(f["code"], f["layer"]) for f in json.loads(run.stdout)["findings"]}
    assert {("TIMEDISTRIBUTED_BN", "td_bn"), ("TRAINING_BAKED_IN", "bn_training"), ("FROZEN_BN", "base_bn")} <= found, found


def test_saved_graph_is_never_run(tmp_path, monkeypatch):
    """convert and inspect leave no file from the graph; tf_keras's own load_model does write it
    (the file name is relative: it lands in the current folder)."""
    import tf_keras

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    inputs, want = _ref("savedmodel_writes_file")
    assert bnrewrite.convert(TRAP, "out.h5").ok
    audit = bnrewrite.inspect(TRAP)
    assert len(audit.to_dict()["bn_layers"]) == 1
    assert not (work / PWNED).exists()
    assert sorted(p.name for p in work.iterdir()) == ["out.h5"]
    loaded = tf_keras.models.load_model(work / "out.h5", compile=False)
    assert_close(loaded.predict(inputs["x"], verbose=0), want, "converted .h5 vs tf_keras predict")

    control = tmp_path / "control"
    control.mkdir()
    monkeypatch.chdir(control)
    tf_keras.models.load_model(TRAP, compile=False)
    assert (control / PWNED).exists(), "the fixture's trap no longer fires on load: the test proves nothing"


def test_plain_module_refused_in_one_line(tmp_path):
    with pytest.raises(InputError) as ei:
        bnrewrite.convert(PLAIN, tmp_path / "out.onnx")
    msg = str(ei.value)
    assert "\n" not in msg and "without Keras metadata" in msg and str(PLAIN) in msg, msg
    assert list(tmp_path.iterdir()) == []


def _copy(tmp_path) -> Path:
    dst = tmp_path / "sm"
    shutil.copytree(TRAP, dst)
    return dst


def test_variables_must_be_regular_files(tmp_path):
    sm = _copy(tmp_path)
    data = next((sm / "variables").glob("variables.data-*"))
    data.unlink()
    os.mkfifo(data)
    with pytest.raises(InputError, match="FIFO"):
        bnrewrite.load(sm)


def test_metadata_must_be_a_regular_file(tmp_path):
    """A device is refused by kind; a link to one outside the folder already as a link out of it."""
    import os

    sm = _copy(tmp_path)
    (sm / "keras_metadata.pb").unlink()
    (sm / "keras_metadata.pb").symlink_to("/dev/zero")
    with pytest.raises(InputError, match="leads out of the SavedModel folder"):
        bnrewrite.load(sm)
    (sm / "keras_metadata.pb").unlink()
    os.mkfifo(sm / "keras_metadata.pb")
    with pytest.raises(InputError, match="FIFO"):
        bnrewrite.load(sm)


def test_declared_sizes_are_capped(tmp_path, monkeypatch):
    monkeypatch.setenv("BNREWRITE_MAX_WEIGHT_BYTES", "64")
    with pytest.raises(InputError, match="declares") as ei:
        bnrewrite.load(TRAP)
    assert ei.value.code == "OVERSIZED_DATA"


def test_damaged_metadata_refused(tmp_path):
    sm = _copy(tmp_path)
    (sm / "keras_metadata.pb").write_bytes(b"\xff\xff\xff\xff not a protobuf")
    with pytest.raises(InputError, match="SavedMetadata"):
        bnrewrite.load(sm)


def test_object_graph_string_bomb_refused(tmp_path):
    """The checkpoint stores the object graph as a string: its varint length, a checksum, its bytes.
    TensorFlow zero-fills the declared length before it finds the data file too short (3 GB declared in
    an 11 KB file took 3.6 GB; 20 GB crashed with SIGSEGV). bnrewrite reads that entry itself, within
    the bytes the index gives it: refused in one line, nothing allocated."""
    import resource

    import tensorflow as tf

    folder = tmp_path / "sm"
    shutil.copytree(TD, folder)
    og = tf.train.load_checkpoint(str(folder / "variables" / "variables")).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    data_path = next((folder / "variables").glob("variables.data-*"))
    data = bytearray(data_path.read_bytes())
    at = data.find(og) - 4 - 2  # a 2-byte varint length (10,608), then the checksum
    assert at > 0 and data[at:at + 2] == bytes([len(og) & 0x7F | 0x80, len(og) >> 7])
    data[at:at + 9] = bytes([0x80, 0xBC, 0xC1, 0x96, 0x0B]) + b"\0\0\0\0"  # varint 3,000,000,000
    data_path.write_bytes(bytes(data))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="declares a string of 2.8 GiB in 10.4 KiB") as ei:
        bnrewrite.load(folder)
    assert str(folder) in str(ei.value) and ei.value.code == "OVERSIZED_DATA"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB


def _tf23_layout(tmp_path):
    """The TD SavedModel in TensorFlow 2.0-2.4's layout: each Keras object's metadata moved into
    saved_model.pb's object graph, keras_metadata.pb removed. Returns (folder, its metadata nodes)."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tf_keras.protobuf import saved_metadata_pb2

    folder = tmp_path / "tf23"
    shutil.copytree(TD, folder)
    meta = saved_metadata_pb2.SavedMetadata.FromString((folder / "keras_metadata.pb").read_bytes())
    sm = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes())
    nodes = sm.meta_graphs[0].object_graph_def.nodes
    for n in meta.nodes:
        nodes[n.node_id].user_object.identifier = n.identifier
        nodes[n.node_id].user_object.metadata = n.metadata
    (folder / "saved_model.pb").write_bytes(sm.SerializeToString())
    (folder / "keras_metadata.pb").unlink()
    return folder, meta.nodes


def test_tf23_metadata_inside_saved_model_pb(tmp_path):
    """TensorFlow 2.0-2.4 wrote no keras_metadata.pb: each Keras object's metadata sat in saved_model.pb's
    object graph (``user_object``: identifier ``_tf_keras_*``, JSON metadata), as in MLPerf Tiny's
    keyword-spotting SavedModel (fixtures/real). The same folder in that layout (the metadata moved
    into saved_model.pb, keras_metadata.pb removed) converts and matches tf_keras on the original; the
    protobuf is only parsed, never loaded as a graph."""
    folder, _ = _tf23_layout(tmp_path)
    inputs, want = _ref("savedmodel_td_bn_inference")
    rep = bnrewrite.convert(folder, tmp_path / "o.onnx")
    assert rep.verification["ok"], rep.verification
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: inputs[i.name] if i.name in inputs else next(iter(inputs.values()))
                          for i in sess.get_inputs()})[0]
    assert_close(got, want, "tf 2.3 layout")


def test_tf23_metadata_bounded_like_a_config(tmp_path, monkeypatch):
    """Red-team round 5: in the TF 2.0-2.4 layout every Keras object's JSON in saved_model.pb is parsed
    (120 MB of it took 3.8 GB), and a path string per node of a deep object chain cost depth x nodes
    (a 1.3 MB file: 7.7 GB). Paths are kept as parent links, and the metadata with its paths is bounded
    by the config limit (BNREWRITE_MAX_CONFIG_BYTES), here lowered to show it."""
    folder, nodes = _tf23_layout(tmp_path)
    total = sum(len(n.metadata) for n in nodes)
    monkeypatch.setenv("BNREWRITE_MAX_CONFIG_BYTES", str(total // 2))
    with pytest.raises(InputError, match="its Keras metadata and object paths total .* more than the config limit") as ei:
        bnrewrite.load(folder)
    assert ei.value.code == "OVERSIZED_DATA"
    monkeypatch.setenv("BNREWRITE_MAX_CONFIG_BYTES", str(16 << 20))
    assert bnrewrite.load(folder).layers()  # the same folder under the default limit


def test_index_listing_a_block_twice_refused(tmp_path):
    """A checkpoint index whose top-level block lists one data block many times makes TensorFlow's reader
    walk it again for each listing (2.6 MB: over 10 minutes in C++, where no stop signal reaches Python).
    bnrewrite walks the table first: each data block listed once, in order."""
    import struct

    def varint(n):
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            if not n:
                return out + bytes([b])
            out += bytes([b | 0x80])

    def block(entries):
        body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries)
        return body + struct.pack("<I", 0) + struct.pack("<I", 1)

    table = b""

    def put(b):
        nonlocal table
        off = len(table)
        table += b + b"\0" + b"\0\0\0\0"  # type "uncompressed", checksum (not read by bnrewrite)
        return varint(off) + varint(len(b))

    data = put(block([(b"a", b"1"), (b"b", b"2")]))
    index = put(block([(b"b", data), (b"c", data)]))  # the same block twice
    meta = put(block([]))
    folder = tmp_path / "sm"
    shutil.copytree(TD, folder)
    (folder / "variables" / "variables.index").write_bytes(
        table + (meta + index).ljust(40, b"\0") + bytes.fromhex("57fb808b247547db"))
    with pytest.raises(InputError, match="damaged variables/ checkpoint index .index blocks overlap"):
        bnrewrite.load(folder)
