"""Calibration images: a folder of PNG/JPEG files read through a ``tf.data`` pipeline.

Used by :class:`~bnrewrite.io.data.CalibrationData` when a calibration folder
holds images (``.png``, ``.jpg``, ``.jpeg``, searched recursively; symlinked
folders are not followed). Each file is

1. checked: only regular files are read (a symlink to a device or FIFO is
   skipped and counted), at most :data:`MAX_IMAGE_BYTES` bytes, opened with
   ``O_NONBLOCK`` and checked again with ``fstat``;
2. recognised by content (PNG or JPEG signature, whatever its suffix), its
   declared size checked (at most :data:`MAX_IMAGE_PIXELS`) and decoded with
   ``tf.io.decode_png`` / ``tf.io.decode_jpeg`` to the model input's channels
   (1 or 3, 8 bits);
3. resized with ``tf.image.resize`` (bilinear, no antialias) to the model
   input's height and width, as float32, in a ``tf.data`` map, batched to the
   calibration batch size and prefetched;
4. preprocessed per batch (:func:`preprocess`), the ``tf``/``torch``/``caffe``
   modes computed exactly as ``keras.applications.imagenet_utils.preprocess_input``
   does on a numpy array (channels last).

A file that cannot be read or decoded is counted as a bad image (the count and
the first names go into the calibration report), never silently dropped; a
folder with no usable image is an :class:`~bnrewrite.errors.InputError`.

Steps 2-4 are :class:`EncodedImages`, also used for a TFRecord feature of
encoded images (:mod:`bnrewrite.io.tfrecord`), so both read images the same way.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PREPROCESS_MODES = ("scale", "tf", "torch", "caffe", "none")
DEFAULT_PREPROCESS = "scale"
MAX_IMAGE_BYTES = 64 * 2**20  # per file, checked before reading
MAX_IMAGE_PIXELS = 2**26  # declared width x height, checked before decoding (~67 MP)
BAD_NAMES_SHOWN = 5

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# keras.applications.imagenet_utils (_preprocess_numpy_input)
_TORCH_MEAN, _TORCH_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_CAFFE_MEAN = [103.939, 116.779, 123.68]


def find_images(folder: Path) -> list[Path]:
    """Files with an image suffix under ``folder``, recursively, in path order (symlinked folders not followed)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for f in files:
            if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES:
                found.append(Path(root) / f)
    return sorted(found, key=lambda q: q.relative_to(folder).as_posix())


def check_preprocess(mode: str | None) -> str:
    mode = DEFAULT_PREPROCESS if mode is None else str(mode).lower()
    if mode not in PREPROCESS_MODES:
        raise InputError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, not {mode!r}")
    return mode


def preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """Pixel values 0..255 (float32, channels last) to the model's input range, in place.

    ``tf``, ``torch`` and ``caffe`` repeat the numpy branch of
    ``keras.applications.imagenet_utils.preprocess_input(x, mode=...)`` operation for operation.
    """
    if mode == "none":
        return x
    if mode == "scale":
        x /= 255.0
        return x
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        mean, std = _TORCH_MEAN, _TORCH_STD
    else:  # caffe: RGB -> BGR, zero-centred by the ImageNet BGR means
        x = x[..., ::-1]
        mean, std = _CAFFE_MEAN, None
    for c in range(3):
        x[..., c] -= mean[c]
    if std is not None:
        for c in range(3):
            x[..., c] /= std[c]
    return x


def image_size(spec, where, mode: str) -> tuple[int, int, int]:
    """(height, width, channels) of a model input fed with images, or an InputError saying why it cannot be."""
    shape = tuple(spec.shape)
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] not in (1, 3):
        raise InputError(
            f"{where}: calibration images need a model input of shape (height, width, 1 or 3) with a fixed "
            f"height and width; input {spec.name!r} expects samples of shape {spec.sample_shape()}"
        )
    if shape[3] == 1 and mode in ("torch", "caffe"):
        raise InputError(f"preprocess {mode!r} needs 3 (RGB) channels; input {spec.name!r} has 1")
    return int(shape[1]), int(shape[2]), int(shape[3])


class EncodedImages:
    """Encoded PNG/JPEG images as batches ``(n, H, W, C)`` float32, preprocessed.

    The one decode -> resize -> batch -> preprocess path, shared by a folder of
    image files (:class:`ImageFolder`) and a TFRecord feature of image bytes
    (:mod:`bnrewrite.io.tfrecord`); a subclass only says where the encoded
    bytes come from (:meth:`_encoded`). ``stats`` is filled while reading:
    ``images`` (decoded), ``bad_images`` and ``bad_image_names`` (the first
    few, with the reason).
    """

    def __init__(self, where, spec, batch_size: int, mode: str | None):
        self.where, self.batch_size = where, batch_size
        self.mode = check_preprocess(mode)
        self.height, self.width, self.channels = image_size(spec, where, self.mode)
        self.stats = self._empty_stats()
        self._error: InputError | None = None

    def _empty_stats(self) -> dict:
        return {"images": 0, "bad_images": 0, "bad_image_names": [], "preprocess": self.mode,
                "size": [self.height, self.width, self.channels]}

    def _encoded(self) -> Iterator[tuple[str, bytes]]:
        """(name for the report, encoded bytes) of each image; unreadable ones are counted here, not yielded."""
        raise NotImplementedError

    def _among(self) -> str:
        """What was searched, for the no-usable-image error ("7 files")."""
        raise NotImplementedError

    def _bad(self, name: str, why: str) -> None:
        self.stats["bad_images"] += 1
        if len(self.stats["bad_image_names"]) < BAD_NAMES_SHOWN:
            self.stats["bad_image_names"].append(f"{name}: {why}")

    def _decode(self, name: str, data: bytes):
        import tensorflow as tf

        if data.startswith(_PNG_MAGIC):
            if len(data) < 24:
                self._bad(name, "truncated PNG")
                return None
            w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
            decode = lambda: tf.io.decode_png(data, channels=self.channels, dtype=tf.uint8)  # noqa: E731
        elif data.startswith(_JPEG_MAGIC):
            try:
                with _capture_stderr() as said:
                    h, w = (int(d) for d in tf.io.extract_jpeg_shape(data)[:2].numpy())
            except tf.errors.OpError as e:
                self._bad(name, f"not a decodable JPEG ({first_line(e)}{_said(said)})")
                return None
            decode = lambda: tf.io.decode_jpeg(data, channels=self.channels)  # noqa: E731
        else:
            self._bad(name, "not a PNG or JPEG file")
            return None
        if w * h > MAX_IMAGE_PIXELS or w == 0 or h == 0:
            self._bad(name, f"declares {w}x{h} pixels (at most {MAX_IMAGE_PIXELS} allowed)")
            return None
        try:
            with _capture_stderr() as said:
                img = decode().numpy()
        except tf.errors.OpError as e:
            self._bad(name, f"cannot be decoded ({first_line(e)}{_said(said)})")
            return None
        self.stats["images"] += 1
        return img

    def _decoded(self) -> Iterator[np.ndarray]:
        try:
            for name, data in self._encoded():
                img = self._decode(name, data)
                if img is not None:
                    yield img
        except InputError as e:  # kept for batches(): raised inside tf.data it would come out as an OpError
            self._error = e

    def dataset(self):
        """The ``tf.data`` pipeline: decoded images -> resized float32 -> batches -> prefetch."""
        import tensorflow as tf

        size = [self.height, self.width]
        ds = tf.data.Dataset.from_generator(
            self._decoded, output_signature=tf.TensorSpec([None, None, self.channels], tf.uint8))
        ds = ds.map(lambda img: tf.image.resize(img, size, method="bilinear"), num_parallel_calls=1,
                    deterministic=True)
        return ds.batch(self.batch_size).prefetch(tf.data.AUTOTUNE)

    def batches(self) -> Iterator[np.ndarray]:
        self.stats = self._empty_stats()
        self._error = None
        for batch in self.dataset().as_numpy_iterator():
            if self._error is not None:  # the reader stopped early: no partial batch after it
                break
            yield preprocess(np.array(batch, np.float32), self.mode)
        if self._error is not None:
            raise self._error
        if self.stats["images"] == 0:
            raise InputError(self.no_images_message())

    def _no_images_reasons(self) -> list[str]:
        s = self.stats
        return [f"{s['bad_images']} bad, e.g. {s['bad_image_names'][0]}"] if s["bad_images"] else []

    def no_images_message(self) -> str:
        reasons = "; ".join(self._no_images_reasons())
        return f"{self.where}: no usable calibration image among {self._among()} ({reasons})"

    def report(self) -> dict:
        return dict(self.stats)


class ImageFolder(EncodedImages):
    """The image files of a folder; besides the counts of :class:`EncodedImages`, ``stats`` has
    ``files`` and ``skipped_not_regular`` / ``skipped_names`` (symlinks to devices or FIFOs)."""

    def __init__(self, folder: Path, files: list[Path], spec, batch_size: int, mode: str | None):
        self.folder, self.files = folder, files
        super().__init__(folder, spec, batch_size, mode)

    def _empty_stats(self) -> dict:
        return {"files": len(self.files), **super()._empty_stats(), "skipped_not_regular": 0, "skipped_names": []}

    def _among(self) -> str:
        return f"{len(self.files)} files"

    def _name(self, f: Path) -> str:
        return f.relative_to(self.folder).as_posix()

    def _skipped(self, f: Path) -> None:
        self.stats["skipped_not_regular"] += 1
        if len(self.stats["skipped_names"]) < BAD_NAMES_SHOWN:
            self.stats["skipped_names"].append(self._name(f))

    def _read(self, f: Path) -> bytes | None:
        try:
            st = os.stat(f)
        except OSError as e:
            self._bad(self._name(f), f"cannot read it ({e.strerror or e})")
            return None
        if not stat.S_ISREG(st.st_mode):
            self._skipped(f)
            return None
        if st.st_size > MAX_IMAGE_BYTES:
            self._bad(self._name(f), f"{st.st_size} bytes, more than the {MAX_IMAGE_BYTES} allowed per image")
            return None
        from .safe_files import open_regular

        try:
            with open_regular(f) as fh:
                data = fh.read(MAX_IMAGE_BYTES + 1)
        except InputError:  # swapped for a FIFO/device after the stat, or unreadable
            self._skipped(f)
            return None
        except OSError as e:
            self._bad(self._name(f), f"cannot read it ({e.strerror or e})")
            return None
        if len(data) > MAX_IMAGE_BYTES:
            self._bad(self._name(f), f"more than the {MAX_IMAGE_BYTES} bytes allowed per image")
            return None
        return data

    def _encoded(self) -> Iterator[tuple[str, bytes]]:
        for f in self.files:
            data = self._read(f)
            if data is not None:
                yield self._name(f), data

    def _no_images_reasons(self) -> list[str]:
        s = self.stats
        reasons = super()._no_images_reasons()
        if s["skipped_not_regular"]:
            reasons.append(f"{s['skipped_not_regular']} not regular files, e.g. {s['skipped_names'][0]}")
        return reasons


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _capture_stderr():
    """libjpeg/libpng inside TensorFlow print their messages straight to file descriptor 2
    ("Input file read error"); while a file is decoded they are captured (into the list this
    yields, after the block) so that a bad image is reported once, in the calibration report."""
    said: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as tmp:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to protect
            yield said
            return
        try:
            os.dup2(tmp.fileno(), 2)
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said.extend(ln for ln in tmp.read(4096).decode("utf-8", "replace").splitlines() if ln.strip())


def _said(said: list[str]) -> str:
    return f"; {said[0].strip()[:120]}" if said else ""
