"""Calibration data from TFRecord files: one named feature of ``tf.train.Example`` records.

Used by :class:`~bnrewrite.io.data.CalibrationData` for a ``.tfrecord``/``.tfrec``
file or a folder of them (read in name order, not recursively), for a
single-input model. The feature name is required (``--tfrecord-feature NAME``);
its kind, taken from the first record, decides how every record is read:

* ``float_list`` / ``int64_list``: the values of one sample, reshaped to the
  model input's sample shape (all its dimensions must be known), as float32 /
  int64 (int64 data is cast to a float input; float data for an integer input
  is refused, as for arrays);
* ``bytes_list`` holding an encoded PNG/JPEG image: decoded, resized and
  preprocessed by :class:`~bnrewrite.io.images.EncodedImages`, exactly as a
  folder of images; a record that does not decode is a bad image named
  ``file.tfrecord#INDEX``, counted and reported, never dropped;
* ``bytes_list`` holding a tensor from ``tf.io.serialize_tensor``: its
  ``TensorProto`` is read and its dtype and shape checked against the model
  input, and its data must be all there (``tensor_content`` of exactly
  elements x item size bytes, as ``serialize_tensor`` writes it) before it is
  taken as an array of its own dtype. ``tf.io.parse_tensor`` is not used: it
  fills a declared shape with zeros when the values are missing, so a few
  bytes could ask for any amount of memory.

Records are read with ``tf.data.TFRecordDataset`` (GZIP when the file starts
with the gzip magic bytes), a few prefetched (not a whole batch of them: each
may be up to 64 MiB), and grouped into batches of ``batch_size`` samples.

Safety: TensorFlow trusts each record's declared length and allocates it (a
header with a valid checksum declaring 1 TiB crashes the process), so before a
file is handed to it, :func:`scan` walks its 12-byte record headers in Python:
each length's checksum (masked CRC-32C) must match, the length must be at most
:data:`MAX_RECORD_BYTES` and, uncompressed, fit in the file. The payload
checksums are left to TensorFlow; a mismatch (or anything else wrong with the
framing) is an :class:`~bnrewrite.errors.InputError` naming the file, never a
traceback. A file is scanned when reading reaches it, so ``--max-samples``
does not scan files it never reads; files are assumed not to change meanwhile.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from .images import _JPEG_MAGIC, _PNG_MAGIC, EncodedImages

TFRECORD_SUFFIXES = (".tfrecord", ".tfrec")
MAX_RECORD_BYTES = 64 * 2**20  # per record, checked in the header before TensorFlow allocates it
_GZIP_MAGIC = b"\x1f\x8b"
_NUMERIC = ("float_list", "int64_list")


def is_tfrecord(p: Path) -> bool:
    return p.suffix.lower() in TFRECORD_SUFFIXES


# ---------------------------------------------------------------- framing
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """The checksum of a TFRecord header: CRC-32C (Castagnoli), rotated and offset ("masked")."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def scan(path: Path) -> tuple[int, str]:
    """Check every record header of a TFRecord file; return (number of records, compression type
    for TensorFlow: ``"GZIP"`` if the file starts with the gzip magic bytes, else ``""``)."""
    from .safe_files import open_regular

    def invalid(why: str) -> InputError:
        return InputError(f"{path}: not a valid TFRecord file ({why})")

    with open_regular(path) as raw:
        size = raw.seek(0, 2)
        raw.seek(0)
        gz = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        n = pos = 0
        try:
            while True:
                header = f.read(12)
                if not header:
                    return n, "GZIP" if gz else ""
                if len(header) < 12:
                    raise invalid(f"truncated: record {n} has a {len(header)}-byte header")
                length, crc = struct.unpack("<QI", header)
                if masked_crc32c(header[:8]) != crc:
                    raise invalid(f"record {n}: the checksum of its length does not match")
                if length > MAX_RECORD_BYTES:
                    raise InputError(f"{path}: record {n} declares {length:,} bytes, more than the "
                                     f"{MAX_RECORD_BYTES:,} allowed per record")
                pos += 12 + length + 4
                if not gz and pos > size:
                    raise invalid(f"truncated: record {n} needs {pos:,} bytes, the file has {size:,}")
                if f.seek(pos) != pos:  # gzip: decompressed up to there, or stopped short at its end
                    raise invalid(f"truncated in record {n}")
                n += 1
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise invalid(f"cannot {'decompress' if gz else 'read'} it: {e}") from None


# ---------------------------------------------------------------- records
class Records:
    """The serialized records of TFRecord files in order, as ``(name, bytes)``; ``name`` is ``file#index``."""

    PREFETCH = 4  # records read ahead

    def __init__(self, where: Path, files: list[Path]):
        self.where, self.files = where, files
        self.scanned: dict[Path, tuple[int, str]] = {}
        self.read = 0  # records read so far

    def name(self, f: Path, i: int) -> str:
        rel = f.name if f == self.where else f.relative_to(self.where).as_posix()
        return f"{rel}#{i}"

    def count(self) -> int | None:
        """The number of records, once every file has been scanned (else None: not known yet)."""
        if len(self.scanned) < len(self.files):
            return None
        return sum(n for n, _ in self.scanned.values())

    def first(self) -> tuple[str, bytes]:
        for f in self.files:
            for name, rec in self._read(f, 1):
                return name, rec
        raise InputError(f"{self.where}: no records (empty TFRecord file{'s' if len(self.files) > 1 else ''})")

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        self.read = 0
        for f in self.files:
            for item in self._read(f):
                self.read += 1
                yield item

    def _read(self, f: Path, take: int | None = None) -> Iterator[tuple[str, bytes]]:
        import tensorflow as tf

        if f not in self.scanned:  # before TensorFlow sees the file: see the module docstring
            self.scanned[f] = scan(f)
        count, compression = self.scanned[f]
        if count == 0:
            return
        ds = tf.data.TFRecordDataset(str(f), compression_type=compression)
        if take is not None:
            ds = ds.take(take)
        it = ds.prefetch(self.PREFETCH).as_numpy_iterator()
        i = 0
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except tf.errors.OpError as e:
                raise InputError(f"{f}: not a valid TFRecord file ({_tf_reason(e)})") from None
            yield self.name(f, i), rec
            i += 1


def _tf_reason(e) -> str:
    """TensorFlow's reason without its op decorations: "corrupted record at 12"."""
    text = getattr(e, "message", None) or str(e)
    m = re.search(r"(corrupted|truncated) record at \d+", text)
    if m:
        return m.group(0)
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*", "", text).strip()
    return (text.splitlines() or [type(e).__name__])[0][:200]


# ---------------------------------------------------------------- features
def _features(record: bytes, name: str) -> dict:
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        return tf.train.Example.FromString(record).features.feature
    except DecodeError:
        raise InputError(f"{name}: record is not a tf.train.Example") from None


def _listing(features, shown: int = 20) -> str:
    names = sorted(features)
    text = ", ".join(f"{k} ({features[k].WhichOneof('kind') or 'empty'})" for k in names[:shown]) or "none"
    return text + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _feature(record: bytes, name: str, feature: str, kind: str):
    features = _features(record, name)
    if feature not in features:
        raise InputError(f"{name}: record has no feature {feature!r} (it has: {_listing(features)})")
    f = features[feature]
    if f.WhichOneof("kind") != kind:
        raise InputError(f"{name}: feature {feature!r} is {f.WhichOneof('kind') or 'empty'}, "
                         f"but the first record's is {kind}")
    return getattr(f, kind).value


def _is_image(data: bytes) -> bool:
    return data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC)


def _tensor_proto(data: bytes):
    """The ``TensorProto`` of a serialized tensor, or None if these bytes are not one."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import tensor_pb2

    try:
        proto = tensor_pb2.TensorProto.FromString(data)
    except DecodeError:
        return None
    return proto if proto.dtype != 0 else None  # 0: DT_INVALID (empty bytes parse too)


def open_feature(where: Path, files: list[Path], spec, feature: str | None, batch_size: int, mode: str | None):
    """The reader for ``feature`` of the records in ``files``: :class:`TFRecordImages` for encoded
    images, else :class:`TFRecordArrays`. Reads the first record to learn the feature's kind."""
    records = Records(where, files)
    name, first = records.first()
    features = _features(first, name)
    if feature is None:
        raise InputError(f"{where}: give the feature name to read (--tfrecord-feature NAME); "
                         f"the first record has: {_listing(features)}")
    if feature not in features:
        raise InputError(f"{where}: no feature {feature!r} in the first record (it has: {_listing(features)})")
    kind = features[feature].WhichOneof("kind")
    if kind in _NUMERIC:
        return TFRecordArrays(records, spec, feature, batch_size, kind)
    if kind != "bytes_list":
        raise InputError(f"{name}: feature {feature!r} is empty")
    values = features[feature].bytes_list.value
    if len(values) == 1 and not _is_image(values[0]) and _tensor_proto(values[0]) is not None:
        return TFRecordArrays(records, spec, feature, batch_size, "tensor", (name, values))
    return TFRecordImages(records, spec, feature, batch_size, mode)  # bytes that are not images: counted as bad ones


class TFRecordArrays:
    """Numeric samples of a feature (``float_list``, ``int64_list`` or serialized tensors) in batches."""

    def __init__(self, records: Records, spec, feature: str, batch_size: int, kind: str,
                 first: tuple | None = None):
        self.records, self.spec, self.feature, self.kind = records, spec, feature, kind
        self.batch_size = batch_size
        self.sample_shape = tuple(spec.shape[1:])
        if kind in _NUMERIC:
            if any(d is None for d in self.sample_shape):
                raise InputError(
                    f"{records.where}: a {kind} feature is reshaped to the model input's sample shape, but input "
                    f"{spec.name!r} has open dimensions (samples of shape {spec.sample_shape()}); every dimension "
                    "but the batch must be known")
            self.count = int(np.prod(self.sample_shape, dtype=np.int64))
            self.dtype = np.dtype(np.float32 if kind == "float_list" else np.int64)
            self.shape = self.sample_shape
        else:  # the first record's tensor (name, its feature's values) sets dtype and shape for all
            first = self._tensor(*first)
            self.dtype, self.shape = first.dtype, first.shape

    def describe(self) -> str:
        return f"feature {self.feature!r}: {self.kind if self.kind in _NUMERIC else 'serialized tensors'}"

    def _tensor(self, name: str, values) -> np.ndarray:
        """The tensor serialized in a record's feature, checked before anything is allocated."""
        import tensorflow as tf

        if len(values) != 1:
            raise InputError(f"{name}: feature {self.feature!r} holds {len(values)} byte strings; "
                             "a serialized tensor is one")
        proto = _tensor_proto(values[0])
        if proto is None:
            raise InputError(f"{name}: feature {self.feature!r} is not a tensor from tf.io.serialize_tensor")
        try:
            dtype = np.dtype(tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype)
        except (TypeError, ValueError):
            raise InputError(f"{name}: feature {self.feature!r} is a tensor of unknown type {proto.dtype}") from None
        if dtype.kind not in "fiu":
            raise InputError(f"{name}: feature {self.feature!r} is a tensor of type "
                             f"{tf.dtypes.as_dtype(proto.dtype).name}; numeric data needed")
        shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
        if proto.tensor_shape.unknown_rank or len(shape) != len(self.sample_shape) or not all(
                s >= 0 and (e is None or s == e) for s, e in zip(shape, self.sample_shape)):
            raise InputError(f"{name}: feature {self.feature!r} is a tensor of shape {shape}; model input "
                             f"{self.spec.name!r} expects samples of shape {self.spec.sample_shape()} (None = any)")
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize  # object: no overflow on hostile shapes
        content = proto.tensor_content
        if len(content) != need:
            raise InputError(f"{name}: feature {self.feature!r} is a tensor of shape {shape} whose data is "
                             f"{len(content):,} bytes, not {need:,} (write it with tf.io.serialize_tensor)")
        return np.frombuffer(content, dtype).reshape(shape)

    def _sample(self, name: str, record: bytes) -> np.ndarray:
        if self.kind in _NUMERIC:
            values = _feature(record, name, self.feature, self.kind)
            if len(values) != self.count:
                raise InputError(
                    f"{name}: feature {self.feature!r} has {len(values)} values; model input {self.spec.name!r} "
                    f"expects samples of shape {self.spec.sample_shape()}, {self.count} values")
            return np.asarray(values, self.dtype).reshape(self.shape)
        a = self._tensor(name, _feature(record, name, self.feature, "bytes_list"))
        if (a.dtype, a.shape) != (self.dtype, self.shape):
            raise InputError(f"{name}: feature {self.feature!r} is a {a.dtype} tensor of shape {a.shape}, "
                             f"but the first record's is {self.dtype} {self.shape}")
        return a

    def batches(self) -> Iterator[np.ndarray]:
        pending = []
        for name, record in self.records:
            pending.append(self._sample(name, record))
            if len(pending) == self.batch_size:
                yield np.stack(pending)
                pending = []
        if pending:
            yield np.stack(pending)


class TFRecordImages(EncodedImages):
    """A feature of encoded PNG/JPEG images; ``stats`` also has ``records`` (read) and ``feature``."""

    def __init__(self, records: Records, spec, feature: str, batch_size: int, mode: str | None):
        self.records, self.feature = records, feature
        super().__init__(records.where, spec, batch_size, mode)

    def describe(self) -> str:
        return f"feature {self.feature!r}: PNG/JPEG images, preprocess {self.mode}"

    def _empty_stats(self) -> dict:
        return {"records": 0, "feature": self.feature, **super()._empty_stats()}

    def _encoded(self) -> Iterator[tuple[str, bytes]]:
        for name, record in self.records:
            self.stats["records"] = self.records.read
            values = _feature(record, name, self.feature, "bytes_list")
            if len(values) != 1:
                self._bad(name, f"holds {len(values)} byte strings, not one image")
                continue
            yield name, values[0]

    def _among(self) -> str:
        return f"{self.stats['records']} records of feature {self.feature!r}"

    def no_images_message(self) -> str:
        return (super().no_images_message()
                + "; a bytes feature must hold PNG/JPEG images or tensors from tf.io.serialize_tensor")
