"""Reading is data only: hostile model files (``docs/hardening.md``, "Reading is data only").

A model file must not make bnrewrite read another file (HDF5 external storage,
external links, soft links, virtual datasets), take memory the file cannot
justify (declared shapes, gzip and zip bombs, hard links multiplying one
dataset), or block (FIFOs, devices). Each hostile file is a small real fixture
(``fixtures/lone_bn.h5`` / ``.keras``) with the hostile part grafted in by h5py
(``tests/hostile_files.py``). Every refusal must be an InputError with one clear
line, no secret bytes anywhere, a bounded peak memory of the real HDF5 child
process, and no hang.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import hostile_files as hf
from bnrewrite.errors import InputError
from bnrewrite.io import h5, read_model
from bnrewrite.io.safe_files import (
    GiB, MiB, check_regular, memory_h5, model_weights_tree, read_zip_members, sniff, weights_limit,
)

#: every case must end well within this (a hang would be far longer)
CASE_SECONDS = 30
#: the HDF5 child's peak resident memory on a refused file (it starts at ~50 MiB)
CHILD_RSS_KIB = 150 * 1024
SECRET_TEXT = hf.SECRET.decode()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("BNREWRITE_MAX_WEIGHT_BYTES", "BNREWRITE_MAX_CONFIG_BYTES", "_BNREWRITE_CHILD_AS_BYTES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BNREWRITE_READ_TIMEOUT", "20")


def refused(path, *needles, reader=read_model) -> str:
    """``reader(path)`` raises InputError with one line naming ``path`` and every needle,
    without the secret, quickly."""
    t0 = time.perf_counter()
    with pytest.raises(InputError) as ei:
        reader(path)
    msg = str(ei.value)
    assert msg.strip() and "\n" not in msg.strip(), msg
    assert str(path) in msg, msg
    assert SECRET_TEXT not in msg and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, msg
    assert time.perf_counter() - t0 < CASE_SECONDS
    return msg


def child_rss_kib() -> int:
    return h5.last_child["maxrss_kib"]


def raw_child_output(path: Path) -> bytes:
    """stdout + stderr of the real HDF5 child (mode model) on ``path``, as bytes. Its stdin
    stays open until it is done (EOF on stdin tells the child that its parent is gone)."""
    script = Path(h5.__file__).with_name("h5_extract.py")
    proc = subprocess.Popen(
        [sys.executable, "-c", h5._RUN, str(script), "model", str(path), str(weights_limit(path.stat().st_size)),
         str(2 * GiB), str(os.getpid()), "20", str(16 * MiB)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(struct.pack("<Q", 0))
        proc.stdin.flush()
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(CASE_SECONDS)
    finally:
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return out + err


# --------------------------------------------------------------------------
# other files: external storage, links, virtual datasets
# --------------------------------------------------------------------------

def test_external_storage_refused(tmp_path):
    p = hf.external_storage(tmp_path)
    refused(p, "'model_weights/bn/bn/gamma:0'", "external file", "reads no other file")


@pytest.mark.parametrize("gen", [hf.external_link, hf.external_link_group], ids=["dataset", "group"])
def test_external_link_refused(tmp_path, gen):
    refused(gen(tmp_path), "external link", "reads no other file")


@pytest.mark.parametrize("gen", [hf.soft_link, hf.soft_link_group, hf.soft_link_dangling],
                         ids=["to_dataset_outside", "group", "dangling"])
def test_soft_link_refused(tmp_path, gen):
    """Soft links are refused wherever they point (tf.keras and Keras never write them)."""
    refused(gen(tmp_path), "soft link", "follows no links")


def test_virtual_dataset_refused(tmp_path):
    refused(hf.virtual_dataset(tmp_path), "'model_weights/bn/bn/gamma:0'", "virtual dataset", "secret.h5")


def test_absolute_weight_name_refused(tmp_path):
    refused(hf.absolute_weight_name(tmp_path), "'/stash/secret'", "absolute path")


@pytest.mark.parametrize("gen", [hf.external_storage, hf.external_link, hf.external_link_group, hf.soft_link,
                                 hf.soft_link_group, hf.virtual_dataset, hf.absolute_weight_name,
                                 hf.unlisted_dataset],
                         ids=lambda g: g.__name__)
def test_child_output_has_no_secret(tmp_path, gen):
    """Whatever the child sends back (result or error) holds none of the other file's bytes."""
    out = raw_child_output(gen(tmp_path))
    assert out, "the child wrote nothing"
    assert hf.SECRET not in out and hf.SECRET[:16] not in out


def test_only_named_datasets_read(tmp_path):
    """Datasets no layer names (another group, an extra member of the BN group) are not read."""
    raw = h5._extract_isolated(hf.unlisted_dataset(tmp_path))
    assert raw["error"] is None
    assert set(raw["groups"]) == {"x", "bn"}
    assert set(raw["groups"]["bn"]["data"]) == {f"bn/{w}" for w in hf.BN_WEIGHTS}
    assert hf.SECRET not in pickle.dumps(raw)


# --------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------

def test_declared_1gb_refused(tmp_path):
    """A 14 KB file declaring a 1 GiB dataset is refused from its declared size, not read."""
    p = hf.declared_1gb(tmp_path)
    assert p.stat().st_size < 64 * 1024
    refused(p, "'model_weights/bn/bn/gamma:0'", "declares 1.0 GiB", "more data than", "BNREWRITE_MAX_WEIGHT_BYTES")
    assert child_rss_kib() < CHILD_RSS_KIB


def test_gzip_bomb_refused(tmp_path):
    """1 GiB of compressed zeros in a ~1 MB file: refused before anything is decompressed."""
    p = hf.gzip_bomb(tmp_path)
    assert p.stat().st_size < 2 * MiB
    refused(p, "declares 1.0 GiB", "more data than")
    assert child_rss_kib() < CHILD_RSS_KIB


def test_inflate_bomb_refused(tmp_path):
    """A chunk declaring 512 KiB whose deflate stream inflates to 256 MiB (HDF5 would grow its
    buffer to hold it): refused after inflating at most a few MiB."""
    refused(hf.inflate_bomb(tmp_path), "chunk (0,)", "inflates to more than", "decompression bomb")
    assert child_rss_kib() < CHILD_RSS_KIB


def test_hard_links_refused(tmp_path):
    """Four names (hard links) for one 40 MiB dataset: one fits the limit, four do not."""
    refused(hf.hard_links(tmp_path), "read under 2 names", "more data than")
    assert child_rss_kib() < CHILD_RSS_KIB  # refused before the first one was read


def test_repeated_weight_names_refused(tmp_path):
    refused(hf.repeated_weight_names(tmp_path), "'model_weights/bn/bn/gamma:0'", "names", "more data than")


def test_hard_links_read_once(tmp_path):
    """Within the limit, a dataset reached through several names is read once and shared."""
    raw = h5._extract_isolated(hf.hard_links(tmp_path, each=4 * MiB, name="hard_links_small.h5"))
    data = raw["groups"]["bn"]["data"]
    assert len(data) == 4 and len({id(v) for v in data.values()}) == 1
    assert raw["read_bytes"] == 4 * MiB and raw["declared_bytes"] >= 16 * MiB


def test_memory_cap_in_child(tmp_path, monkeypatch):
    """The child's RLIMIT_AS turns an allocation it cannot make into one clear line: here the
    limit is raised to 2 GiB by env, so the 1 GiB dataset passes the size check, but the
    child may only map 600 MB."""
    monkeypatch.setenv("BNREWRITE_MAX_WEIGHT_BYTES", "2G")
    monkeypatch.setenv("_BNREWRITE_CHILD_AS_BYTES", str(600 * 10**6))
    refused(hf.declared_1gb(tmp_path), "declares more data than the reader may hold in memory",
            "'model_weights/bn/bn/gamma:0'")
    assert h5.last_child["returncode"] == 0 and child_rss_kib() < CHILD_RSS_KIB


def test_weights_limit_rule(monkeypatch):
    assert weights_limit(0) == 64 * MiB
    assert weights_limit(MiB) == 96 * MiB
    assert weights_limit(10 * GiB) == 4 * GiB  # hard cap
    monkeypatch.setenv("BNREWRITE_MAX_WEIGHT_BYTES", "6G")
    assert weights_limit(0) == 6 * GiB
    monkeypatch.setenv("BNREWRITE_MAX_WEIGHT_BYTES", "lots")
    with pytest.raises(InputError, match="BNREWRITE_MAX_WEIGHT_BYTES"):
        weights_limit(0)


def test_env_raises_limit(tmp_path, monkeypatch):
    """BNREWRITE_MAX_WEIGHT_BYTES lets a legitimately large declaration through (here the
    40 MiB dataset under four names)."""
    monkeypatch.setenv("BNREWRITE_MAX_WEIGHT_BYTES", "256M")
    raw = h5._extract_isolated(hf.hard_links(tmp_path))
    assert raw["error"] is None and raw["read_bytes"] == 40 * MiB


# --------------------------------------------------------------------------
# .keras: model.weights.h5 under the same rules, zip members
# --------------------------------------------------------------------------

@pytest.mark.parametrize("gen,needle", [
    (hf.keras_external_storage, "external file"), (hf.keras_external_link, "external link"),
    (hf.keras_soft_link, "soft link"), (hf.keras_virtual_dataset, "virtual dataset"),
    (hf.keras_declared_1gb, "declares 1.0 GiB"), (hf.keras_group_loop, "reached twice"),
], ids=lambda x: getattr(x, "__name__", "")[6:] or None)
def test_keras_weights_refused(tmp_path, gen, needle):
    msg = refused(gen(tmp_path), "model.weights.h5", needle)
    assert "layers/batch_normalization" in msg
    assert child_rss_kib() < CHILD_RSS_KIB


def _self_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_zip_bomb_config_refused(tmp_path):
    """A ~1 MB config.json that inflates to 1 GiB: refused from its declared size."""
    p = hf.zip_bomb_config(tmp_path)
    before = _self_rss_kib()
    refused(p, "config.json", "declares 1.0 GiB", "BNREWRITE_MAX_CONFIG_BYTES")
    assert _self_rss_kib() - before < 100 * 1024


def test_zip_bomb_lying_header_refused(tmp_path):
    """config.json declares 2 KiB but inflates to 1 GiB: at most the declared bytes are
    inflated, and the CRC then fails."""
    p = hf.zip_bomb_lying(tmp_path)
    before = _self_rss_kib()
    refused(p, "not a readable .keras archive", "config.json")
    assert _self_rss_kib() - before < 100 * 1024


def test_zip_bomb_weights_refused(tmp_path):
    refused(hf.zip_bomb_weights(tmp_path), "model.weights.h5", "declares 1.0 GiB", "BNREWRITE_MAX_WEIGHT_BYTES")


@pytest.mark.parametrize("gen,needle", [
    (hf.zip_encrypted, "encrypted"), (hf.zip_odd_method, "compression method 99"), (hf.zip_duplicate, "twice"),
], ids=["encrypted", "odd_method", "duplicate"])
def test_zip_odd_members_refused(tmp_path, gen, needle):
    refused(gen(tmp_path), "config.json", needle)


def test_read_zip_members(tmp_path):
    """Named members only, caps by declared size, required members, exact bytes back."""
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("small.json", b"{}")
        z.writestr("big.txt", b" " * MiB)
        z.writestr("other", b"not asked for")
    assert read_zip_members(p, {"small.json": 10, "missing": 10}) == {"small.json": b"{}"}
    assert read_zip_members(p, {"big.txt": MiB})["big.txt"] == b" " * MiB
    with pytest.raises(InputError, match="declares 1.0 MiB uncompressed, more than the 64.0 KiB allowed"):
        read_zip_members(p, {"big.txt": 64 * 1024})
    with pytest.raises(InputError, match="has no missing"):
        read_zip_members(p, {"missing": 10}, required=("missing",))


# --------------------------------------------------------------------------
# regular files only; format by content
# --------------------------------------------------------------------------

def test_dev_zero_symlink_refused(tmp_path):
    p = hf.dev_zero_symlink(tmp_path)
    refused(p, "character device", "not a regular file")
    refused(p, "character device", reader=check_regular)


def test_regular_symlink_reads(tmp_path):
    mg = read_model(hf.regular_symlink(tmp_path))
    assert mg.layer("bn").weights["gamma"].tolist() == [1.0]


@contextmanager
def fifo_unblocker(path: Path, after: float = 5.0):
    """If the code under test blocks on the FIFO, open and close its writing end after
    ``after`` s so the test fails instead of hanging. Yields a list that is non-empty if it had to."""
    stop, fired = threading.Event(), []

    def run():
        if stop.wait(after):
            return
        while not stop.is_set():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                fired.append(True)
            except OSError:
                pass
            stop.wait(0.1)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield fired
    finally:
        stop.set()
        t.join(2)


def test_fifo_refused(tmp_path):
    p = hf.fifo(tmp_path)
    with fifo_unblocker(p) as fired:
        t0 = time.perf_counter()
        refused(p, "FIFO", "not a regular file")
        refused(p, "FIFO", reader=sniff)
        assert time.perf_counter() - t0 < 2 and not fired


def test_socket_refused(tmp_path):
    import socket

    p = tmp_path / "model.keras"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(p))
        refused(p, "is a socket", "not a regular file")


def test_h5_named_keras_reads_as_h5(tmp_path):
    """An HDF5 model saved as ``x.keras`` is read as HDF5 (content, not suffix)."""
    p = hf.h5_named_keras(tmp_path)
    assert sniff(p) == "hdf5"
    mg = read_model(p)
    assert mg.source["format"] == "h5" and mg.layer("bn").weights["moving_variance"].tolist() == [1.0]


def test_keras_named_h5_reads_as_keras(tmp_path):
    p = hf.keras_named_h5(tmp_path)
    assert sniff(p) == "zip"
    mg = read_model(p)
    assert mg.source["format"] == "keras" and mg.layer("bn").weights["gamma"].tolist() == [1.0]


def test_userblock_h5_sniffed(tmp_path):
    p = hf.userblock_h5(tmp_path)
    assert p.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n" and sniff(p) == "hdf5"
    assert read_model(p).layer("bn").weights["gamma"].tolist() == [1.0]


def test_saved_model_folder_without_keras_metadata_refused(tmp_path):
    p = hf.saved_model_dir(tmp_path)
    assert sniff(p) == "savedmodel"
    refused(p, "SavedModel without Keras metadata")


def test_unknown_content_refused(tmp_path):
    refused(hf.unknown_content(tmp_path), "not a Keras model file", "08 01 12 0b", "HDF5")


# --------------------------------------------------------------------------
# the child process
# --------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
        return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_child_dies_with_parent(tmp_path):
    """A bnrewrite killed while its HDF5 child hangs (a file on which HDF5 loops forever)
    does not leave the child behind."""
    data = bytearray((hf.FIXTURES / "training_true.h5").read_bytes())
    data[8752] ^= 16  # the fuzzer's known endless loop in HDF5
    hang = tmp_path / "hang.h5"
    hang.write_bytes(bytes(data))
    code = (f"import sys; sys.path.insert(0, {str(hf.ROOT)!r}); from pathlib import Path; "
            f"from bnrewrite.io import h5; h5._extract_isolated(Path({str(hang)!r}))")
    parent = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, BNREWRITE_READ_TIMEOUT="300"))
    try:
        deadline, kids = time.time() + 15, []
        while not kids and time.time() < deadline:
            time.sleep(0.1)
            kids = _children(parent.pid)
        assert kids, "the reader started no child"
        time.sleep(1.0)  # the child is inside HDF5 now
        assert _alive(kids[0])
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 5
        while _alive(kids[0]) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(kids[0]), "the HDF5 child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# --------------------------------------------------------------------------
# vetted trees for the frameworks' own loaders
# --------------------------------------------------------------------------

def test_memory_h5_holds_only_the_tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = {"groups": {"": {"a": "x"}, "g": {"names": ["p", "q"]}},
            "datasets": {"g/h/d": {"data": np.arange(6, dtype="f4").reshape(2, 3), "attrs": {"dtype": "float32"}}}}
    with memory_h5(tree) as f:
        assert f.attrs["a"] == "x" and list(f["g"].attrs["names"]) == ["p", "q"]
        assert f["g/h/d"][()].tolist() == [[0, 1, 2], [3, 4, 5]] and f["g/h/d"].attrs["dtype"] == "float32"
        assert not f["g/h/d"].external and not f["g/h/d"].is_virtual
    assert list(tmp_path.iterdir()) == []  # nothing written to disk


def test_model_weights_tree_loads_in_tf_keras():
    """tf_keras's own order-based loader reads the vetted tree like the original file."""
    tf_keras = pytest.importorskip("tf_keras")
    from tf_keras.src.saving.legacy import hdf5_format

    src = hf.FIXTURES / "multi_io.h5"
    raw = h5._extract_isolated(src)
    model = tf_keras.models.model_from_config(json.loads(raw["attrs"]["model_config"]))
    with memory_h5(model_weights_tree(raw)) as f:
        hdf5_format.load_weights_from_hdf5_group(f["model_weights"], model)
    ref = tf_keras.models.load_model(src, compile=False)
    assert all(np.array_equal(a, b) for a, b in zip(ref.get_weights(), model.get_weights()))


def test_build_original_matches_keras_load_model():
    """build_original (Keras's deserializer in safe mode + its own state loader over the vetted
    tree) gives the same weights as keras.saving.load_model on the trusted fixture."""
    import keras

    from bnrewrite.io.keras_zip import build_original

    src = hf.FIXTURES / "multi_io.keras"
    members = read_zip_members(src, {"config.json": MiB, "model.weights.h5": 64 * MiB})
    raw = h5._extract_isolated(src, "weights", data=members["model.weights.h5"], member="model.weights.h5")
    model = build_original(json.loads(members["config.json"]), raw["tree"])
    ref = keras.saving.load_model(src, compile=False)
    assert len(ref.weights) == len(model.weights) == 22
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(ref.weights, model.weights))


def test_build_original_safe_mode():
    """A Lambda with bytecode in the config is refused by Keras's safe mode (InputError)."""
    from bnrewrite.io.keras_zip import build_original

    with zipfile.ZipFile(hf.LONE_KERAS) as z:
        config = json.loads(z.read("config.json"))
    config["config"]["layers"].append({
        "module": "keras.layers", "class_name": "Lambda", "registered_name": None, "name": "lam",
        "config": {"name": "lam", "function": {"class_name": "__lambda__", "config": {
            "code": "4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMIAAAAfABkARQAUwApAk7pAgAAAKkAKQHaAXhyAgAAAHICAAAA+gE8ZT4B",
            "defaults": None, "closure": None}}},
        "inbound_nodes": []})
    with pytest.raises(InputError, match="could not rebuild the model"):
        build_original(config, {"groups": {}, "datasets": {}})


def test_build_original_weight_mismatch():
    """Weights Keras cannot load (a missing variable) are one clear line, not Keras's
    multi-line message."""
    from bnrewrite.io.keras_zip import build_original

    with zipfile.ZipFile(hf.LONE_KERAS) as z:
        config = json.loads(z.read("config.json"))
    tree = {"groups": {"": {}, "layers": {}, "layers/batch_normalization": {}, "layers/batch_normalization/vars": {}},
            "datasets": {"layers/batch_normalization/vars/0": {"data": np.ones(1, "f4"), "attrs": {}}}}
    with pytest.raises(InputError, match="could not load the archive's weights") as ei:
        build_original(config, tree)
    assert "\n" not in str(ei.value)


# ---------------------------------------------------------------- config smuggling
def _smuggled(tmp_path, evil: dict, name: str) -> Path:
    """``lone_bn.h5`` with ``evil`` listed before the real layer of the same name (the real one
    keeps its weights and calls)."""
    import h5py

    dst = tmp_path / name
    dst.write_bytes(hf.LONE_H5.read_bytes())
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"].insert(1, evil)
        f.attrs["model_config"] = json.dumps(cfg).encode()
    return dst


def _canary_layers(canary: Path, victim: Path) -> list[tuple[str, dict]]:
    lam = {"name": "bn", "trainable": True, "dtype": "float32", "function_type": "function", "module": "os",
           "function": {"module": "os", "class_name": "function", "config": "system", "registered_name": None},
           "output_shape": None, "output_shape_type": "raw", "output_shape_module": None, "arguments": {}}
    return [
        ("lambda_os_system", {"class_name": "Lambda", "name": "bn", "config": lam,
                              "inbound_nodes": [["_CONSTANT_VALUE", -1, f"touch {canary}", {}]]}),
        ("tfop_write_file", {"class_name": "TFOpLambda", "name": "bn",
                             "config": {"name": "bn", "trainable": True, "dtype": "float32",
                                        "function": "io.write_file"},
                             "inbound_nodes": [["_CONSTANT_VALUE", -1, str(canary), {"contents": "x"}]]}),
        ("tfop_rmtree", {"class_name": "TFOpLambda", "name": "bn",
                         "config": {"name": "bn", "trainable": True, "dtype": "float32", "function": "io.gfile.rmtree"},
                         "inbound_nodes": [["_CONSTANT_VALUE", -1, str(victim), {}]]}),
        ("benign_duplicate", {"class_name": "Activation", "name": "bn",
                              "config": {"name": "bn", "trainable": True, "dtype": "float32", "activation": "relu"},
                              "inbound_nodes": [[["x", 0, 0, {}]]]}),
    ]


@pytest.mark.parametrize("kind", ["lambda_os_system", "tfop_write_file", "tfop_rmtree", "benign_duplicate"])
def test_duplicate_layer_name_cannot_smuggle_a_layer(tmp_path, kind):
    """A layer listed before the real layer of the same name: bnrewrite's traversal sees one layer per
    name, but a framework rebuilding the original builds (and, on constants, runs) every listed one.
    Every listed layer is checked, and a repeated name is refused: exit 2, nothing run (no canary file,
    the victim folder intact), nothing written -- by convert and by inspect."""
    import bnrewrite

    canary, victim = tmp_path / "PWNED", tmp_path / "victim"
    victim.mkdir()
    evil = dict(_canary_layers(canary, victim))[kind]
    src = _smuggled(tmp_path, evil, f"{kind}.h5")
    with pytest.raises(InputError) as err:
        bnrewrite.convert(src, tmp_path / "o.onnx")
    assert err.value.exit_code == 2
    if kind == "benign_duplicate":
        assert "appears twice" in str(err.value)
        with pytest.raises(InputError, match="appears twice"):
            bnrewrite.inspect(src)
    else:  # inspect reports the smuggled layer as unsafe content, without running it
        codes = {f["code"] for f in bnrewrite.inspect(src).findings}
        assert codes & {"UNSAFE_FUNCTION", "UNSAFE_TF_OP"}, codes
    assert not canary.exists() and victim.is_dir() and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("value, dtype, needle", [
    (0, "(16000,16000)f8", "not a plain numeric type"),  # a sub-array dtype: 2 GB per element
    (0, [["a", "f8"]], "not a plain numeric type"),      # a structured dtype
    ([[0] * 1024] * 1025, "float32", "more than"),        # 1,049,600 inline elements
])
def test_constant_call_argument_bounded_before_allocation(tmp_path, value, dtype, needle):
    """A Keras 3 call argument serialized as ``__numpy__`` is built by numpy from the file's value and
    dtype: only plain numeric dtypes and a bounded element count are accepted, checked before anything
    is allocated (a sub-array dtype made an 18 KB file take 9.7 GB). Exit 2, one line, quickly."""
    import resource

    members = hf._members()
    cfg = json.loads(members["config.json"])
    bn = next(lc for lc in cfg["config"]["layers"] if lc["class_name"] == "BatchNormalization")
    bn["inbound_nodes"][0]["kwargs"]["mask"] = {"class_name": "__numpy__", "config": {"value": value, "dtype": dtype}}
    members["config.json"] = json.dumps(cfg).encode()
    src = hf.rezip(tmp_path / "c.keras", members)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(src, needle)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: nothing big allocated


def test_deeply_nested_model_config_is_one_line(tmp_path):
    """A ``model_config`` nested deeper than the JSON parser recurses: exit 2, one line naming the file
    (it was 'unexpected RecursionError' without the file)."""
    import h5py

    dst = tmp_path / "deep.h5"
    dst.write_bytes(hf.LONE_H5.read_bytes())
    with h5py.File(dst, "r+") as f:
        f.attrs["model_config"] = ("[" * 100_000 + "]" * 100_000).encode()
    assert str(dst) in refused(dst, "not valid JSON")


def _with_big_dense(tmp_path, kind: str) -> Path:
    """``lone_bn`` plus ``Dense(units=2**30)`` on its input, with no weights stored: a 4 GiB kernel
    that only the config declares (.h5: tf_keras builds it; .keras: Keras 3)."""
    big = {"name": "big", "trainable": True, "dtype": "float32", "units": 1 << 30, "activation": "linear",
           "use_bias": False}
    if kind == "h5":
        src = _smuggled(tmp_path, {"class_name": "Dense", "name": "big", "config": big,
                                   "inbound_nodes": [[["x", 0, 0, {}]]]}, "big.h5")
        return src
    members = hf._members()
    cfg = json.loads(members["config.json"])
    x = cfg["config"]["layers"][0]
    cfg["config"]["layers"].insert(1, {
        "module": "keras.layers", "class_name": "Dense", "config": big, "registered_name": None, "name": "big",
        "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {
            "shape": [None, 1], "dtype": "float32", "keras_history": [x["name"], 0, 0]}}], "kwargs": {}}]})
    members["config.json"] = json.dumps(cfg).encode()
    return hf.rezip(tmp_path / "big.keras", members)


@pytest.mark.parametrize("kind", ["h5", "keras"])
def test_variables_the_file_does_not_store_are_refused_before_allocation(tmp_path, kind):
    """A layer config declaring a variable far beyond the weights the file stores (Dense(2**28): a 4 GiB
    kernel, no stored weights) is refused when the framework is about to create it -- before it
    allocates -- by convert and inspect: exit 2, one line, memory bounded, nothing written."""
    import resource

    import bnrewrite

    src = _with_big_dense(tmp_path, kind)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=r"variable kernel of shape \(1, 1073741824\).*does not match its weights"):
        bnrewrite.convert(src, tmp_path / "o.onnx")
    if kind == "keras":  # reading a .keras builds it (Keras locates the weights)
        with pytest.raises(InputError, match="does not match its weights"):
            bnrewrite.inspect(src)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2 << 20  # KiB (TF's import included)
    assert not (tmp_path / "o.onnx").exists()


def test_variable_budget_rule():
    """The budget itself: 2 x stored + 64 MiB in all, charged before each variable; nothing outside it."""
    import keras

    from bnrewrite.io.budget import BudgetError, variable_budget

    with variable_budget(10 << 20, "keras"):
        keras.layers.Dense(1 << 20).build((None, 20))  # 80 MiB: within 2 x 10 + 64
        with pytest.raises(BudgetError):
            keras.layers.Dense(1 << 20).build((None, 2))  # 8 MiB more: beyond
    keras.layers.Dense(1 << 20).build((None, 40))  # no budget: no check


@pytest.mark.parametrize("dims, ok", [([36000, 36000], False), ([4, 8], True)])
def test_op_on_constants_bounded(tmp_path, dims, ok):
    """A tf.keras op layer whose inputs are all constants runs while the framework rebuilds the model
    (``tf.fill([36000, 36000], 1.0)``: 5 GB, and the file converted). Its size arguments are bounded
    (2**20 elements) before anything runs; a small constant op still converts (with
    ``allow_no_reference``: tf_keras itself cannot rebuild an op layer on constants only, and tf.keras
    never records one, so only an edited file has it)."""
    import bnrewrite

    src = _smuggled(tmp_path, {"class_name": "TFOpLambda", "name": "tf.fill",
                               "config": {"name": "tf.fill", "trainable": True, "dtype": "float32", "function": "fill"},
                               "inbound_nodes": [["_CONSTANT_VALUE", -1, dims, {"value": 1.0}]]}, "fill.h5")
    if ok:
        with pytest.raises(bnrewrite.VerificationError, match="no independent reference"):
            bnrewrite.convert(src, tmp_path / "o.onnx")
        assert bnrewrite.convert(src, tmp_path / "o.onnx", allow_no_reference=True).verification["ok"]
        return
    with pytest.raises(InputError, match="runs on constants only, with a size argument of 1,296,000,000"):
        bnrewrite.convert(src, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("n, ok", [(2000, False), (8, True)])
def test_op_on_constants_bounded_by_its_broadcast(tmp_path, n, ok):
    """Red-team round 5: ``tf.math.add`` of constant lists shaped (1, N) and (N, 1) -- each argument a
    few elements per row, under the bound -- makes their N x N broadcast while the framework rebuilds
    the model (N = 28000: 4 GB). The broadcast of a call's array arguments is bounded too; small
    constants still convert (``allow_no_reference``, as above)."""
    import bnrewrite

    src = _smuggled(tmp_path, {"class_name": "TFOpLambda", "name": "tf.math.add",
                               "config": {"name": "tf.math.add", "trainable": True, "dtype": "float32",
                                          "function": "math.add"},
                               "inbound_nodes": [["_CONSTANT_VALUE", -1, [[1.0] * n], {"y": [[1.0]] * n}]]},
                    "bcast.h5")
    if ok:
        assert bnrewrite.convert(src, tmp_path / "o.onnx", allow_no_reference=True).verification["ok"]
        return
    with pytest.raises(InputError, match="runs on constants only, with a size argument of 8,000,000 elements"):
        bnrewrite.convert(src, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_broadcast_of_value_shaped_tensors_refused(tmp_path):
    """Red-team round 5: two ``tf.reshape`` calls to a shape computed from the input's values leave
    (n, 1) and (1, n) open in the fixed-size trace; each holds only the input's elements, but their
    product is n x n (6 GB at n = 13000, exit 0). A broadcasting op of two open inputs whose output
    stays open is refused like an op of SIZE_FROM_VALUES (unless --unsafe); so is a transposed
    convolution whose output_shape comes from values. Negative case: the same model with a static
    shape converts."""
    import tensorflow as tf
    import tf_keras as K

    import bnrewrite

    def build(from_values: bool):
        x = K.Input((64,), name="x")
        n = tf.math.add(tf.cast(tf.math.reduce_sum(tf.math.multiply(x, 0.0)), "int32"), 64) if from_values else 64
        u = tf.reshape(x, tf.stack([-1, n, 1]))
        v = tf.reshape(x, tf.stack([-1, 1, n]))
        m = tf.math.reduce_mean(tf.math.multiply(u, v), axis=[1, 2])
        return K.Model(x, K.layers.BatchNormalization(name="bn")(tf.math.add(x, tf.expand_dims(m, -1))))

    build(True).save(tmp_path / "values.h5")
    build(False).save(tmp_path / "static.h5")
    with pytest.raises(InputError, match=r"size depends on the input values \(.*a Mul of shape \(None, None, None\)"):
        bnrewrite.convert(tmp_path / "values.h5", tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()
    assert bnrewrite.convert(tmp_path / "static.h5", tmp_path / "s.onnx").verification["ok"]


def test_tensors_growing_faster_than_the_batch_are_measured_at_batch_2():
    """Red-team round 5: reshapes that fold the batch into other axes, broadcast three ways, make
    (B.N)^3 elements -- 64 MiB traced at batch 1, 4 GiB at the batch verification then chose (9.4 GB,
    then exit 3). The trace at batch 2 counts it per sample: (2N)^3 x 4 bytes / 2, which sets the
    batch; a tensor that grows with the batch is counted as at batch 1."""
    import tensorflow as tf
    import tf_keras as K

    from bnrewrite import verify

    n = 16
    x = K.Input((n,))
    cube = tf.math.multiply(tf.math.multiply(tf.reshape(x, [-1, 1, 1]), tf.reshape(x, [1, -1, 1])),
                            tf.reshape(x, [1, 1, -1]))
    mixing = K.Model(x, tf.math.add(x, tf.math.reduce_mean(cube)))
    specs = verify.input_specs(mixing)
    assert verify.check_traced_bytes(mixing, specs, [[n]]) == (2 * n) ** 3 * 4 // 2
    plain = K.Model(x, K.layers.Concatenate()([x, x, x]))
    assert verify.check_traced_bytes(plain, verify.input_specs(plain), [[n]]) == 3 * n * 4


def test_layers_out_of_order_refused(tmp_path):
    """A functional config listing a chain of 40 layers in reverse: Keras's rebuild would sweep the
    list once per layer (quadratic; 53 s for 1500 layers). Counted by the reader and refused; the same
    chain listed in order converts."""
    import h5py

    import bnrewrite

    def chain(name, reverse):
        dst = tmp_path / name
        dst.write_bytes(hf.LONE_H5.read_bytes())
        with h5py.File(dst, "r+") as f:
            cfg = json.loads(f.attrs["model_config"])
            x, bn = cfg["config"]["layers"]
            acts = [{"class_name": "Activation", "name": f"a{i}",
                     "config": {"name": f"a{i}", "trainable": True, "dtype": "float32", "activation": "linear"},
                     "inbound_nodes": [[[f"a{i - 1}" if i else x["name"], 0, 0, {}]]]} for i in range(40)]
            bn["inbound_nodes"] = [[["a39", 0, 0, {}]]]
            cfg["config"]["layers"] = [x, *(acts[::-1] if reverse else acts), bn]
            f.attrs["model_config"] = json.dumps(cfg).encode()
        return dst

    assert bnrewrite.convert(chain("fwd.h5", False), tmp_path / "fwd.onnx").verification["ok"]
    refused(chain("rev.h5", True), "far out of dependency order", "passes over 41 layers")


# ----------------------------------------------------------------- red-team round 2 (session 11)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _keras_archive(tmp_path, edit, src=None, name="e.keras") -> Path:
    """A copy of a fixture archive with ``edit(config)`` applied to its config.json."""
    with zipfile.ZipFile(src or FIXTURES / "lone_bn.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    edit(cfg)
    members["config.json"] = json.dumps(cfg).encode()
    return hf.rezip(tmp_path / name, members)


@pytest.mark.parametrize("src", ["lone_bn.keras", "tfkeras_archives/tf-2.15.1/training_true.keras"])
@pytest.mark.parametrize("key, value, needle", [
    ("module", "this", "not Keras"),                       # tf_keras imports it ('import this' ran)
    ("module", "tensorflow.python.keras.engine.functional", "not Keras"),  # TF's old Keras: no safe mode
    ("registered_name", "Evil", "registered as 'Evil'"),
])
def test_model_class_from_another_module_refused(tmp_path, capfd, src, key, value, needle):
    """A model entry's ``module``/``registered_name`` tell the framework where to import its class from:
    anything but Keras's own model classes is refused before any framework reads the config (a
    tf.keras 2.15 archive naming module 'this' printed the Zen of Python during convert and inspect)."""
    import bnrewrite

    path = _keras_archive(tmp_path, lambda cfg: cfg.__setitem__(key, value), src=FIXTURES / src)
    refused(path, needle)
    found = [f for f in bnrewrite.inspect(path).findings if f["code"] == "UNSAFE_OBJECT"]
    assert found and needle in found[0]["message"], found
    assert "Beautiful is better than ugly" not in capfd.readouterr().out


def test_nested_compile_config_is_dropped():
    """bnrewrite never compiles: every model's compile_config (nested ones too, where the frameworks
    would deserialize an optimizer the allowlist does not cover) is removed before anything reads it."""
    from bnrewrite.io.config import _drop_compile_configs

    evil = {"class_name": "Evil", "module": "os", "config": {}}
    cfg = {"class_name": "Functional", "compile_config": {"optimizer": evil}, "config": {"layers": [
        {"class_name": "Sequential", "compile_config": {"loss": evil}, "config": {"layers": []}},
        {"class_name": "Dense", "config": {"compile_config": "a layer's own key is left alone"}}]}}
    _drop_compile_configs(cfg)
    layers = cfg["config"]["layers"]
    assert cfg["compile_config"] is None and layers[0]["compile_config"] is None
    assert layers[1]["config"]["compile_config"] == "a layer's own key is left alone"


def test_savedmodel_link_out_of_the_folder_refused(tmp_path):
    """A SavedModel whose variables shard is a symlink to a file outside the folder: TensorFlow would read
    that file (and print checksums over it); refused before anything reads it. The folder itself may be
    reached through a link."""
    import shutil

    sm = tmp_path / "sm"
    shutil.copytree(FIXTURES / "savedmodel_td_bn", sm)
    shard = next((sm / "variables").glob("variables.data-*"))
    outside = tmp_path / "elsewhere.bin"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    refused(sm, "leads out of the SavedModel folder")
    shard.unlink()
    shutil.move(outside, shard)
    (tmp_path / "link").symlink_to(sm)
    assert read_model(tmp_path / "link").summary()["batch_norm_layers"] >= 1


@pytest.mark.parametrize("dtype, needle", [("(16000,16000)f8", "not a plain numeric type"),
                                           ("(20000,20000)f8", "not a plain numeric type")])
def test_array_anywhere_in_a_layer_config_is_bounded(tmp_path, dtype, needle):
    """``__numpy__`` is built by numpy wherever a framework deserializes it (a wrapper's layer, an RNN cell,
    an initializer), not only in call arguments: the same dtype and size rules apply everywhere."""
    def edit(cfg):
        bn = next(lc for lc in cfg["config"]["layers"] if lc["class_name"] == "BatchNormalization")
        bn["config"]["beta_initializer"] = {"class_name": "__numpy__", "config": {"value": [1, 2], "dtype": dtype}}

    refused(_keras_archive(tmp_path, edit), needle, "holds an array")


def _op_model(tmp_path, fw: str, repeats: int) -> Path:
    """x -> tile(x, [repeats, 1]) -> BN, written by ``fw`` (tf_keras: a TFOpLambda; Keras 3: a Tile op node)."""
    import importlib

    K = importlib.import_module(fw)
    i = K.Input((4,))
    if fw == "tf_keras":
        import tensorflow as tf

        t = tf.tile(i, [2, 1])
    else:
        t = K.ops.tile(i, [2, 1])
    m = K.Model(i, K.layers.BatchNormalization()(t))
    src = tmp_path / ("t.h5" if fw == "tf_keras" else "t.keras")
    m.save(src)
    if fw == "tf_keras":
        import h5py

        with h5py.File(src, "r+") as f:
            text = json.dumps(json.loads(f.attrs["model_config"])).replace("[2, 1]", f"[{repeats}, 1]")
            f.attrs["model_config"] = text
    else:
        src = _keras_archive(tmp_path, lambda cfg: None, src=src, name="t2.keras")
        with zipfile.ZipFile(src) as z:
            members = {n: z.read(n) for n in z.namelist()}
        text = json.dumps(json.loads(members["config.json"])).replace("[2, 1]", f"[{repeats}, 1]")
        members["config.json"] = text.encode()
        src = hf.rezip(tmp_path / "t3.keras", members)
    assert f"[{repeats}, 1]" in text
    return src


@pytest.mark.parametrize("fw", ["tf_keras", "keras"])
def test_tile_over_the_batch_is_bounded(tmp_path, fw):
    """``tile(x, [N, 1])`` multiplies the batch, which no static shape shows (a 14 KB file took 5 GB in
    verification with N = 2**26): at most 2**16 repeats."""
    refused(_op_model(tmp_path, fw, 1 << 26), "repeats its input 67,108,864 times")


def test_open_dimensions_are_bounded_at_the_chosen_sizes(tmp_path):
    """Open spatial dimensions count as 1 in the static check; an UpSampling by 600 makes 1.4 GiB per sample
    once verification picks 32 x 32: refused when the sizes are chosen, before anything runs at them."""
    import tf_keras

    import bnrewrite

    i = tf_keras.Input((None, None, 1))
    m = tf_keras.Model(i, tf_keras.layers.BatchNormalization()(tf_keras.layers.UpSampling2D(600)(i)))
    m.save(tmp_path / "up.h5")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="chosen for the open dimensions.*1.4 GiB per sample"):
        bnrewrite.convert(tmp_path / "up.h5", tmp_path / "o.onnx")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1024 * 1024  # KiB
    assert not (tmp_path / "o.onnx").exists()


def test_verification_batch_follows_the_largest_tensor(tmp_path, monkeypatch):
    """Verification's memory grows with batch x the largest tensor (a BN on a 256 MiB-per-sample input
    peaked at 7.7 GB at batch 4, 4.9 GB at batch 2): the batch is cut to keep that tensor of a batch
    within BATCH_TENSOR_BYTES (never below 2, which the batch-independence check needs), and when even
    the floor of its memory exceeds what is available, one clear line instead of the OOM killer."""
    import tf_keras

    import bnrewrite
    from bnrewrite import verify

    assert verify.verification_batch(4, 1 << 20) == 4
    assert verify.verification_batch(4, verify.BATCH_TENSOR_BYTES // 3) == 3
    assert verify.verification_batch(4, 1 << 30) == 2
    i = tf_keras.Input((16, 16, 8))  # largest tensor: 8 KiB per sample
    m = tf_keras.Model(i, tf_keras.layers.BatchNormalization()(tf_keras.layers.Conv2D(8, 3)(i)))
    m.save(tmp_path / "m.h5")
    monkeypatch.setattr(verify, "BATCH_TENSOR_BYTES", 3 * 8192)
    rep = bnrewrite.convert(tmp_path / "m.h5", tmp_path / "o.onnx")
    assert rep.verification["batch"] == 3 and rep.verification["ok"]
    monkeypatch.setattr(verify, "MEMORY_FACTOR", 1 << 40)
    with pytest.raises(InputError, match=r"verifying needs at least .* of memory \(batch 3, largest tensor 8.0 KiB"):
        bnrewrite.convert(tmp_path / "m.h5", tmp_path / "o2.onnx")
    assert not (tmp_path / "o2.onnx").exists()


@pytest.mark.parametrize("fw", ["tf_keras", "keras"])
def test_attention_scores_count_in_verification_memory(tmp_path, monkeypatch, fw):
    """Red-team round 5: Attention over L steps makes L x L scores per sample inside the layer, which
    the layer outputs do not show (a 14 KB file, L = 8192: 5 GB at batch 32, exit 0). Models with such
    layers are traced before verification: the batch follows the scores (here 64 x 64 floats = 16 KiB
    per sample, BATCH_TENSOR_BYTES lowered to 3 of them: batch 3), and a score tensor over the
    per-sample cap is refused naming the op."""
    import importlib

    import bnrewrite
    from bnrewrite import verify

    K = importlib.import_module(fw)
    q = K.Input((64, 4))
    m = K.Model(q, K.layers.BatchNormalization()(K.layers.Attention()([q, q])))
    src = tmp_path / ("m.h5" if fw == "tf_keras" else "m.keras")
    m.save(src)
    monkeypatch.setattr(verify, "BATCH_TENSOR_BYTES", 3 * 64 * 64 * 4)
    rep = bnrewrite.convert(src, tmp_path / "o.onnx")
    assert rep.verification["ok"] and rep.verification["batch"] == 3  # by the outputs (1 KiB): the default batch
    monkeypatch.setenv("BNREWRITE_MAX_TENSOR_BYTES", str(8 * 1024))
    with pytest.raises(InputError, match=r"makes a tensor of 16.0 KiB.*shape \(1, 64, 64\)"):
        bnrewrite.convert(src, tmp_path / "o2.onnx")
    assert not (tmp_path / "o2.onnx").exists()


def test_recursion_limit_is_one_clear_line():
    from bnrewrite.errors import unexpected

    assert "recursion limit" in str(unexpected(RecursionError("maximum recursion depth exceeded")))
    assert str(unexpected(KeyError("x"))) == "unexpected KeyError: 'x'"


def test_long_unrolled_rnn_refused_before_tracing(tmp_path):
    """``LSTM(unroll=True)`` copies the cell once per time step when traced; a 22 KB file declaring 4000
    steps ran past 10 minutes. Refused before the layer is traced (the file is edited from 8 steps)."""
    import h5py
    import tf_keras

    import bnrewrite

    i = tf_keras.Input((8, 3))
    m = tf_keras.Model(i, tf_keras.layers.BatchNormalization()(tf_keras.layers.LSTM(2, unroll=True)(i)))
    src = tmp_path / "u.h5"
    m.save(src)
    with h5py.File(src, "r+") as f:
        f.attrs["model_config"] = f.attrs["model_config"].replace('"batch_input_shape": [null, 8, 3]',
                                                                  '"batch_input_shape": [null, 4000, 3]')
    t0 = time.perf_counter()
    with pytest.raises(bnrewrite.UnsupportedModelError, match="unrolled .unroll=True. over 4,000 time steps"):
        bnrewrite.convert(src, tmp_path / "o.onnx")
    assert time.perf_counter() - t0 < 60 and not (tmp_path / "o.onnx").exists()


def _h5_with_layer_edit(tmp_path, name, edit):
    """A tf_keras ``.h5`` (Input -> Embedding -> BN, and a spare Lambda) whose model_config ``edit`` changes."""
    import h5py
    import tf_keras

    x = tf_keras.Input((4,), name="inp", dtype="int32")
    y = tf_keras.layers.BatchNormalization(name="bn")(tf_keras.layers.Embedding(10, 3, name="emb")(x))
    src = tmp_path / name
    tf_keras.Model(x, y).save(src)
    with h5py.File(src, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg["config"]["layers"])
        f.attrs["model_config"] = json.dumps(cfg)
    return src


def test_registered_name_other_than_the_class_refused(tmp_path):
    """tf_keras looks a name it cannot find in ``module`` up by ``registered_name`` (vars(module)[...]):
    a function ``builtins.l2_normalize`` registered as ``exec`` ran code from a Lambda without --unsafe
    (red team round 3), and a regularizer ``L2`` registered as ``StringLookup`` in an Embedding's
    ``input_dim`` read a host file. Any registered name that is not the class's own is refused, at every
    depth, by convert and reported by inspect; nothing is run."""
    import bnrewrite

    canary, secret = tmp_path / "CANARY", tmp_path / "secret.txt"
    secret.write_text("SECRET_TOKEN\n")
    code = f"open({str(canary)!r}, 'w').write('ran')"

    def lam(layers):
        layers.append({"class_name": "Lambda", "name": "lam", "inbound_nodes": [[["_CONSTANT_VALUE", -1, code, {}]]],
                       "config": {"name": "lam", "trainable": True, "dtype": "float32", "function_type": "function",
                                  "function": {"class_name": "function", "module": "builtins",
                                               "config": "l2_normalize", "registered_name": "exec"},
                                  "module": "builtins", "output_shape": None, "output_shape_type": "raw",
                                  "output_shape_module": None, "arguments": {}}})

    def vocab(layers):
        emb = next(lc for lc in layers if lc["class_name"] == "Embedding")
        emb["config"]["input_dim"] = {"class_name": "L2", "module": "keras.layers", "registered_name": "StringLookup",
                                      "config": {"vocabulary": str(secret), "name": "x"}}

    def layer(layers):
        layers[-1]["registered_name"] = "TFOpLambda"

    for name, edit, needle in (("exec.h5", lam, "registered as 'exec'"), ("vocab.h5", vocab, "'StringLookup'"),
                               ("layer.h5", layer, "layer 'bn' names class 'BatchNormalization' but is registered")):
        src = _h5_with_layer_edit(tmp_path, name, edit)
        with pytest.raises(bnrewrite.UnsupportedModelError, match=needle):
            bnrewrite.convert(src, tmp_path / "o.onnx", allow_no_reference=True)
        found = bnrewrite.inspect(src).findings
        assert any(f["code"] == "UNSAFE_OBJECT" for f in found), found
        assert not canary.exists() and not (tmp_path / "o.onnx").exists()


def test_sizes_from_input_values_refused(tmp_path):
    """``range(cast(max|x| * K))`` or ``tile(x, [f(x), 1])``: a size set by the data's values, which no
    shape shows (a 21 KB file took 5.5 GB and exited 0). With every input dimension fixed, such an op's
    output is still open in the traced graph: refused before the model runs, unless --unsafe. A size
    from a *shape* (``range(shape(x)[1])``, positional indices) is static there and converts."""
    import tensorflow as tf
    import tf_keras

    import bnrewrite

    def model(name, size_from_values):
        x = tf_keras.Input((4,), name="inp")
        y = tf_keras.layers.BatchNormalization(name="bn")(x)
        n = tf.cast(tf.math.reduce_max(tf.math.abs(x)) * 10.0, tf.int32) if size_from_values else tf.shape(x)[1]
        out = tf.math.add(y, tf.math.reduce_sum(tf.cast(tf.range(n), tf.float32)) * 0.0)
        tf_keras.Model(x, out).save(tmp_path / name)
        return tmp_path / name

    src = model("values.h5", True)
    with pytest.raises(InputError, match=r"size depends on the input values .*Range of shape \(None,\)"):
        bnrewrite.convert(src, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()
    rep = bnrewrite.convert(model("shape.h5", False), tmp_path / "s.onnx")
    assert rep.verification["ok"]


def test_float_size_on_constants_bounded(tmp_path):
    """``tf.range(0.0, 1e9)`` on constants runs while the model is rebuilt: floats count as sizes too (the
    bound was on ints only; 4.8 GB), and ``eye(N)`` counts N x N."""
    from bnrewrite.io.config import _largest_size

    assert _largest_size([0.0, 1e9]) == 10 ** 9 and _largest_size([[2.0, 3.0]]) == 6
    assert _largest_size(float("inf")) >= 1 << 62 and _largest_size([True, 5]) == 5

    def op_range(layers):
        layers.append({"class_name": "TFOpLambda", "name": "tf.range", "inbound_nodes": [["_CONSTANT_VALUE", -1, 0.0,
                       {"limit": 1e9}]], "config": {"name": "tf.range", "trainable": True, "dtype": "float32",
                                                    "function": "range"}})

    refused(_h5_with_layer_edit(tmp_path, "range.h5", op_range), "runs on constants only", "1,000,000,000 elements")


def test_outputs_bounded_together(tmp_path, monkeypatch):
    """Each output under the per-tensor cap, all of them together over it (32 outputs of 16 MiB per sample
    reached 8.6 GB): the sum of a model's outputs per sample is bounded like one tensor."""
    import tf_keras

    import bnrewrite

    x = tf_keras.Input((8, 8, 1))
    outs = [tf_keras.layers.BatchNormalization(name=f"bn{i}")(x) for i in range(4)]  # 4 x 256 B per sample
    tf_keras.Model(x, outs).save(tmp_path / "m.h5")
    monkeypatch.setenv("BNREWRITE_MAX_TENSOR_BYTES", "600")
    with pytest.raises(InputError, match="4 outputs declare 1.0 KiB per sample together"):
        bnrewrite.convert(tmp_path / "m.h5", tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("kind", ["complex64", "S3", "bool", "compound", "enum"])
def test_weights_of_odd_types_refused(tmp_path, kind):
    """A BN gamma stored as complex numbers, strings ("1.0"), bools, an enum or a compound type: Keras
    weights are real numbers, and a framework would cast the others silently (or fail with an
    unexplained TypeError); refused in one line naming the dataset."""
    import h5py
    import tf_keras

    x = tf_keras.Input((3,))
    tf_keras.Model(x, tf_keras.layers.BatchNormalization(name="bn")(x)).save(tmp_path / "m.h5")
    dt = {"compound": np.dtype([("a", "<f4"), ("b", "<i4")]), "enum": h5py.enum_dtype({"ONE": 1}, basetype="i1")}
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        g = f["model_weights/bn/bn"]
        del g["gamma:0"]
        g.create_dataset("gamma:0", shape=(3,), dtype=dt.get(kind, kind))
    refused(tmp_path / "m.h5", "dataset 'model_weights/bn/bn/gamma:0' has type", "weights are real numbers")


def test_float128_weights_refused_and_float64_beyond_float32_caught(tmp_path):
    """Red-team round 5: a float128 moving_variance of 1e4000 passed the finite check and became inf in
    the layer's float32 (exit 0). A long-double dataset is refused when read; a float64 value beyond
    float32's range is refused where it is put into the layer, naming the weight."""
    import h5py
    import tf_keras

    x = tf_keras.Input((3,))
    tf_keras.Model(x, tf_keras.layers.BatchNormalization(name="bn")(x)).save(tmp_path / "m.h5")
    shutil.copy(tmp_path / "m.h5", tmp_path / "f64.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        g = f["model_weights/bn/bn"]
        del g["moving_variance:0"]
        g.create_dataset("moving_variance:0", data=np.full(3, 2.0, np.longdouble))
    if np.dtype(np.longdouble).itemsize in (10, 12, 16):  # x86: 80-bit extended precision
        refused(tmp_path / "m.h5", "has type float128", "are 16-, 32- or 64-bit floats")
    with h5py.File(tmp_path / "f64.h5", "r+") as f:
        g = f["model_weights/bn/bn"]
        del g["moving_variance:0"]
        g.create_dataset("moving_variance:0", data=np.array([1.0, 1e300, 1.0]))
    import bnrewrite

    with pytest.raises(InputError, match="weight moving_variance holds values beyond the range of the layer's float32"):
        bnrewrite.convert(tmp_path / "f64.h5", tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_type_spec_naming_another_class_refused(tmp_path):
    """tf_keras resolves a ``__typespec__`` object's ``spec_name`` in any tf_keras module and calls its
    ``from_config``: a StringLookup named there (inside a Constant initializer) read a host file and
    resolved a gs:// path (red-team round 4). Only TensorFlow's tensor specs may be named."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET_TOKEN\n")

    def edit(layers):
        emb = next(lc for lc in layers if lc["class_name"] == "Embedding")
        emb["config"]["embeddings_initializer"] = {
            "class_name": "Constant", "module": "keras.initializers", "registered_name": None,
            "config": {"value": {"class_name": "__typespec__", "spec_name": "StringLookup",
                                 "module": "tf_keras.src.layers", "registered_name": "__typespec__",
                                 "config": {"vocabulary": str(secret), "name": "v"}}}}

    refused(_h5_with_layer_edit(tmp_path, "ts.h5", edit), "type spec naming 'StringLookup'")


@pytest.mark.parametrize("fw", ["tf_keras", "keras"])
def test_declared_input_shape_bounded_before_the_framework_builds(tmp_path, fw):
    """A Normalization with a scalar mean broadcasts it to the declared input width while the framework
    builds the model from the config -- before any model exists to check (a 16 KB file, (None, 2**31):
    9 GB). Declared input shapes (``batch_input_shape``, ``batch_shape``, Keras 3's ``build_config``)
    are bounded like tensors, before anything is built."""
    import importlib

    K = importlib.import_module(fw)
    x = K.Input((8,))
    m = K.Model(x, K.layers.BatchNormalization()(K.layers.Normalization(mean=0.5, variance=2.0)(x)))
    if fw == "tf_keras":
        import h5py

        m.save(tmp_path / "n.h5")
        with h5py.File(tmp_path / "n.h5", "r+") as f:
            f.attrs["model_config"] = f.attrs["model_config"].replace("[null, 8]", "[null, 1073741824]")
        src = tmp_path / "n.h5"
    else:
        m.save(tmp_path / "n.keras")
        src = _keras_archive(tmp_path, lambda cfg: None, src=tmp_path / "n.keras", name="n2.keras")
        with zipfile.ZipFile(src) as z:
            members = {n: z.read(n) for n in z.namelist()}
        members["config.json"] = members["config.json"].replace(b"[null, 8]", b"[null, 1073741824]")
        src = hf.rezip(tmp_path / "n3.keras", members)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(src, "declares an input shape", "4.0 GiB per sample")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1024 * 1024  # KiB


def test_tensorflow_op_layer_refused_with_the_way_out(tmp_path):
    """tf.keras 2.0-2.3 recorded raw TensorFlow ops as ``TensorFlowOpLayer``: a NodeDef that may name any
    op (``ReadFile`` as well as ``Reshape``; a real DL4J fixture holds one). Refused as unsafe content
    with the way out (TensorFlow >= 2.4 records the same call as a TFOpLambda, which bnrewrite reads),
    not as an unknown custom class."""
    evil = {"class_name": "TensorFlowOpLayer", "name": "tf_op_layer_ReadFile",
            "config": {"name": "tf_op_layer_ReadFile", "trainable": True, "dtype": "float32",
                       "node_def": {"name": "ReadFile", "op": "ReadFile", "input": ["ReadFile/filename"], "attr": {}},
                       "constants": {"0": "/etc/passwd"}},
            "inbound_nodes": []}
    msg = refused(_smuggled(tmp_path, evil, "tfop.h5"), "is TensorFlowOpLayer", "TensorFlow >= 2.4")
    assert "custom-objects" not in msg
