"""Hostile model files for ``tests/test_hostile_read.py``, built with h5py and zipfile only.

Each generator copies a small real model from ``fixtures/`` (``lone_bn.h5``: one
``BatchNormalization`` named ``bn``, weights under ``model_weights/bn/bn/gamma:0`` ...;
``lone_bn.keras``: the same in a Keras 3 archive, weights under
``layers/batch_normalization/vars/0..3`` of ``model.weights.h5``) and grafts the
hostile part into the copy. :data:`SECRET` is what another file holds: no reader
output and no message may contain it.
"""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
LONE_H5 = FIXTURES / "lone_bn.h5"
LONE_KERAS = FIXTURES / "lone_bn.keras"
SECRET = b"BNREWRITE-SECRET-c0ffee-7f3a9c11"  # 32 bytes
GAMMA = "model_weights/bn/bn/gamma:0"
BN_WEIGHTS = ("gamma:0", "beta:0", "moving_mean:0", "moving_variance:0")
KERAS_VAR = "layers/batch_normalization/vars/0"
MiB, GiB = 1 << 20, 1 << 30


# --------------------------------------------------------------------------
# what the hostile files point at
# --------------------------------------------------------------------------

def secret_file(d: Path) -> Path:
    """A plain file holding the secret (e.g. what ``/proc/self/environ`` would be)."""
    p = d / "secret.txt"
    if not p.exists():
        p.write_bytes(SECRET * 4)
    return p


def secret_h5(d: Path) -> Path:
    """Another HDF5 file with the secret as dataset ``/data`` (uint8)."""
    p = d / "secret.h5"
    if not p.exists():
        with h5py.File(p, "w") as f:
            f["data"] = np.frombuffer(SECRET, dtype="u1")
    return p


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    os.chmod(dst, 0o644)
    return dst


def graft(dst: Path, edit, src: Path = LONE_H5) -> Path:
    """Copy ``src`` to ``dst`` and apply ``edit(h5py.File)`` to the copy."""
    _copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _replace(path: str, make):
    def edit(f):
        del f[path]
        make(f, path)
    return edit


# --------------------------------------------------------------------------
# links, external storage, virtual datasets (full-model .h5)
# --------------------------------------------------------------------------

def external_storage(d: Path) -> Path:
    """``gamma:0`` keeps its raw data in another file (HDF5 external storage)."""
    secret = secret_file(d)
    return graft(d / "external_storage.h5", _replace(GAMMA, lambda f, p: f.create_dataset(
        p, shape=(len(SECRET),), dtype="u1", external=[(str(secret), 0, len(SECRET))])))


def external_link(d: Path) -> Path:
    """``gamma:0`` is an external link to ``/data`` in another HDF5 file."""
    other = secret_h5(d)
    return graft(d / "external_link.h5", _replace(GAMMA, lambda f, p: f.__setitem__(
        p, h5py.ExternalLink(str(other), "/data"))))


def external_link_group(d: Path) -> Path:
    """The whole ``model_weights`` group is an external link."""
    other = secret_h5(d)
    return graft(d / "external_link_group.h5", _replace("model_weights", lambda f, p: f.__setitem__(
        p, h5py.ExternalLink(str(other), "/"))))


def soft_link(d: Path) -> Path:
    """``gamma:0`` is a soft link to a dataset elsewhere in the file (outside ``model_weights``)."""
    def edit(f):
        f["stash/secret"] = np.frombuffer(SECRET, dtype="u1")
        del f[GAMMA]
        f[GAMMA] = h5py.SoftLink("/stash/secret")
    return graft(d / "soft_link.h5", edit)


def soft_link_group(d: Path) -> Path:
    """The layer group ``model_weights/bn`` is a soft link to another group."""
    def edit(f):
        f.copy(f["model_weights/bn"], "stash_bn")
        del f["model_weights/bn"]
        f["model_weights/bn"] = h5py.SoftLink("/stash_bn")
    return graft(d / "soft_link_group.h5", edit)


def soft_link_dangling(d: Path) -> Path:
    """``gamma:0`` is a soft link to nothing."""
    return graft(d / "soft_link_dangling.h5", _replace(GAMMA, lambda f, p: f.__setitem__(
        p, h5py.SoftLink("/no/such/thing"))))


def virtual_dataset(d: Path) -> Path:
    """``gamma:0`` is a virtual dataset mapping ``/data`` of another file."""
    other = secret_h5(d)

    def make(f, p):
        layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype="u1")
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(len(SECRET),))
        f.create_virtual_dataset(p, layout)
    return graft(d / "virtual_dataset.h5", _replace(GAMMA, make))


def absolute_weight_name(d: Path) -> Path:
    """A ``weight_names`` entry that is an absolute path to data outside the layer group."""
    def edit(f):
        f["stash/secret"] = np.frombuffer(SECRET, dtype="u1")
        f["model_weights/bn"].attrs["weight_names"] = ["/stash/secret", "bn/beta:0", "bn/moving_mean:0",
                                                       "bn/moving_variance:0"]
    return graft(d / "absolute_weight_name.h5", edit)


def unlisted_dataset(d: Path) -> Path:
    """A dataset the model does not name (another group, and an extra member of the BN group)."""
    def edit(f):
        f["stash/secret"] = np.frombuffer(SECRET, dtype="u1")
        f["model_weights/bn/bn/extra:0"] = np.frombuffer(SECRET, dtype="u1")
        f["model_weights/not_a_layer/w:0"] = np.frombuffer(SECRET, dtype="u1")
        f["model_weights/not_a_layer"].attrs["weight_names"] = ["w:0"]
    return graft(d / "unlisted_dataset.h5", edit)


# --------------------------------------------------------------------------
# memory: declared sizes, compression bombs, hard links
# --------------------------------------------------------------------------

def _zero_chunks(ds, chunk_elems: int, itemsize: int):
    """Fill every chunk of ``ds`` with zeros, compressed once (write_direct_chunk: fast)."""
    raw = zlib.compress(bytes(chunk_elems * itemsize), 9)
    for i in range(0, ds.shape[0], chunk_elems):
        ds.id.write_direct_chunk((i,), raw, filter_mask=0)


def declared_1gb(d: Path) -> Path:
    """``gamma:0`` declares 1 GiB (2**28 float32, never written): a ~14 KB file."""
    return graft(d / "declared_1gb.h5", _replace(GAMMA, lambda f, p: f.create_dataset(
        p, shape=(1 << 28,), dtype="f4", chunks=(1 << 20,), compression="gzip")))


def gzip_bomb(d: Path) -> Path:
    """``gamma:0`` holds 1 GiB of gzip-compressed zeros, written: a ~1 MB file."""
    def make(f, p):
        ds = f.create_dataset(p, shape=(1 << 28,), dtype="f4", chunks=(1 << 20,), compression="gzip")
        _zero_chunks(ds, 1 << 20, 4)
    return graft(d / "gzip_bomb.h5", _replace(GAMMA, make))


def inflate_bomb(d: Path) -> Path:
    """``gamma:0`` declares 512 KiB (one chunk) but its stored chunk inflates to 256 MiB:
    HDF5's deflate filter would grow its buffer to hold it all."""
    def make(f, p):
        ds = f.create_dataset(p, shape=(1 << 19,), dtype="u1", chunks=(1 << 19,), compression="gzip")
        ds.id.write_direct_chunk((0,), zlib.compress(bytes(256 * MiB), 9), filter_mask=0)
    return graft(d / "inflate_bomb.h5", _replace(GAMMA, make))


def _zeros_dataset(f, p, nbytes: int):
    n = nbytes // 4
    chunk = min(n, 1 << 20)
    ds = f.create_dataset(p, shape=(n,), dtype="f4", chunks=(chunk,), compression="gzip")
    _zero_chunks(ds, chunk, 4)
    return ds


def hard_links(d: Path, each: int = 40 * MiB, name: str = "hard_links.h5") -> Path:
    """All four BN weights are hard links to one dataset of ``each`` bytes of compressed zeros
    (one is within the limit of this small file, four are not)."""
    def edit(f):
        grp = f["model_weights/bn/bn"]
        for w in BN_WEIGHTS:
            del grp[w]
        _zeros_dataset(grp, "gamma:0", each)
        for w in BN_WEIGHTS[1:]:
            grp[w] = grp["gamma:0"]  # a hard link: the same object under another name
    return graft(d / name, edit)


def repeated_weight_names(d: Path) -> Path:
    """``weight_names`` lists one 1 MiB dataset 200 times."""
    def edit(f):
        grp = f["model_weights/bn/bn"]
        del grp["gamma:0"]
        _zeros_dataset(grp, "gamma:0", MiB)
        f["model_weights/bn"].attrs["weight_names"] = ["bn/gamma:0"] * 200
    return graft(d / "repeated_weight_names.h5", edit)


# --------------------------------------------------------------------------
# .keras archives
# --------------------------------------------------------------------------

def _members(src: Path = LONE_KERAS) -> dict[str, bytes]:
    with zipfile.ZipFile(src) as z:
        return {n: z.read(n) for n in z.namelist()}


def rezip(dst: Path, members: dict[str, bytes], method=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(dst, "w", method) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return dst


def keras_with_weights_edit(d: Path, name: str, edit) -> Path:
    """``lone_bn.keras`` with ``edit(h5py.File)`` applied to its ``model.weights.h5``."""
    members = _members()
    tmp = d / f"{name}.weights.h5"
    tmp.write_bytes(members["model.weights.h5"])
    with h5py.File(tmp, "r+") as f:
        edit(f)
    members["model.weights.h5"] = tmp.read_bytes()
    tmp.unlink()
    return rezip(d / name, members)


def keras_external_storage(d: Path) -> Path:
    secret = secret_file(d)
    return keras_with_weights_edit(d, "external_storage.keras", _replace(KERAS_VAR, lambda f, p: f.create_dataset(
        p, shape=(len(SECRET),), dtype="u1", external=[(str(secret), 0, len(SECRET))])))


def keras_external_link(d: Path) -> Path:
    other = secret_h5(d)
    return keras_with_weights_edit(d, "external_link.keras", _replace(KERAS_VAR, lambda f, p: f.__setitem__(
        p, h5py.ExternalLink(str(other), "/data"))))


def keras_soft_link(d: Path) -> Path:
    def edit(f):
        f["stash"] = np.frombuffer(SECRET, dtype="u1")
        del f[KERAS_VAR]
        f[KERAS_VAR] = h5py.SoftLink("/stash")
    return keras_with_weights_edit(d, "soft_link.keras", edit)


def keras_virtual_dataset(d: Path) -> Path:
    other = secret_h5(d)

    def make(f, p):
        layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype="u1")
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(len(SECRET),))
        f.create_virtual_dataset(p, layout)
    return keras_with_weights_edit(d, "virtual_dataset.keras", _replace(KERAS_VAR, make))


def keras_declared_1gb(d: Path) -> Path:
    return keras_with_weights_edit(d, "declared_1gb.keras", _replace(KERAS_VAR, lambda f, p: f.create_dataset(
        p, shape=(1 << 28,), dtype="f4", chunks=(1 << 20,), compression="gzip")))


def keras_group_loop(d: Path) -> Path:
    """A group hard-linked into itself: an endless tree for a walker that follows hard links."""
    def edit(f):
        f["layers/batch_normalization/vars/loop"] = f["layers/batch_normalization"]
    return keras_with_weights_edit(d, "group_loop.keras", edit)


# hand-made zips: headers that zipfile would never write ---------------------

def _zip_raw(dst: Path, entries: list[dict]) -> Path:
    """Write a zip from entries {name, data (as stored), method, crc, size, flags}."""
    out, central = bytearray(), bytearray()
    for e in entries:
        name = e["name"].encode()
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, e.get("flags", 0), e["method"], 0, 0x21,
                           e["crc"], len(e["data"]), e["size"], len(name), 0) + name
        out += e["data"]
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, e.get("flags", 0), e["method"], 0,
                               0x21, e["crc"], len(e["data"]), e["size"], len(name), 0, 0, 0, 0, 0, offset) + name
    cd_offset = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), cd_offset, 0)
    dst.write_bytes(bytes(out))
    return dst


def _stored(name: str, data: bytes, **kw) -> dict:
    return {"name": name, "data": data, "method": 0, "crc": zlib.crc32(data), "size": len(data), **kw}


def _lone_entries(skip=()) -> list[dict]:
    return [_stored(n, d) for n, d in _members().items() if n not in skip]


_BOMB_CACHE: dict = {}


def deflated_zeros(nbytes: int) -> tuple[bytes, int]:
    """(raw deflate stream of ``nbytes`` zero bytes, crc32), cached: 1 GiB takes ~3 s."""
    if nbytes not in _BOMB_CACHE:
        c, crc, block = zlib.compressobj(9, zlib.DEFLATED, -15), 0, bytes(16 * MiB)
        parts = []
        for _ in range(nbytes // len(block)):
            parts.append(c.compress(block))
            crc = zlib.crc32(block, crc)
        parts.append(c.flush())
        _BOMB_CACHE[nbytes] = (b"".join(parts), crc)
    return _BOMB_CACHE[nbytes]


def zip_bomb_config(d: Path) -> Path:
    """``config.json`` is 1 GiB of zeros deflated to ~1 MB (declared honestly)."""
    data, crc = deflated_zeros(GiB)
    return _zip_raw(d / "zip_bomb_config.keras", [
        {"name": "config.json", "data": data, "method": 8, "crc": crc, "size": GiB},
        *_lone_entries(skip=("config.json",))])


def zip_bomb_lying(d: Path) -> Path:
    """``config.json`` declares 2 KiB but its deflate stream inflates to 1 GiB."""
    data, crc = deflated_zeros(GiB)
    return _zip_raw(d / "zip_bomb_lying.keras", [
        {"name": "config.json", "data": data, "method": 8, "crc": crc, "size": 2048},
        *_lone_entries(skip=("config.json",))])


def zip_bomb_weights(d: Path) -> Path:
    """``model.weights.h5`` declares 1 GiB (zeros, ~1 MB stored)."""
    data, crc = deflated_zeros(GiB)
    return _zip_raw(d / "zip_bomb_weights.keras", [
        *_lone_entries(skip=("model.weights.h5",)),
        {"name": "model.weights.h5", "data": data, "method": 8, "crc": crc, "size": GiB}])


def zip_encrypted(d: Path) -> Path:
    """``config.json`` has the 'encrypted' flag."""
    return _zip_raw(d / "encrypted.keras", [
        _stored(n, data, flags=1 if n == "config.json" else 0) for n, data in _members().items()])


def zip_odd_method(d: Path) -> Path:
    """``config.json`` claims compression method 99 (AES in WinZip's scheme)."""
    return _zip_raw(d / "odd_method.keras", [
        {**_stored(n, data), "method": 99} if n == "config.json" else _stored(n, data)
        for n, data in _members().items()])


def zip_duplicate(d: Path) -> Path:
    """Two ``config.json`` members: which one a tool reads is up to the tool."""
    other = b'{"class_name": "Functional", "config": {"name": "other", "layers": []}}'
    return _zip_raw(d / "duplicate.keras", [_stored("config.json", other), *_lone_entries()])


# --------------------------------------------------------------------------
# not regular files, content under the wrong name
# --------------------------------------------------------------------------

def dev_zero_symlink(d: Path) -> Path:
    p = d / "model.keras"
    p.symlink_to("/dev/zero")
    return p


def regular_symlink(d: Path) -> Path:
    p = d / "link_to_model.h5"
    p.symlink_to(_copy(LONE_H5, d / "real_model.h5"))
    return p


def fifo(d: Path) -> Path:
    p = d / "model.h5"
    os.mkfifo(p)
    return p


def h5_named_keras(d: Path) -> Path:
    return _copy(LONE_H5, d / "hdf5_inside.keras")


def keras_named_h5(d: Path) -> Path:
    return _copy(LONE_KERAS, d / "zip_inside.h5")


def saved_model_dir(d: Path) -> Path:
    p = d / "exported.keras"
    p.mkdir()
    (p / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    (p / "variables").mkdir()
    return p


def unknown_content(d: Path) -> Path:
    p = d / "model.h5"
    p.write_bytes(b"\x08\x01\x12\x0btensorflow" + bytes(100))
    return p


def userblock_h5(d: Path) -> Path:
    """``lone_bn.h5``'s content rewritten with a 512-byte user block (signature at offset 512)."""
    p = d / "userblock.h5"
    with h5py.File(LONE_H5, "r") as src, h5py.File(p, "w", userblock_size=512) as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        src.copy(src["model_weights"], dst, "model_weights")
    return p
