"""Read the data of a Keras HDF5 file -- and nothing else -- in a child process.

A damaged HDF5 file can make the HDF5 C library loop forever (a flipped byte in
a global-heap address, seen when reading a variable-length string attribute)
or crash; neither can be interrupted from Python. So the readers run this file
as a separate Python process (:func:`bnrewrite.io.h5._extract_isolated`) with a
timeout, a memory cap (``RLIMIT_AS``) and ``PR_SET_PDEATHSIG``; it pickles what
it read to stdout.

A model file is data. This reader

* follows **hard links only**. Soft links are refused wherever they are met,
  even when they point inside the file: Keras and tf.keras never write them,
  and one rule (no link but the file's own tree) is simpler to trust than
  judging where a link leads. External links and user-defined links are
  refused. Paths are walked one component at a time (``h5py``'s ``name in
  group`` and multi-part paths would resolve links on the way);
* refuses datasets with **external storage** (raw data in another file, e.g.
  ``/proc/self/environ``), **virtual datasets** (mapping other files), a layout
  other than compact/contiguous/chunked, a filter that is not built into HDF5
  (no plugin is loaded), a variable-length or reference type, or more chunks
  than the file could index;
* checks the **declared size** (shape x itemsize) of every dataset before
  reading it: the sum over every *name* read (a dataset reached through several
  hard links counts once per name, plus 256 bytes per name, group and
  attribute) must stay within ``LIMIT`` (from the parent:
  :func:`bnrewrite.io.safe_files.weights_limit`), else the file is refused.
  A dataset reached through several names is read once;
* for deflate-compressed chunks, checks that each stored chunk inflates to no
  more than the chunk it stands for (HDF5's own filter would grow its buffer
  without bound) before HDF5 decompresses it;
* reads only what the model needs. Mode ``model`` (a full-model ``.h5`` from
  tf.keras, Keras 2 or Keras 3): the root attributes ``model_config``,
  ``keras_version``, ``backend``; the ``model_weights`` group's
  ``layer_names``, ``keras_version``, ``backend``; and for each layer *named at
  the top level of* ``model_config`` (``config.layers``, or the plain list of a
  Keras 2.0/2.1 Sequential) that has a group in ``model_weights``, the datasets
  its ``weight_names`` attribute lists (chunked ``weight_names0``, ``1``, ...
  too), plus ``top_level_model_weights``. Mode ``weights`` (the
  ``model.weights.h5`` of a ``.keras`` archive, as bytes on stdin): every group
  and dataset with its attributes, under the same rules, and groups must form a
  tree (a group reached twice is refused).

This module imports only h5py, numpy and the standard library (no bnrewrite, no
TensorFlow) so the child starts in a fraction of a second.

Invocation::

    python -c BOOTSTRAP h5_extract.py MODE SOURCE LIMIT AS_BYTES PARENT_PID TIMEOUT CONFIG_CAP
    python h5_extract.py PATH          # mode "model", no limits (debugging)

stdin: an 8-byte little-endian length and that many bytes (the HDF5 image in mode
``weights``; 0 in mode ``model``), then kept open by the parent: EOF means the
parent is gone. stdout: one pickle.

Result, mode ``model``::

    {"error": None | "open: <msg>" | "damaged: <msg>" | "refused: <msg>" | "memory: <msg>",
     "attrs": {"model_config": str, "keras_version": str, "backend": str},   # present ones only
     "has_layer_names": bool, "has_model_weights": bool,
     "model_weights_attrs": {"layer_names": [...], "keras_version": str, "backend": str},
     "groups": {layer: {"weight_names": [...], "data": {name: ndarray | "error: <msg>"}}},
     "top_level": None | {"weight_names": [...], "data": {...}},
     "declared_bytes": int, "read_bytes": int}

mode ``weights``: ``{"error": ..., "tree": {"groups": {path: attrs}, "datasets":
{path: {"data": ndarray, "attrs": attrs}}}, "declared_bytes": int, "read_bytes": int}``
(the tree :func:`bnrewrite.io.safe_files.memory_h5` takes).
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
import sys

#: bytes charged per name, group and attribute read, so empty datasets cannot be multiplied for free
ENTRY_COST = 256
MAX_DEPTH = 64
#: filters built into HDF5 (and h5py's lzf); anything else would need a plugin
FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
DEFLATE, FLETCHER32 = 1, 3
MAX_ATTR_ITEMS = 1 << 20
ENV_HINT = "set BNREWRITE_MAX_WEIGHT_BYTES to raise the limit"


class Refused(Exception):
    """Something a data-only reader does not do (the message names the object and why)."""


class OverMemory(Exception):
    """Reading needs more memory than the child may use."""


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _is_alloc_error(e: BaseException) -> bool:
    s = str(e).lower()
    return isinstance(e, MemoryError) or "memory allocation failed" in s or "can't allocate" in s \
        or "unable to allocate" in s or "out of memory" in s


class _Reader:
    """Vetted, budgeted access to one open ``h5py.File``."""

    def __init__(self, f, limit: int, file_size: int, config_cap: int):
        import h5py
        import numpy as np

        self.h5py, self.np, self.f = h5py, np, f
        self.limit = limit
        self.config_cap = config_cap
        self.total = 0  # declared bytes of every name read (+ ENTRY_COST each)
        self.read_bytes = 0  # bytes actually read (each object once)
        self.planned: dict = {}  # object address -> (dataset, path, declared bytes, description)
        self.names: dict = {}  # object address -> names it is read under
        self.max_chunks = (1 << 20) + file_size // 16

    # -- budget -----------------------------------------------------------
    def charge(self, nbytes: int, what: str, key=None, desc: str = ""):
        self.total += nbytes + ENTRY_COST
        if key is not None:
            self.names[key] = self.names.get(key, 0) + 1
        if self.total > self.limit:
            n = self.names.get(key, 1) if key is not None else 1
            alias = f", and it is read under {n} names (hard links or repeated weight names)" if n > 1 else ""
            raise Refused(
                f"{what}{desc} declares {_fmt(nbytes)}{alias}: the file declares more data than "
                f"the {_fmt(self.limit)} allowed for it ({ENV_HINT})")

    # -- links ------------------------------------------------------------
    def child(self, group, name: str, where: str):
        """The object linked as ``name`` (one path component) in ``group``, through a hard
        link only; None if there is no such link. Soft/external/user links are refused."""
        h5py = self.h5py
        if not name or name == "." or "/" in name:
            raise Refused(f"'{where}' is not a plain name inside its group")
        b = name.encode("utf-8", "surrogateescape")
        if not group.id.links.exists(b):  # H5Lexists on one component: no link is followed
            return None
        info = group.id.links.get_info(b)
        if info.type == h5py.h5l.TYPE_HARD:
            return group[name]
        if info.type == h5py.h5l.TYPE_SOFT:
            target = _text(group.id.links.get_val(b))
            raise Refused(f"'{where}' is a soft link (to '{target}'); bnrewrite follows no links in model files")
        if info.type == h5py.h5l.TYPE_EXTERNAL:
            fname, obj = group.id.links.get_val(b)
            raise Refused(f"'{where}' is an external link (to '{_text(obj)}' in the file '{_text(fname)}'); "
                          "bnrewrite reads no other file")
        raise Refused(f"'{where}' is a user-defined link (type {info.type}); bnrewrite follows no links")

    def resolve(self, base, base_path: str, rel: str):
        """``base/rel`` component by component (hard links only): (object or None, path)."""
        if rel.startswith("/"):
            raise Refused(f"weight name '{rel}' in '{base_path}' is an absolute path; weights are read "
                          "only from inside their layer's group")
        obj, where = base, base_path
        for part in rel.split("/"):
            where = f"{where}/{part}"
            if not isinstance(obj, self.h5py.Group):
                return None, where
            obj = self.child(obj, part, where)
            if obj is None:
                return None, where
        return obj, where

    def address(self, obj):
        info = self.h5py.h5o.get_info(obj.id)
        return (info.fileno, info.addr)

    # -- datasets ---------------------------------------------------------
    def vet(self, ds, where: str) -> tuple[int, str]:
        """Refuse what a data-only reader must not read; return (declared bytes, description)."""
        h5py = self.h5py
        dcpl = ds.id.get_create_plist()
        if dcpl.get_external_count():
            name = _text(dcpl.get_external(0)[0])
            raise Refused(f"dataset '{where}' keeps its data in an external file ('{name}'); "
                          "bnrewrite reads no other file")
        layout = dcpl.get_layout()
        if layout == getattr(h5py.h5d, "VIRTUAL", 3):
            src = _text(dcpl.get_virtual_filename(0)) if dcpl.get_virtual_count() else "?"
            raise Refused(f"dataset '{where}' is a virtual dataset (mapping data from the file '{src}'); "
                          "bnrewrite reads no other file")
        if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
            raise Refused(f"dataset '{where}' has an unknown storage layout ({layout})")
        try:
            dtype = ds.dtype
        except Exception as e:  # noqa: BLE001 - an HDF5 type numpy cannot hold
            raise Refused(f"dataset '{where}' has a type bnrewrite does not read ({_short(e)})") from None
        if dtype.hasobject:
            raise Refused(f"dataset '{where}' has a variable-length or reference type ({dtype}); "
                          "weights are fixed-size numbers")
        if dtype.kind not in "fiu" or dtype.names is not None or dtype.subdtype is not None \
                or h5py.check_enum_dtype(dtype) is not None:
            # complex, bool, strings, compound, opaque, enum: no Keras weight is stored as one, and a
            # framework would cast it silently (a string "1.0" read as a number)
            raise Refused(f"dataset '{where}' has type {dtype} ({dtype.kind!r}); weights are real numbers")
        if dtype.kind == "f" and dtype.itemsize not in (2, 4, 8):
            # float128 / long double: no framework stores one, and its range hides values that become
            # inf in the layer's float32 (1e4000 passed the finite check)
            raise Refused(f"dataset '{where}' has type {dtype} ({8 * dtype.itemsize}-bit float); Keras weights "
                          "are 16-, 32- or 64-bit floats")
        shape = ds.shape
        if shape is None:
            raise Refused(f"dataset '{where}' has a null dataspace; weights are arrays")
        nbytes = _prod(shape) * dtype.itemsize
        desc = f" (shape {tuple(shape)}, {dtype})"
        filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
        for code in filters:
            if code not in FILTERS:
                raise Refused(f"dataset '{where}' needs HDF5 filter {code}, which is not built into HDF5; "
                              "bnrewrite loads no filter plugins")
        if layout == h5py.h5d.CHUNKED:
            chunk = dcpl.get_chunk()
            nchunks = _prod(-(-int(s) // max(1, int(c))) for s, c in zip(shape, chunk))
            if nchunks > self.max_chunks:
                raise Refused(f"dataset '{where}' is split into {nchunks} chunks, more than a file "
                              "of this size can index")
        return nbytes, desc

    def check_deflate(self, ds, where: str, filters: list[int], chunk_bytes: int):
        """Every stored chunk whose outermost filter is deflate inflates to at most its chunk size."""
        import zlib

        outer = [f for f in filters]
        strip = 0
        if outer and outer[-1] == FLETCHER32:  # checksum appended after compression
            outer.pop()
            strip = 4
        if not outer or outer[-1] != DEFLATE:
            return  # deflate is not what is undone first: left to HDF5 (and RLIMIT_AS)
        bit = 1 << (len(outer) - 1)
        bound = chunk_bytes + 64 + 4 * filters.count(FLETCHER32)
        step = 1 << 20
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            if info.filter_mask & bit:
                continue  # stored without deflate
            _, raw = ds.id.read_direct_chunk(info.chunk_offset)
            if strip:
                raw = raw[:-strip]
            d, produced, view = zlib.decompressobj(), 0, memoryview(raw)
            pos = 0
            try:
                while pos < len(view) or d.unconsumed_tail:
                    if d.unconsumed_tail:
                        data = d.unconsumed_tail
                    else:
                        data, pos = view[pos:pos + step], pos + step
                    produced += len(d.decompress(data, step))
                    if produced > bound:
                        raise Refused(
                            f"dataset '{where}': chunk {tuple(info.chunk_offset)} inflates to more than the "
                            f"{_fmt(chunk_bytes)} its chunk holds (a decompression bomb)")
                    if d.eof:
                        break
            except zlib.error:
                return  # damaged: HDF5 reports it when reading

    def plan(self, ds, where: str):
        """Vet ``ds`` and charge its declared size for this name; read later (once per object)
        by :meth:`read_planned`, so a file over the limit is refused before anything is read."""
        key = self.address(ds)
        nbytes, desc = self.vet(ds, where)
        self.charge(nbytes, f"dataset '{where}'", key, desc)
        if key not in self.planned:
            self.planned[key] = (ds, where, nbytes, desc)
        return key

    def read_planned(self) -> dict:
        """Read every planned dataset once: {key: ndarray | "error: <msg>"}."""
        out = {}
        for key, (ds, where, nbytes, desc) in self.planned.items():
            try:
                out[key] = self.read(ds, where, nbytes, desc)
                self.read_bytes += nbytes
            except (Refused, OverMemory, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - damaged data: reported by the caller
                if _is_alloc_error(e):
                    raise OverMemory(f"dataset '{where}'{desc} needs {_fmt(nbytes)}") from None
                out[key] = f"error: {_short(e)}"
        return out

    def read(self, ds, where: str, nbytes: int, desc: str):
        dcpl = ds.id.get_create_plist()
        filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
        if DEFLATE in filters and dcpl.get_layout() == self.h5py.h5d.CHUNKED:
            self.check_deflate(ds, where, filters, _prod(dcpl.get_chunk()) * ds.dtype.itemsize)
        try:
            return self.np.asarray(ds[()])
        except MemoryError:
            raise OverMemory(f"dataset '{where}'{desc} needs {_fmt(nbytes)}") from None

    # -- attributes -------------------------------------------------------
    def has_attr(self, obj, name: str) -> bool:
        return bool(self.h5py.h5a.exists(obj.id, name.encode("utf-8")))

    def attr(self, obj, name: str, where: str):
        """Attribute ``name`` of ``obj`` as plain data (str, bytes, list, ndarray), or None if
        absent, empty or of a type that is not read (references, variable-length sequences)."""
        h5py, np = self.h5py, self.np
        if not self.has_attr(obj, name):
            return None
        aid = h5py.h5a.open(obj.id, name.encode("utf-8"))
        shape = aid.shape
        if shape is None:
            return None
        try:
            dtype = aid.dtype
        except Exception:  # noqa: BLE001 - a type numpy cannot hold
            return None
        string = h5py.check_string_dtype(dtype)
        if dtype.hasobject and string is None:
            return None
        count = _prod(shape)
        if count > MAX_ATTR_ITEMS:
            raise Refused(f"attribute '{name}' of '{where}' holds {count} items; refusing it")
        self.charge(count * (16 if dtype.hasobject else dtype.itemsize), f"attribute '{name}' of '{where}'")
        value = obj.attrs[name]
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            value = [_text(v) if string is not None else v for v in value.tolist()]
            self.charge(sum(len(v) for v in value if isinstance(v, (str, bytes))), f"attribute '{name}' of '{where}'")
        elif isinstance(value, (str, bytes)):
            self.charge(len(value), f"attribute '{name}' of '{where}'")
        elif isinstance(value, np.generic):
            value = np.asarray(value)
        elif not isinstance(value, np.ndarray):
            return None
        return value

    def text_attr(self, obj, name: str, where: str):
        v = self.attr(obj, name, where)
        if isinstance(v, (str, bytes)):
            return _text(v)
        if isinstance(v, self.np.ndarray) and v.shape == () and v.dtype.kind == "S":
            return _text(v.item())
        return None

    def names_attr(self, obj, name: str, where: str):
        """A list-of-names attribute, also in tf_keras's chunked form (``name0``, ``name1``, ...)."""
        if self.has_attr(obj, name):
            chunks = [self.attr(obj, name, where)]
        elif self.has_attr(obj, f"{name}0"):
            chunks, i = [], 0
            while self.has_attr(obj, f"{name}{i}"):
                chunks.append(self.attr(obj, f"{name}{i}", where))
                i += 1
        else:
            return None
        out = []
        for c in chunks:
            if c is None:
                continue
            items = c.tolist() if isinstance(c, self.np.ndarray) else c
            if isinstance(items, (str, bytes)):
                items = [items]
            out.extend(str(_text(n)) for n in items)
        return out

    def all_attrs(self, obj, where: str) -> dict:
        out = {}
        for name in list(obj.attrs):
            v = self.attr(obj, name, where)
            if v is not None:
                out[name] = v
        return out

    # -- model mode -------------------------------------------------------
    def layer_group(self, grp, where: str) -> dict:
        names = self.names_attr(grp, "weight_names", where) or []
        data: dict = {}
        for n in names:
            try:
                obj, at = self.resolve(grp, where, n)
                if obj is None:
                    data[n] = f"error: '{at}' does not exist"
                elif not isinstance(obj, self.h5py.Dataset):
                    data[n] = f"error: '{at}' is not a dataset"
                else:
                    data[n] = self.plan(obj, at)  # an object key, replaced by the array once read
            except (Refused, OverMemory, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - reported when the layer is looked up
                data[n] = f"error: {_short(e)}"
        return {"weight_names": names, "data": data}

    # -- weights mode -----------------------------------------------------
    def walk(self, grp, path: str, tree: dict, depth: int, seen: set):
        where = path or "/"
        if depth > MAX_DEPTH:
            raise Refused(f"group '{where}' is nested more than {MAX_DEPTH} levels deep")
        key = self.address(grp)
        if key in seen:
            raise Refused(f"group '{where}' is reached twice (a hard-linked group); groups must form a tree")
        seen.add(key)
        self.charge(0, f"group '{where}'")
        tree["groups"][path] = self.all_attrs(grp, where)
        for name in grp:
            child_path = f"{path}/{name}" if path else name
            obj = self.child(grp, name, child_path)
            if isinstance(obj, self.h5py.Group):
                self.walk(obj, child_path, tree, depth + 1, seen)
            elif isinstance(obj, self.h5py.Dataset):
                key = self.plan(obj, child_path)  # replaced by the array once read
                tree["datasets"][child_path] = {"data": key, "attrs": self.all_attrs(obj, child_path)}
            # a committed datatype holds no data: nothing to read


def _config_layer_names(text: str):
    """Layer names at the top level of a model config (JSON), or None if it is not one."""
    try:
        cfg = json.loads(text)
    except Exception:  # noqa: BLE001 - the parent reports bad JSON
        return None
    if not isinstance(cfg, dict):
        return None
    c = cfg.get("config")
    layers = c if isinstance(c, list) else c.get("layers") if isinstance(c, dict) else None
    if not isinstance(layers, list):
        return None
    names: dict = {}
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        inner = layer.get("config")
        for n in (layer.get("name"), inner.get("name") if isinstance(inner, dict) else None):
            if isinstance(n, str):
                names[n] = None
    return list(names)


def _open_model_file(path: str):
    """(fd, h5py.File) of a regular file; HDF5 opens what was checked (``/proc/self/fd``)."""
    import h5py

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused("the input is not a regular file")
        proc = f"/proc/self/fd/{fd}"
        return fd, h5py.File(proc if os.path.exists(proc) else path, "r")
    except BaseException:
        os.close(fd)
        raise


def extract(path: str, limit: int = 1 << 62, config_cap: int = 1 << 62) -> dict:
    """Mode ``model``: what a full-model ``.h5`` holds for the model (see the module doc)."""
    import h5py

    out: dict = {"error": None, "attrs": {}, "has_layer_names": False, "has_model_weights": False,
                 "model_weights_attrs": {}, "groups": {}, "top_level": None,
                 "declared_bytes": 0, "read_bytes": 0}
    try:
        fd, f = _open_model_file(path)
    except (Refused, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - any failure to open is reported, not raised
        out["error"] = f"open: {_short(e)}"
        return out
    try:
        with f:
            r = _Reader(f, limit, os.fstat(fd).st_size, config_cap)
            for key in ("model_config", "keras_version", "backend"):
                v = r.text_attr(f, key, "/")
                if v is not None:
                    out["attrs"][key] = v
            cfg = out["attrs"].get("model_config")
            if cfg is not None and len(cfg) > config_cap:
                raise Refused(f"model_config is {_fmt(len(cfg))}, more than the {_fmt(config_cap)} allowed "
                              "(set BNREWRITE_MAX_CONFIG_BYTES to raise the limit)")
            out["has_layer_names"] = r.has_attr(f, "layer_names") or r.has_attr(f, "layer_names0")
            mw = r.child(f, "model_weights", "model_weights")
            out["has_model_weights"] = isinstance(mw, h5py.Group)
            if cfg is None or not out["has_model_weights"]:
                return out
            names = _config_layer_names(cfg)
            if names is None:
                return out  # not JSON / not a model config: the parent says which
            mwa = out["model_weights_attrs"]
            for key in ("keras_version", "backend"):
                v = r.text_attr(mw, key, "model_weights")
                if v is not None:
                    mwa[key] = v
            layer_names = r.names_attr(mw, "layer_names", "model_weights")
            if layer_names is not None:
                mwa["layer_names"] = layer_names
            for top in names:
                if not top or top == "." or top.startswith("/"):
                    continue  # cannot be a group name
                # tf.keras names such as "conv1/conv" (DenseNet) are nested groups: resolved one
                # component at a time, through hard links only
                grp, _ = r.resolve(mw, "model_weights", top)
                if isinstance(grp, h5py.Group):
                    out["groups"][top] = r.layer_group(grp, f"model_weights/{top}")
            if "top_level_model_weights" not in out["groups"]:
                grp = r.child(mw, "top_level_model_weights", "model_weights/top_level_model_weights")
                if isinstance(grp, h5py.Group):
                    out["top_level"] = r.layer_group(grp, "model_weights/top_level_model_weights")
            arrays = r.read_planned()
            for g in [*out["groups"].values(), out["top_level"] or {"data": {}}]:
                for n, v in g["data"].items():
                    if isinstance(v, tuple):
                        g["data"][n] = arrays[v]
            out["declared_bytes"], out["read_bytes"] = r.total, r.read_bytes
    except (Refused, OverMemory, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001
        if _is_alloc_error(e):
            raise OverMemory(_short(e)) from None
        out["error"] = f"damaged: {type(e).__name__}: {_short(e)}"
    finally:
        os.close(fd)
    return out


def extract_weights(image, limit: int = 1 << 62, config_cap: int = 1 << 62) -> dict:
    """Mode ``weights``: every group and dataset of an HDF5 image (bytes), as a tree."""
    import io

    import h5py

    out: dict = {"error": None, "tree": {"groups": {}, "datasets": {}}, "declared_bytes": 0, "read_bytes": 0}
    try:
        f = h5py.File(io.BytesIO(image), "r")
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        out["error"] = f"open: {_short(e)}"
        return out
    try:
        with f:
            r = _Reader(f, limit, len(image), config_cap)
            r.walk(f, "", out["tree"], 0, set())
            arrays = r.read_planned()
            for path, d in out["tree"]["datasets"].items():
                d["data"] = arrays[d["data"]]
                if isinstance(d["data"], str):
                    out["error"] = f"damaged: dataset '{path}' is unreadable ({d['data'][len('error: '):]})"
                    return out
            out["declared_bytes"], out["read_bytes"] = r.total, r.read_bytes
    except (Refused, OverMemory, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001
        if _is_alloc_error(e):
            raise OverMemory(_short(e)) from None
        out["error"] = f"damaged: {type(e).__name__}: {_short(e)}"
    return out


# --------------------------------------------------------------------------
# the child process
# --------------------------------------------------------------------------

def _harden(as_bytes: int, parent: int, timeout: float):
    """Memory cap, death with the parent, and a last-resort alarm; before h5py is imported."""
    import signal

    try:
        import resource

        if as_bytes > 0:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            cap = as_bytes if hard == resource.RLIM_INFINITY else min(as_bytes, hard)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ImportError, ValueError, OSError):
        pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG: die with the parent
        except Exception:  # noqa: BLE001 - the fallbacks below still apply
            pass
    if parent and os.getppid() != parent:
        os._exit(70)  # the parent died before PR_SET_PDEATHSIG was in place
    if 0 < timeout < 1e8 and hasattr(signal, "alarm"):
        signal.alarm(int(timeout) + 10)  # SIGALRM's default action ends the process, even inside HDF5


def _read_exact(fd: int, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            os._exit(71)  # the parent went away mid-way
        got += k
    return bytes(buf) if n < (1 << 20) else buf


def _watch_parent():
    """Fallback for PR_SET_PDEATHSIG: EOF on stdin (the parent's pipe) ends the process."""
    if not stat.S_ISFIFO(os.fstat(0).st_mode):
        return
    import threading

    def watch():
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        os._exit(72)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> dict:
    if len(argv) == 2:  # python h5_extract.py PATH: mode model, no limits (debugging)
        return _run(lambda: extract(argv[1]))
    mode, source, limit, as_bytes, parent, timeout, config_cap = argv[1:8]
    _harden(int(as_bytes), int(parent), float(timeout))
    n = struct.unpack("<Q", _read_exact(0, 8))[0]
    image = _read_exact(0, n) if n else None
    _watch_parent()
    if mode == "model":
        return _run(lambda: extract(source, int(limit), int(config_cap)))
    if mode == "weights":
        return _run(lambda: extract_weights(image, int(limit), int(config_cap)))
    return {"error": f"damaged: unknown mode {mode!r}"}


def _run(read) -> dict:
    try:
        return read()
    except Refused as e:
        return {"error": f"refused: {e}"}
    except OverMemory as e:
        return {"error": f"memory: {e}"}
    except MemoryError:
        return {"error": "memory: "}


def proc_kib(path: str, field: str) -> int | None:
    """A ``kB`` field of a /proc file (``VmHWM`` of /proc/self/status, ``MemAvailable`` of
    /proc/meminfo), or None where there is no /proc."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _peak_rss_kib():
    """This process's own peak RSS (VmHWM belongs to the address space, so unlike ru_maxrss it
    does not count the parent's pages inherited at fork, before exec)."""
    return proc_kib("/proc/self/status", "VmHWM")


if __name__ == "__main__":
    result = main(sys.argv)
    if isinstance(result, dict):
        result["peak_rss_kib"] = _peak_rss_kib()
    out = os.fdopen(1, "wb", closefd=False)
    pickle.dump(result, out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()
    os._exit(0)
