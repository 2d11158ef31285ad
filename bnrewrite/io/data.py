"""Calibration data: batches of model inputs from arrays, files, iterables or tf.data.

Accepted sources (``source`` of :class:`CalibrationData`):

* a numpy array (single-input models), a dict ``{input name: array}``, or a
  list/tuple with one array per model input, in model input order;
* a path: ``.npy`` (single input; read through a memory map one batch window
  at a time, never loaded whole), ``.npz`` (one array per model input, by
  input name; an ``.npz`` with a single array also fits a single-input model;
  members are streamed from the zip, compressed or not), or a folder of
  ``.npy``/``.npz`` shards read in name order, or a folder of images
  (``.png``/``.jpg``/``.jpeg``, recursively; :mod:`bnrewrite.io.images`), decoded,
  resized to the model input and preprocessed (``preprocess=``: ``scale``
  (default, [0, 1]), ``tf``, ``torch``, ``caffe`` as in ``keras.applications``,
  or ``none``); a ``.tfrecord``/``.tfrec`` file of ``tf.train.Example`` records
  or a folder of them (:mod:`bnrewrite.io.tfrecord`; single-input models), of
  which one named feature (``feature=``, required) is read: ``float_list`` /
  ``int64_list`` values reshaped to the input's sample shape, encoded PNG/JPEG
  images read as the files of an image folder (``preprocess`` applies), or
  tensors from ``tf.io.serialize_tensor``. A folder holding more than one kind
  (shards, images, TFRecord files) is refused. ``preprocess`` is refused for
  data other than images, ``feature`` for data other than TFRecord files. A
  :class:`DataPath` carries a path with its ``preprocess`` and ``feature`` and
  receives the image counts (``bad_images``, ...) read from it;
* an iterable of batches or a ``tf.data.Dataset``: each element is an array,
  a dict by input name, a tuple with one array per input, or a Keras-style
  ``(x, y)`` / ``(x, y, sample_weight)`` tuple, whose ``x`` is used. Elements
  with one dimension fewer than the model input are single samples and are
  grouped into batches.

Every batch is checked against the model inputs before use: numeric dtype
(float data for integer inputs is refused; it is cast to the input dtype
otherwise), the shape of a sample (``None`` dimensions of the model input
accept any size), finite values, and that the inputs of a multi-input model
have the same number of samples. Failures raise
:class:`~bnrewrite.errors.InputError` (exit 2) naming the input and the
expected shape. Pickled (object) arrays are never loaded.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError

SHARD_SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape with a leading batch ``None``, dtype name."""

    name: str
    shape: tuple
    dtype: str

    def sample_shape(self) -> str:
        return "(" + ", ".join("None" if d is None else str(d) for d in self.shape[1:]) + (",)" if len(self.shape) == 2 else ")")


class DataPath(os.PathLike):
    """A calibration path with its reading options (``preprocess`` for images, ``feature``: the feature
    of a TFRecord file to read); ``found`` receives what reading it found (for images, from a folder
    or a TFRecord feature: ``images``, ``bad_images``, ``bad_image_names``, ...)."""

    def __init__(self, path, preprocess: str | None = None, feature: str | None = None):
        self.path = os.fspath(path)
        self.preprocess = preprocess
        self.feature = feature
        self.found: dict = {}

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"DataPath({self.path!r}, preprocess={self.preprocess!r}, feature={self.feature!r})"


def with_options(path, preprocess: str | None = None, feature: str | None = None):
    """``path`` as a :class:`DataPath` with the options that apply to what it holds (an image
    folder: ``preprocess``; TFRecord files: ``preprocess`` and ``feature``; arrays: neither), so
    that ``--verify-data`` reads its data as ``--calibration``'s options say. Anything that is not
    a plain path, or no option given: returned as is."""
    if isinstance(path, DataPath) or not isinstance(path, (str, os.PathLike)) or (preprocess is None
                                                                                   and feature is None):
        return path
    from .tfrecord import is_tfrecord

    p = Path(path)
    try:
        shards, records, images = folder_contents(p) if p.is_dir() else ([], [p] if is_tfrecord(p) else [], [])
    except OSError:
        return path  # reading it will say what is wrong
    if records and not images and not shards:
        return DataPath(path, preprocess, feature)
    return DataPath(path, preprocess) if images and not records and not shards else path


def folder_contents(p: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """A calibration folder's ``.npy``/``.npz`` shards and TFRecord files (its own files, in name
    order) and its images (recursively)."""
    from .images import find_images
    from .tfrecord import is_tfrecord

    files = sorted(q for q in p.iterdir() if q.is_file())
    return ([q for q in files if q.suffix.lower() in SHARD_SUFFIXES], [q for q in files if is_tfrecord(q)],
            find_images(p))


def _fmt_shape(shape) -> str:
    return str(tuple(int(d) for d in shape))


class CalibrationData:
    """Validated batches (one array per model input, in model input order)."""

    def __init__(self, source: Any, specs: list[InputSpec], *, batch_size: int = 32,
                 max_samples: int | None = None, preprocess: str | None = None, feature: str | None = None):
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, not {batch_size}")
        if max_samples is not None and max_samples < 1:
            raise InputError(f"max samples must be at least 1, not {max_samples}")
        self.specs = list(specs)
        self.batch_size = int(batch_size)
        self.max_samples = max_samples
        self.source = source
        if isinstance(source, DataPath):
            preprocess = source.preprocess if preprocess is None else preprocess
            feature = source.feature if feature is None else feature
        self.preprocess, self.feature = preprocess, feature
        self.images = None  # images (folder or TFRecord feature): io.images.EncodedImages (.stats: bad images)
        self.tfrecord = None  # a TFRecord feature's reader (io.tfrecord)
        self.expected_samples: int | None = 0  # known up front for arrays and files, else None
        self._chunks, self.description = self._open(source)
        if self.preprocess is not None and self.images is None:
            raise InputError(f"preprocess={self.preprocess!r} (--preprocess) applies to images only (a folder "
                             f"of images or a .tfrecord feature of PNG/JPEG bytes), not to calibration data "
                             f"{self.description}")
        if self.feature is not None and self.tfrecord is None:
            raise InputError(f"feature={self.feature!r} (--tfrecord-feature) applies to .tfrecord/.tfrec files "
                             f"only, not to calibration data {self.description}")
        self.samples = 0  # counted as batches are read

    # ------------------------------------------------------------ opening
    def _open(self, source):
        """(callable returning an iterator of raw chunks, description)."""
        names = [s.name for s in self.specs]
        if isinstance(source, (str, os.PathLike)):
            return self._open_path(Path(source))
        if isinstance(source, np.ndarray):
            arrays = self._by_input({names[0]: source} if len(names) == 1 else source, "array")
            self._expect(len(source) if source.ndim else None)
            return (lambda: iter([arrays])), f"array {_fmt_shape(source.shape)}"
        if isinstance(source, dict):
            arrays = self._by_input(source, "dict")
            self._expect(min((len(a) for a in arrays.values() if a.ndim), default=None))
            return (lambda: iter([arrays])), f"dict of {len(arrays)} arrays"
        if (isinstance(source, (list, tuple)) and len(names) > 1 and len(source) == len(names)
                and all(isinstance(a, np.ndarray) for a in source)):
            arrays = self._by_input(dict(zip(names, source)), "list")
            self._expect(min((len(a) for a in arrays.values() if a.ndim), default=None))
            return (lambda: iter([arrays])), f"{len(arrays)} arrays"
        self.expected_samples = None
        if hasattr(source, "as_numpy_iterator"):  # tf.data.Dataset
            return (lambda: (self._element(e) for e in source.as_numpy_iterator())), "tf.data.Dataset"
        if hasattr(source, "__iter__"):  # read once: a single-pass generator is enough
            return (lambda: (self._element(e) for e in source)), type(source).__name__
        raise InputError(
            f"calibration data of type {type(source).__name__} is not supported "
            "(use an array, a dict of arrays, an iterable of batches, a tf.data.Dataset, or a .npy/.npz file or folder)"
        )

    def _open_path(self, p: Path):
        check_data_path(p)
        from .tfrecord import is_tfrecord

        if p.is_dir():
            shards, records, images = folder_contents(p)
            kinds = [(what, found[0].relative_to(p).as_posix()) for what, found in
                     ((".npy/.npz shards", shards), (".tfrecord files", records), ("images", images)) if found]
            if len(kinds) > 1:
                raise InputError(f"{p}: folder mixes " + " and ".join(f"{w} ({first}, ...)" for w, first in kinds)
                                 + "; use one kind")
            if images:
                return self._open_images(p, images)
            if records:
                return self._open_tfrecord(p, records)
            if not shards:
                raise InputError(f"{p}: folder has no .npy or .npz calibration shards, no .tfrecord files "
                                 "and no .png/.jpg images")
            opened = [self._open_file(q) for q in shards]  # validates every shard's header first
            return (lambda: (c for chunks in opened for c in chunks())), f"{p} ({len(shards)} shards)"
        if is_tfrecord(p):
            return self._open_tfrecord(p, [p])
        return self._open_file(p), str(p)

    def _one_input(self, p: Path, what: str) -> InputSpec:
        if len(self.specs) != 1:
            raise InputError(f"{p}: {what} feeds one input, but the model has {len(self.specs)} inputs "
                             f"({', '.join(s.name for s in self.specs)})")
        return self.specs[0]

    def _reporting(self, reader, spec: InputSpec):
        """Chunks of an image reader; its counts go to the DataPath's ``found`` when reading ends."""
        sink = self.source.found if isinstance(self.source, DataPath) else None

        def chunks():
            try:
                for b in reader.batches():
                    yield {spec.name: b}
            finally:
                if sink is not None:
                    sink.clear()
                    sink.update(reader.report())
        return chunks

    def _open_images(self, p: Path, files: list):
        from .images import ImageFolder

        spec = self._one_input(p, "a folder of images")
        folder = ImageFolder(p, files, spec, self.batch_size, self.preprocess)
        self._expect(len(files))
        self.images = folder
        return self._reporting(folder, spec), f"{p} ({len(files)} image files, preprocess {folder.mode})"

    def _open_tfrecord(self, p: Path, files: list):
        from .tfrecord import TFRecordImages, open_feature

        spec = self._one_input(p, "a .tfrecord feature")
        reader = open_feature(p, files, spec, self.feature, self.batch_size, self.preprocess)
        self.tfrecord = reader
        n = reader.records.count()  # known once every file is scanned: a single file, at open
        self._expect(n)
        what = f"{len(files)} .tfrecord files, " if n is None else f"{n:,} record{'s' if n != 1 else ''}, "
        description = f"{p} ({what}{reader.describe()})"
        if isinstance(reader, TFRecordImages):
            self.images = reader
            return self._reporting(reader, spec), description
        self._check_static(spec, (0, *reader.shape), reader.dtype, f"{p} feature {self.feature!r}")
        return (lambda: ({spec.name: b} for b in reader.batches())), description

    def _open_file(self, p: Path):
        suffix = p.suffix.lower()
        if suffix == ".npy":
            if len(self.specs) != 1:
                raise InputError(
                    f"{p}: a .npy file holds one array, but the model has {len(self.specs)} inputs "
                    f"({', '.join(s.name for s in self.specs)}); use an .npz with one array per input"
                )
            stream = _NpyWindows(p)
            self._check_static(self.specs[0], stream.shape, stream.dtype, str(p))
            self._expect(stream.shape[0])
            return lambda: ({self.specs[0].name: w} for w in stream.windows(self.batch_size))
        if suffix == ".npz":
            members = _npz_members(p)
            chosen = self._match_members(members, p)
            rows = []
            for spec in self.specs:
                shape, dtype = _npz_header(p, chosen[spec.name])
                self._check_static(spec, shape, dtype, f"{p}:{chosen[spec.name][:-4]}")
                rows.append(shape[0])
            self._expect(min(rows))
            return lambda: _npz_stream(p, chosen, self.batch_size)
        raise InputError(f"{p}: calibration data must be .npy, .npz, .tfrecord/.tfrec, a folder of them or "
                         f"of .png/.jpg images, not {p.suffix!r}")

    def _match_members(self, members: list[str], p: Path) -> dict[str, str]:
        arrays = {m[:-4] for m in members if m.endswith(".npy")}
        names = [s.name for s in self.specs]
        if set(names) <= arrays:
            return {n: n + ".npy" for n in names}
        if len(names) == 1 and len(arrays) == 1:
            return {names[0]: next(iter(arrays)) + ".npy"}
        missing = [n for n in names if n not in arrays]
        raise InputError(
            f"{p}: no array for model input {missing[0]!r} (the file has {', '.join(sorted(arrays)) or 'none'}); "
            "name each array after its model input"
        )

    def _by_input(self, mapping: dict, what: str, samples_ok: bool = False) -> dict[str, np.ndarray]:
        names = [s.name for s in self.specs]
        missing = [n for n in names if n not in mapping]
        if missing:
            raise InputError(
                f"calibration {what} has no data for model input {missing[0]!r} "
                f"(model inputs: {', '.join(names)}; given: {', '.join(map(str, mapping)) or 'none'})"
            )
        extra = [k for k in mapping if k not in names]
        if extra:
            raise InputError(f"calibration {what} has data for {extra[0]!r}, which is not a model input "
                             f"(model inputs: {', '.join(names)})")
        out = {}
        for spec in self.specs:
            a = mapping[spec.name]
            if not isinstance(a, np.ndarray):
                a = np.asarray(a)
            self._check_static(spec, a.shape, a.dtype, f"input {spec.name!r}", samples_ok)
            out[spec.name] = a
        return out

    def _element(self, e) -> dict[str, np.ndarray]:
        """One element of an iterable as ``{input name: array}``."""
        names = [s.name for s in self.specs]
        if isinstance(e, dict):
            return self._by_input(e, "batch", True)
        if isinstance(e, (list, tuple)):
            if len(names) > 1 and len(e) == len(names) and not isinstance(e[0], (dict, list, tuple)):
                return self._by_input(dict(zip(names, e)), "batch", True)
            if len(e) in (1, 2, 3):  # (x,), (x, y) or (x, y, sample_weight)
                return self._element(e[0])
            raise InputError(f"calibration batch is a {type(e).__name__} of {len(e)} items; "
                             f"the model has {len(names)} input(s)")
        if len(names) != 1:
            raise InputError(f"calibration batch is one array, but the model has {len(names)} inputs "
                             f"({', '.join(names)}); yield a dict by input name")
        return self._by_input({names[0]: np.asarray(e)}, "batch", True)

    # ------------------------------------------------------------ checks
    @staticmethod
    def _check_static(spec: InputSpec, shape, dtype, where: str, samples_ok: bool = False) -> None:
        dtype = np.dtype(dtype)
        if dtype.kind not in "fiub" or dtype.kind == "b":
            raise InputError(f"calibration data for {where} has dtype {dtype}; the model input {spec.name!r} "
                             f"is {spec.dtype} (numeric data needed)")
        if dtype.kind == "f" and np.dtype(spec.dtype).kind in "iu":
            raise InputError(f"calibration data for {where} is {dtype}, but model input {spec.name!r} is "
                             f"{spec.dtype}")
        rank = len(spec.shape)
        ranks = (rank, rank - 1) if samples_ok else (rank,)
        if len(shape) not in ranks or not _fits(shape[len(shape) - rank + 1:], spec.shape[1:]):
            raise InputError(
                f"calibration data for {where} has shape {_fmt_shape(shape)}; model input {spec.name!r} "
                f"expects samples of shape {spec.sample_shape()} (None = any)"
            )

    # ------------------------------------------------------------ batches
    def batches(self) -> Iterator[list[np.ndarray]]:
        """Validated batches of at most ``batch_size`` samples, one array per input."""
        self.samples = 0
        pending: list[dict] = []  # single samples waiting to form a batch
        for chunk in self._chunks():
            rank = len(self.specs[0].shape)
            if chunk[self.specs[0].name].ndim == rank - 1:
                pending.append(chunk)
                if len(pending) == self.batch_size:
                    yield from self._emit({n: np.stack([c[n] for c in pending]) for n in chunk})
                    pending = []
                if self._full():
                    break
                continue
            yield from self._emit(chunk)
            if self._full():
                break
        if pending and not self._full():
            yield from self._emit({n: np.stack([c[n] for c in pending]) for n in pending[0]})
        if self.samples == 0:
            raise InputError(f"calibration data {self.description} is empty (no samples)")

    def _expect(self, n: int | None) -> None:
        self.expected_samples = None if n is None or self.expected_samples is None else self.expected_samples + n

    def expected_batches(self) -> int | None:
        """The number of batches :meth:`batches` will give, when known before reading (arrays,
        ``.npy``/``.npz`` files, image folders: bad images may make it smaller); else None."""
        n = self.expected_samples
        if n is None:
            return None
        if self.max_samples is not None:
            n = min(n, self.max_samples)
        return -(-n // self.batch_size)

    def _full(self) -> bool:
        return self.max_samples is not None and self.samples >= self.max_samples

    def _emit(self, chunk: dict[str, np.ndarray]) -> Iterator[list[np.ndarray]]:
        lengths = {n: len(a) for n, a in chunk.items()}
        n = min(lengths.values()) if lengths else 0
        if len(set(lengths.values())) > 1:
            raise InputError("calibration inputs have different numbers of samples: "
                             + ", ".join(f"{k}: {v}" for k, v in lengths.items()))
        for start in range(0, n, self.batch_size):
            if self._full():
                return
            stop = min(n, start + self.batch_size)
            if self.max_samples is not None:
                stop = min(stop, start + self.max_samples - self.samples)
            batch = []
            for spec in self.specs:
                a = np.asarray(chunk[spec.name][start:stop])
                self._check_static(spec, a.shape, a.dtype, f"input {spec.name!r}")
                if a.ndim != len(spec.shape):
                    raise InputError(f"calibration data for input {spec.name!r} mixes single samples and batches")
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise InputError(
                        f"calibration data for input {spec.name!r} has NaN or inf values "
                        f"(in samples {self.samples}..{self.samples + stop - start - 1})"
                    )
                batch.append(np.ascontiguousarray(a, dtype=spec.dtype))
            self.samples += stop - start
            yield batch


def check_data_path(p) -> None:
    """A calibration data path must be a regular file or a folder (whose shards must be
    regular files: anything else in it is skipped). A FIFO or a device would block or
    never end, so it is refused -- before TensorFlow is imported, by the CLI."""
    import stat

    from .safe_files import kind, stat_path

    p = Path(p)
    st = stat_path(p, "calibration data")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InputError(f"{p}: calibration data is {kind(st.st_mode)}; give a .npy/.npz file or a folder of them")


def _fits(shape, expect) -> bool:
    return len(shape) == len(expect) and all(e is None or int(s) == int(e) for s, e in zip(shape, expect))


def _read_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError("object arrays need pickle, which bnrewrite never loads")
    return shape, fortran, dtype


class _NpyWindows:
    """A ``.npy`` file read one batch window at a time through its own memory map.

    Each window is a fresh ``np.memmap`` over just those rows, copied and
    unmapped, so resident memory stays at one batch however large the file.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self.shape, self.fortran, self.dtype = _read_header(f)
                self.offset = f.tell()
        except (ValueError, OSError, SyntaxError) as e:
            raise InputError(f"{path}: not a readable .npy file ({e})") from None
        need = self.offset + int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        size = path.stat().st_size
        if size < need:
            raise InputError(f"{path}: truncated .npy file ({size} bytes, header says {need})")
        if len(self.shape) == 0:
            raise InputError(f"{path}: holds a scalar, not samples")

    def windows(self, rows: int) -> Iterator[np.ndarray]:
        n = self.shape[0]
        if self.fortran:  # rows are not contiguous: one lazy map, sliced
            mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
            for i in range(0, n, rows):
                yield np.array(mm[i:i + rows])
            return
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        for i in range(0, n, rows):
            k = min(rows, n - i)
            if row == 0:
                yield np.zeros((k, *self.shape[1:]), self.dtype)
                continue
            mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset + i * row,
                           shape=(k, *self.shape[1:]))
            out = np.array(mm)
            del mm
            yield out


def _npz_members(p: Path) -> list[str]:
    try:
        with zipfile.ZipFile(p) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{p}: not a readable .npz file ({e})") from None


def _npz_header(p: Path, member: str) -> tuple[tuple, np.dtype]:
    try:
        with zipfile.ZipFile(p) as z, z.open(member) as f:
            shape, fortran, dtype = _read_header(f)
    except (ValueError, OSError, SyntaxError, zipfile.BadZipFile) as e:
        raise InputError(f"{p}: array {member[:-4]!r} is not readable ({e})") from None
    if fortran:
        raise InputError(f"{p}: array {member[:-4]!r} is in Fortran order; save it with np.ascontiguousarray")
    if len(shape) == 0:
        raise InputError(f"{p}: array {member[:-4]!r} is a scalar, not samples")
    return shape, dtype


def _npz_stream(p: Path, members: dict[str, str], rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Read the chosen members of an ``.npz`` side by side, ``rows`` samples at a time."""
    with zipfile.ZipFile(p) as z:
        files, meta = {}, {}
        try:
            for name, member in members.items():
                f = z.open(member)
                files[name] = f
                shape, _, dtype = _read_header(f)
                meta[name] = (shape, dtype, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
            n = min(m[0][0] for m in meta.values())
            if len({m[0][0] for m in meta.values()}) > 1:
                raise InputError(f"{p}: arrays have different numbers of samples: "
                                 + ", ".join(f"{k}: {m[0][0]}" for k, m in meta.items()))
            for i in range(0, n, rows):
                k = min(rows, n - i)
                out = {}
                for name, f in files.items():
                    shape, dtype, row = meta[name]
                    buf = f.read(k * row)
                    if len(buf) != k * row:
                        raise InputError(f"{p}: array {name!r} is truncated")
                    out[name] = np.frombuffer(buf, dtype=dtype).reshape(k, *shape[1:])
                yield out
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputError(f"{p}: cannot read ({e})") from None
        finally:
            for f in files.values():
                f.close()
