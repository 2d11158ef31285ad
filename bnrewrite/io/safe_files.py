"""Hardened access to model files: the one place every reader opens its input through.

A model file is *data*. Whatever it holds, reading it must not reach other files
(HDF5 external storage, external/soft links, virtual datasets), must not take
more memory than the file can justify (declared shapes, decompression bombs),
and must not block (FIFOs, devices). This module has the pieces the readers
share:

* :func:`check_regular` / :func:`open_regular` -- the input is a regular file
  (symlinks are followed; a FIFO, device, socket or directory is refused; the
  file is opened with ``O_NONBLOCK`` and checked again with ``fstat``, so a
  file swapped for a FIFO after the check cannot block either);
* :func:`sniff` -- the format by content, never by suffix;
* :func:`read_zip_members` -- named zip members, each capped while it is
  decompressed; encrypted or oddly compressed members are refused; nothing is
  extracted to disk;
* :func:`weights_limit` / :func:`config_limit` -- how much data a file of a
  given size may declare (env ``BNREWRITE_MAX_WEIGHT_BYTES``,
  ``BNREWRITE_MAX_CONFIG_BYTES``);
* :func:`memory_h5` -- an in-memory HDF5 file rebuilt from a vetted tree, for
  framework loaders (Keras 3's ``H5IOStore``, tf_keras's
  ``load_weights_from_hdf5_group``) that expect an ``h5py`` object: it can hold
  no links and no external storage, because only arrays and attributes are
  copied into it;
* :func:`model_weights_tree` -- that tree for the ``model_weights`` group of a
  full-model ``.h5``, from the child reader's result (:mod:`.h5_extract`).

HDF5 itself is parsed only in a child process (:func:`bnrewrite.io.h5._extract_isolated`).
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path

from ..errors import InputError, first_line

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a member first / an empty archive

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
#: weights a file may declare: WEIGHTS_BASE + WEIGHTS_PER_BYTE x file size, at most WEIGHTS_HARD_CAP
WEIGHTS_BASE = 64 * MiB
WEIGHTS_PER_BYTE = 32
WEIGHTS_HARD_CAP = 4 * GiB
#: ``config.json`` of a ``.keras`` (and the ``model_config`` attribute of an ``.h5``)
CONFIG_CAP = 16 * MiB
#: ``metadata.json`` of a ``.keras``
METADATA_CAP = 1 * MiB
WEIGHTS_ENV = "BNREWRITE_MAX_WEIGHT_BYTES"
CONFIG_ENV = "BNREWRITE_MAX_CONFIG_BYTES"

# zip compression methods zipfile decompresses itself (stored, deflate, bzip2, lzma)
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
                zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
_READ_CHUNK = 1 * MiB


# --------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------

def fmt_bytes(n: int) -> str:
    """``1073741824`` -> ``"1.0 GiB"``."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def parse_bytes(text: str, what: str) -> int:
    """``"2G"``, ``"512MiB"``, ``"1000000"`` -> bytes (K/M/G/T are powers of 1024)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", text.strip().lower())
    if not m:
        raise InputError(f"{what}={text!r} is not a byte count (e.g. 2G, 512M, 1000000)")
    value = int(float(m.group(1)) * (1 << (10 * ("_kmgt".index(m.group(2) or "_")))))
    if value <= 0:
        raise InputError(f"{what}={text!r} must be positive")
    return value


def weights_limit(file_size: int) -> int:
    """Total bytes the weights read from a file of ``file_size`` bytes may declare.

    ``64 MiB + 32 x file_size``, at most 4 GiB; ``BNREWRITE_MAX_WEIGHT_BYTES`` (bytes, or
    with a K/M/G suffix) replaces the rule. Keras stores weights uncompressed, so a real
    file declares about its own size; 32x leaves room for compressed files and the
    64 MiB base for tiny files with large zero-filled weights.
    """
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    if env:
        return parse_bytes(env, WEIGHTS_ENV)
    return min(WEIGHTS_HARD_CAP, WEIGHTS_BASE + WEIGHTS_PER_BYTE * max(0, int(file_size)))


def config_limit() -> int:
    """Largest model config read (``config.json``, the ``model_config`` attribute):
    16 MiB, or ``BNREWRITE_MAX_CONFIG_BYTES``."""
    env = os.environ.get(CONFIG_ENV, "").strip()
    return parse_bytes(env, CONFIG_ENV) if env else CONFIG_CAP


# --------------------------------------------------------------------------
# regular files only
# --------------------------------------------------------------------------

def stat_path(path, what: str = "") -> os.stat_result:
    """``os.stat`` (symlinks followed), with one-line errors; never opens the file."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{path}: {what} not found" if what else f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what or 'it'} ({e.strerror or e})") from None


def kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse_kind(path, st: os.stat_result):
    what = kind(st.st_mode)
    if what == "a directory":
        raise InputError(f"{path}: is a directory, not a model file nor a SavedModel folder (no saved_model.pb)")
    raise InputError(f"{path}: is {what}, not a regular file; refusing to read it")


def check_regular(path) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed) if it is a regular file; else InputError.

    A missing file (or a dangling symlink) is ``no such file``; a directory, FIFO,
    character or block device (``/dev/zero``) or socket is refused by kind. Never
    opens the file, so it cannot block.
    """
    st = stat_path(path)
    if not stat.S_ISREG(st.st_mode):
        _refuse_kind(path, st)
    return st


def open_regular(path):
    """Open ``path`` for reading (binary) only if it is a regular file.

    Opened with ``O_NONBLOCK`` (opening a FIFO does not wait for a writer) and checked
    with ``fstat`` on the open descriptor, so what is read is what was checked.
    """
    check_regular(path)  # a socket cannot even be opened: say what it is
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        _refuse_kind(path, os.stat(path))
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _refuse_kind(path, st)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# --------------------------------------------------------------------------
# format by content
# --------------------------------------------------------------------------

def _hdf5_offsets(size: int):
    """Where HDF5 looks for its signature: 0, then 512, 1024, 2048, ... (a user block)."""
    yield 0
    off = 512
    while off + len(HDF5_SIGNATURE) <= size:
        yield off
        off *= 2


def sniff(path) -> str | None:
    """The model format by content: ``"hdf5"``, ``"zip"``, ``"savedmodel"`` (a directory
    holding ``saved_model.pb``) or ``None``.

    HDF5: the signature ``\\x89HDF\\r\\n\\x1a\\n`` at offset 0 or at a user-block offset
    (512, 1024, 2048, ...). Zip: ``PK\\x03\\x04`` (or an empty archive) at offset 0.
    Raises InputError for a missing path or one that is neither a directory nor a
    regular file.
    """
    p = Path(path)
    st = stat_path(p)
    if stat.S_ISDIR(st.st_mode):
        pb = p / "saved_model.pb"
        return "savedmodel" if pb.is_file() else None
    with open_regular(p) as f:
        head = f.read(8)
        if head == HDF5_SIGNATURE:
            return "hdf5"
        if head[:4] in ZIP_SIGNATURES:
            return "zip"
        size = os.fstat(f.fileno()).st_size
        for off in _hdf5_offsets(size):
            if off:
                f.seek(off)
                if f.read(8) == HDF5_SIGNATURE:
                    return "hdf5"
    return None


def describe_content(path) -> str:
    """A short description of what an unrecognized file starts with, for error messages."""
    with open_regular(path) as f:
        head = f.read(16)
    if not head:
        return "the file is empty"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "it looks like JSON text"
    if head[:2] in (b"\x08\x01", b"\x08\x02", b"\x08\x03") or head[:1] == b"\x12":
        return f"it starts with {head[:8].hex(' ')} (a protocol buffer, e.g. a SavedModel's saved_model.pb?)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"it looks like text ({head.decode('ascii')!r}...)"
    return f"it starts with {head[:8].hex(' ')}"


# --------------------------------------------------------------------------
# zip members
# --------------------------------------------------------------------------

def read_zip_members(path, caps: dict[str, int], required=(), *, what: str = "zip archive") -> dict[str, bytes]:
    """Read the members named in ``caps`` (name -> most bytes allowed) from the zip ``path``.

    Members that are absent are left out of the result, unless named in ``required``
    (then InputError). Refused with InputError, before anything is decompressed: a
    member that is encrypted, uses a compression method other than stored/deflate/
    bzip2/lzma, declares more than its cap, or appears twice (two tools could read two
    different files). While decompressing, the bytes actually produced are counted
    and the read stops with InputError as soon as they exceed the cap or the declared
    size (a zip bomb fails after at most ``cap`` bytes, whatever its headers say); the
    CRC-32 is checked. Nothing is written to disk. ``what`` names the archive in
    messages (``".keras archive"``).
    """
    out: dict[str, bytes] = {}
    with open_regular(path) as fh:
        try:
            with zipfile.ZipFile(fh) as z:
                found: dict[str, zipfile.ZipInfo] = {}
                for info in z.infolist():
                    if info.filename in caps:
                        if info.filename in found:
                            raise InputError(
                                f"{path}: the {what} holds {info.filename} twice; refusing an ambiguous archive")
                        found[info.filename] = info
                for name in required:
                    if name not in found:
                        raise InputError(f"{path}: the {what} has no {name}")
                for name, info in found.items():
                    out[name] = _read_member(path, z, info, caps[name], what)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error,
                NotImplementedError, RuntimeError, ValueError, OverflowError) as e:
            raise InputError(f"{path}: not a readable {what} ({first_line(e)})") from None
    return out


def _read_member(path, z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, what: str) -> bytes:
    name = info.filename
    if info.flag_bits & 0x1:
        raise InputError(f"{path}: {name} in the {what} is encrypted; refusing to read it")
    if info.compress_type not in _ZIP_METHODS:
        raise InputError(
            f"{path}: {name} in the {what} uses zip compression method {info.compress_type}, "
            f"which bnrewrite does not read (expected one of {', '.join(_ZIP_METHODS.values())})")
    if info.file_size > cap:
        raise InputError(
            f"{path}: {name} in the {what} declares {fmt_bytes(info.file_size)} uncompressed, "
            f"more than the {fmt_bytes(cap)} allowed{_env_hint(name)}")
    bound = min(cap, info.file_size)
    chunks, total = [], 0
    with z.open(info) as f:
        while True:
            chunk = f.read1(_READ_CHUNK) if hasattr(f, "read1") else f.read(_READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > bound:
                raise InputError(
                    f"{path}: {name} in the {what} decompresses to more than the "
                    f"{fmt_bytes(bound)} it declares or is allowed; refusing a zip bomb")
            chunks.append(chunk)
    return b"".join(chunks)


def _env_hint(member: str) -> str:
    if member.endswith(".h5"):
        return f" (set {WEIGHTS_ENV} to raise the limit)"
    if member == "config.json":
        return f" (set {CONFIG_ENV} to raise the limit)"
    return ""


# --------------------------------------------------------------------------
# vetted trees -> in-memory HDF5
# --------------------------------------------------------------------------
#
# A tree is {"groups": {path: {attr: value}}, "datasets": {path: {"data": ndarray,
# "attrs": {attr: value}}}} with "/"-separated paths relative to the file root ("" is
# the root group). Parents are created as needed.

_memory_names = itertools.count()


def memory_h5(tree: dict):
    """An ``h5py.File`` held in memory only (``driver="core", backing_store=False``),
    built from ``tree``: its groups with their attributes, then its datasets (numpy
    arrays) with theirs. Nothing else can be in it: no links other than the hard links
    creating it, no external storage, no virtual datasets, no filters. Close it when done.
    """
    import h5py
    import numpy as np

    name = f"bnrewrite-memory-{os.getpid()}-{next(_memory_names)}.h5"
    f = h5py.File(name, "w", driver="core", backing_store=False)
    try:
        groups = tree.get("groups", {})
        for path in sorted(groups, key=lambda p: (p.count("/"), p)):
            g = f.require_group(path) if path else f
            for k, v in groups[path].items():
                g.attrs[k] = _attr_value(v)
        for path, d in tree.get("datasets", {}).items():
            parent = path.rpartition("/")[0]
            if parent:
                f.require_group(parent)
            data = d["data"] if isinstance(d, dict) else d
            ds = f.create_dataset(path, data=np.asarray(data))
            for k, v in (d.get("attrs") or {}).items() if isinstance(d, dict) else ():
                ds.attrs[k] = _attr_value(v)
    except BaseException:
        f.close()
        raise
    return f


def _attr_value(v):
    import numpy as np

    if isinstance(v, (list, tuple)):
        if not v:
            return np.zeros((0,), dtype="float64")  # what tf_keras writes for an empty name list
        if all(isinstance(x, str) for x in v):
            import h5py

            return np.array(v, dtype=h5py.string_dtype())
        if all(isinstance(x, bytes) for x in v):
            return np.array(v)
    return v


def model_weights_tree(raw: dict, path=None) -> dict:
    """The vetted ``model_weights`` group of a full-model ``.h5`` as a :func:`memory_h5` tree,
    from :func:`bnrewrite.io.h5._extract_isolated`'s result (mode ``"model"``).

    ``memory_h5(model_weights_tree(raw))["model_weights"]`` is what tf_keras's
    ``hdf5_format.load_weights_from_hdf5_group`` expects: ``layer_names`` (only the
    layers read), ``keras_version``, ``backend``, and one group per layer with its
    ``weight_names`` and datasets. A weight that could not be read is an InputError.
    """
    where = f"{path}: " if path else ""
    mw_attrs = dict(raw.get("model_weights_attrs") or {})
    groups = raw.get("groups") or {}
    layer_names = mw_attrs.get("layer_names")
    if layer_names is None:
        layer_names = list(groups)
    mw_attrs["layer_names"] = [n for n in layer_names if n in groups]
    tree: dict = {"groups": {"": {}, "model_weights": mw_attrs}, "datasets": {}}
    entries = list(groups.items())
    if raw.get("top_level") is not None:
        entries.append(("top_level_model_weights", raw["top_level"]))
    for top, grp in entries:
        tree["groups"][f"model_weights/{top}"] = {"weight_names": list(grp["weight_names"])}
        for n in grp["weight_names"]:
            value = grp["data"][n]
            if isinstance(value, str):
                raise InputError(f"{where}weight {top}/{n} is unreadable ({value[len('error: '):]})")
            tree["datasets"][f"model_weights/{top}/{n}"] = {"data": value, "attrs": {}}
    return tree


def sha256_file(path) -> str | None:
    """sha256 of a regular file, or None (missing, not a regular file, unreadable, not a path)."""
    import hashlib
    import os
    import stat

    if not isinstance(path, (str, bytes, os.PathLike)):
        return None  # e.g. a live model object given to the API
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None
