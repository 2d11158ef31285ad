"""Reader for TF2 Keras SavedModel folders (``model.save(dir, save_format="tf")`` in tf.keras / tf_keras).

A SavedModel holds a TensorFlow graph (``saved_model.pb``) that runs whatever it was traced
with -- loading it (``tf.saved_model.load``, ``keras.models.load_model``) restores and can
call that graph. bnrewrite never does: ``saved_model.pb`` is at most parsed as a protobuf (for
the Keras metadata TensorFlow 2.0-2.4 kept in it), never loaded as a graph. What is read, as data
only:

* ``keras_metadata.pb``: a ``SavedMetadata`` protobuf (tf_keras's
  ``tf_keras/protobuf/saved_metadata_pb2``); each node has a ``node_path``
  (``root.layer_with_weights-0.layer``) and a JSON ``metadata`` with the layer's name and
  class; the root's holds the model config (``class_name`` + ``config``, the tf.keras
  dialect of an ``.h5``'s ``model_config``, with tuples as ``{"class_name": "__tuple__",
  "items": [...]}``, turned into lists here as an ``.h5`` stores them); without that file
  (TensorFlow 2.0-2.4), the same metadata from ``saved_model.pb``'s object graph (each Keras
  object's ``user_object``), each node's path found breadth-first from the root;
* ``variables/variables.index`` + ``variables.data-*``: a TensorFlow checkpoint, read with
  ``tf.train.load_checkpoint``. Its ``_CHECKPOINTABLE_OBJECT_GRAPH`` (a
  ``TrackableObjectGraph``) maps a metadata ``node_path`` to the layer's object, whose
  ``variables`` child lists the layer's variables in ``layer.weights`` order, each with its
  ``full_name`` (``td/gamma``) and checkpoint key. Only the tensors of the config's layers
  are read; their declared sizes are checked first.

The folder is checked like a file: every file read must be a regular file
(:func:`~bnrewrite.io.safe_files.check_regular`), ``keras_metadata.pb`` at most the config
limit, the declared tensor bytes at most the weights limit of the checkpoint's size; the
checkpoint's object graph is read by bnrewrite from the bytes its index entry gives it (TensorFlow
would first allocate whatever length the entry declares). A SavedModel without Keras metadata (a
plain ``tf.Module``, a Keras 3 ``model.export()``) is refused. The graph is rebuilt with tf_keras; the verification reference is tf_keras's own
``model_from_config`` of the metadata config with the checkpoint restored by tf_keras's
``load_weights`` (TensorFlow's object-graph matching), never the saved graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError, root_cause, with_path
from ..graph import ModelGraph
from .config import build_graph
from .safe_files import check_regular, config_limit, fmt_bytes, weights_limit
from .weights import key_weights, relative_name

METADATA = "keras_metadata.pb"
PREFIX = "variables/variables"
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _untuple(obj):
    """tf.keras's JSON encoding of tuples / TensorShapes -> lists (as an ``.h5`` stores them)."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("__tuple__", "TensorShape") and isinstance(obj.get("items"), list) \
                and len(obj) == 2:
            return [_untuple(x) for x in obj["items"]]
        return {k: _untuple(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_untuple(x) for x in obj]
    return obj


def _inside(folder: Path, path: Path) -> Path:
    """``path``, if it is inside ``folder`` once symlinks are resolved: TensorFlow follows a link in the
    folder to wherever it points, and its checksum errors print values computed over what it read."""
    root, real = os.path.realpath(folder), os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise InputError(f"{path}: a symbolic link that leads out of the SavedModel folder; bnrewrite reads "
                         "only the folder's own files")
    return path


def _metadata(folder: Path) -> list[tuple[str, dict]]:
    """``[(node_path, metadata dict)]`` of ``keras_metadata.pb``; InputError when missing or bad."""
    path = folder / METADATA
    if not path.exists() and not path.is_symlink():
        nodes = _metadata_in_saved_model(folder)  # TF <= 2.4 kept it in saved_model.pb
        if not nodes:
            raise InputError(f"{folder}: TensorFlow SavedModel without Keras metadata ({METADATA}): a plain "
                             "tf.Module / tf.function export (or Keras 3 model.export()); bnrewrite reads only "
                             "Keras SavedModels and never runs a saved graph")
        return nodes
    try:
        from tf_keras.protobuf import saved_metadata_pb2
    except ImportError:  # pragma: no cover - tensorflow's copy
        from tensorflow.python.keras.protobuf import saved_metadata_pb2
    meta = _read_proto(folder, path, saved_metadata_pb2.SavedMetadata(), config_limit(), "SavedMetadata")
    return [(n.node_path, _node_metadata(path, n.node_path, n.metadata)) for n in meta.nodes]


def _read_proto(folder: Path, path: Path, message, cap: int, what: str):
    """``message`` parsed from the regular file ``path`` inside ``folder``, at most ``cap`` bytes."""
    from .safe_files import open_regular

    st = check_regular(_inside(folder, path))
    if st.st_size > cap:
        raise InputError(f"{path}: {fmt_bytes(st.st_size)}, more than the config limit {fmt_bytes(cap)} "
                         "(BNREWRITE_MAX_CONFIG_BYTES)", code="OVERSIZED_DATA")
    with open_regular(path) as f:
        data = f.read(cap + 1)
    try:
        message.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise InputError(f"{path}: not a valid {what} protobuf ({root_cause(e, 200)})") from None
    return message


def _node_metadata(path: Path, node_path: str, text: str) -> dict:
    """A metadata node's JSON (``{}`` when empty or not an object)."""
    try:
        d = json.loads(text) if text else {}
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path}: node {node_path!r} has invalid JSON metadata ({root_cause(e, 200)})") from None
    return d if isinstance(d, dict) else {}


#: largest saved_model.pb parsed for its Keras metadata (it also holds the traced functions' graphs)
SAVED_MODEL_CAP = 256 << 20


def _metadata_in_saved_model(folder: Path) -> list[tuple[str, dict]]:
    """The Keras metadata TensorFlow 2.0-2.4 wrote into ``saved_model.pb`` itself (each Keras object's
    ``user_object``: identifier ``_tf_keras_*`` and a JSON ``metadata``), with each node's path from
    the root as ``keras_metadata.pb`` names it (``root.layer-1``, the first path found breadth-first).
    The protobuf is parsed as data; no graph in it is loaded or run. [] when there is none."""
    from collections import deque

    from tensorflow.core.protobuf import saved_model_pb2

    pb = folder / "saved_model.pb"
    sm = _read_proto(folder, pb, saved_model_pb2.SavedModel(), max(config_limit(), SAVED_MODEL_CAP), "SavedModel")
    if not sm.meta_graphs:
        return []
    graph = sm.meta_graphs[0].object_graph_def
    if not graph.nodes:  # a graph-only export: no objects at all
        return []
    # parent links only: a path string per node costs depth x nodes (a 1.3 MB chain took 7.7 GB)
    parent: dict[int, tuple[int, str] | None] = {0: None}
    length = {0: len("root")}
    queue = deque([0])
    while queue:
        nid = queue.popleft()
        if not 0 <= nid < len(graph.nodes):
            raise InputError(f"{pb}: object graph refers to node {nid} of {len(graph.nodes)}")
        for c in graph.nodes[nid].children:
            if c.node_id not in parent:
                parent[c.node_id] = (nid, c.local_name)
                length[c.node_id] = length[nid] + 1 + len(c.local_name)
                queue.append(c.node_id)
    users = [(nid, graph.nodes[nid].user_object) for nid in parent if graph.nodes[nid].HasField("user_object")]
    users = [(nid, u) for nid, u in users if u.identifier.startswith("_tf_keras") and u.metadata]
    # each node's JSON is parsed and its path kept: together, the same bound as any model config
    total = sum(len(u.metadata) + length[nid] for nid, u in users)
    if total > config_limit():
        raise InputError(f"{pb}: its Keras metadata and object paths total {fmt_bytes(total)}, more than the "
                         f"config limit {fmt_bytes(config_limit())} (BNREWRITE_MAX_CONFIG_BYTES)", code="OVERSIZED_DATA")

    def path(nid: int) -> str:
        names = []
        while parent[nid] is not None:
            nid, name = parent[nid]
            names.append(name)
        return ".".join(["root", *reversed(names)])

    return [(p, _node_metadata(pb, p, u.metadata)) for p, u in ((path(nid), u) for nid, u in users)]


def read_config(folder, nodes=None) -> dict | None:
    """The model config of a Keras SavedModel (data only), or None."""
    for node_path, d in nodes if nodes is not None else _metadata(Path(folder)):
        if node_path == "root":
            if "class_name" not in d or "config" not in d:
                return None
            return {"class_name": d["class_name"], "config": _untuple(d["config"])}
    return None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        c = buf[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i


def _table_entries(table: bytes):
    """``(key, value)`` of a TensorFlow table file (the checkpoint index: LevelDB's format, uncompressed
    blocks), in order; ValueError when it is malformed or lists a data block twice or out of order --
    TensorFlow's reader walks every listing, so a block listed 40,000 times kept it busy for over 10
    minutes (in C++, where no stop signal reaches Python)."""
    if len(table) < 48 or table[-8:] != bytes.fromhex("57fb808b247547db"):
        raise ValueError("not a TensorFlow table (bad footer)")
    _, i = _varint(table, len(table) - 48)  # metaindex handle, then the index block's
    _, i = _varint(table, i)
    off, i = _varint(table, i)
    size, _ = _varint(table, i)

    def block(off: int, size: int):
        if off + size + 5 > len(table) or table[off + size] != 0:
            raise ValueError("block out of the file or compressed")
        data = table[off:off + size]
        restarts = int.from_bytes(data[-4:], "little")
        end = len(data) - 4 - 4 * restarts
        if end < 0:
            raise ValueError("bad block")
        p, last = 0, b""
        while p < end:
            shared, p = _varint(data, p)
            unshared, p = _varint(data, p)
            vlen, p = _varint(data, p)
            if shared > len(last) or p + unshared + vlen > end:
                raise ValueError("bad block entry")
            last = last[:shared] + data[p:p + unshared]
            yield last, data[p + unshared:p + unshared + vlen]
            p += unshared + vlen

    end = 0
    for _, handle in block(off, size):
        boff, j = _varint(handle, 0)
        bsize, _ = _varint(handle, j)
        if boff < end:
            raise ValueError("index blocks overlap or are out of order")
        end = boff + bsize + 5
        yield from block(boff, bsize)


def _string_entry(folder: Path, value: bytes | None, key: str) -> bytes:
    """The scalar string tensor ``key`` of the checkpoint, whose index entry is ``value``, read from its
    data shard within the bytes the entry gives it (a string is stored as its varint length, a 4-byte
    checksum, then its bytes)."""
    from tensorflow.core.protobuf import tensor_bundle_pb2
    from tensorflow.core.framework import types_pb2

    if value is None:
        raise InputError(f"{folder}: the variables/ checkpoint has no {key}")
    entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
    if entry.dtype != types_pb2.DT_STRING or entry.shape.dim:
        raise InputError(f"{folder}: checkpoint entry {key} is not a string")
    shards = sorted((folder / "variables").glob(f"variables.data-{entry.shard_id:05d}-of-*"))
    if len(shards) != 1:
        raise InputError(f"{folder}: checkpoint data shard {entry.shard_id} not found")
    shard = check_regular(_inside(folder, shards[0]))
    if entry.offset + entry.size > shard.st_size:
        raise InputError(f"{folder}: checkpoint entry {key} lies beyond the end of its data file")
    with open(shards[0], "rb") as f:
        f.seek(entry.offset)
        data = f.read(entry.size)
    length, start = _varint(data, 0)
    if start + 4 + length != len(data):
        raise InputError(f"{folder}: checkpoint entry {key} declares a string of {fmt_bytes(length)} in "
                         f"{fmt_bytes(len(data))}", code="OVERSIZED_DATA")
    return data[start + 4:]


class _Checkpoint:
    """The ``variables/`` checkpoint, checked, with its object graph parsed."""

    def __init__(self, folder: Path):
        vdir = _inside(folder, folder / "variables")
        index = folder / (PREFIX + ".index")
        check_regular(_inside(folder, index))
        total = 0
        for p in sorted(vdir.iterdir()) if vdir.is_dir() else []:
            if p.name.startswith("variables."):
                total += check_regular(_inside(folder, p)).st_size
        self.limit = weights_limit(total)
        self.prefix = str(folder / PREFIX)
        try:  # walked before TensorFlow's reader sees the index (see _table_entries)
            entries = dict(_table_entries(index.read_bytes()))
        except ValueError as e:
            raise InputError(f"{folder}: damaged variables/ checkpoint index ({e})") from None
        import tensorflow as tf
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        try:
            self.reader = tf.train.load_checkpoint(self.prefix)
            shapes = self.reader.get_variable_to_shape_map()
            dtypes = self.reader.get_variable_to_dtype_map()
        except Exception as e:  # noqa: BLE001 - DataLossError, NotFoundError, ...
            raise InputError(f"{folder}: unreadable variables/ checkpoint ({root_cause(e, 200)})") from None
        self.shapes, self.dtypes = shapes, dtypes
        declared = sum(int(np.prod(s, dtype=np.int64)) * max(dtypes[k].size, 1)
                       for k, s in shapes.items() if k != OBJECT_GRAPH)
        if declared > self.limit:
            raise InputError(f"{folder}: the checkpoint declares {fmt_bytes(declared)} of variables, more than "
                             f"{fmt_bytes(self.limit)} (BNREWRITE_MAX_WEIGHT_BYTES)", code="OVERSIZED_DATA")
        if OBJECT_GRAPH not in shapes:
            raise InputError(f"{folder}: the variables/ checkpoint has no object graph")
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        try:
            # read by bnrewrite, not TensorFlow: TF zero-fills the length a string's header declares
            # before it finds the data file too short (3 GB declared in an 11 KB file: 3.6 GB; 20 GB: SIGSEGV)
            graph.ParseFromString(_string_entry(folder, entries.get(OBJECT_GRAPH.encode()), OBJECT_GRAPH))
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{folder}: damaged checkpoint object graph ({root_cause(e, 200)})") from None
        self.graph = graph

    def node(self, node_path: str) -> int:
        """Object id of a metadata ``node_path`` (``root.layer-1.layer``)."""
        parts = node_path.split(".")
        if parts[0] != "root":
            raise KeyError(node_path)
        nid = 0
        for name in parts[1:]:
            nid = next(c.node_id for c in self.graph.nodes[nid].children if c.local_name == name)
        return nid

    def variables(self, nid: int) -> list[tuple[str, str]]:
        """``[(full name, checkpoint key)]`` of the layer object ``nid``, in ``layer.weights`` order."""
        kids = {c.local_name: c.node_id for c in self.graph.nodes[nid].children}
        if "variables" not in kids:
            return []
        out = []
        for c in self.graph.nodes[kids["variables"]].children:
            attrs = [a for a in self.graph.nodes[c.node_id].attributes if a.name == "VARIABLE_VALUE"]
            if attrs:
                out.append((attrs[0].full_name, attrs[0].checkpoint_key))
        return out

    def tensor(self, key: str) -> np.ndarray:
        dtype = self.dtypes[key]
        if not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
            raise InputError(f"checkpoint variable {key} has dtype {dtype.name}, not a number")
        return np.asarray(self.reader.get_tensor(key))


def read_savedmodel(folder: Path, *, unsafe: bool = False, custom_objects: dict | None = None) -> ModelGraph:
    folder = Path(folder)
    try:
        nodes = _metadata(folder)
        config = read_config(folder, nodes)
        if config is None:
            where = METADATA if (folder / METADATA).exists() else "the Keras metadata in saved_model.pb"
            raise InputError(f"{folder}: {where} has no model config at its root (a Keras layer, not a model?)")
        ckpt = _Checkpoint(folder)
    except InputError as e:
        raise with_path(e, folder) from None

    # (parent node_path, layer name) -> node_path: how the config's nested names reach objects
    index: dict[tuple[str, str], str] = {}
    for node_path, d in nodes:
        if "." in node_path and isinstance(d.get("name"), str):
            index.setdefault((node_path.rsplit(".", 1)[0], d["name"]), node_path)

    def lookup(nest: tuple, name: str, class_name: str) -> dict:
        at = "root"
        for part in (*nest, name):
            nxt = index.get((at, part))
            if nxt is None:
                raise InputError(f"layer {'/'.join((*nest, name))} has no object in {METADATA}")
            at = nxt
        try:
            nid = ckpt.node(at)
        except (KeyError, StopIteration):
            raise InputError(f"layer {'/'.join((*nest, name))} ({at}) is not in the variables/ checkpoint") from None
        items = []
        for full, key in ckpt.variables(nid):
            if key not in ckpt.shapes:
                raise InputError(f"layer {name!r}: variable {full} ({key}) is missing from the checkpoint")
            items.append((relative_name(full, name), ckpt.tensor(key)))
        return key_weights(items)

    source = {"path": str(folder), "format": "savedmodel", "keras_version": "2 (tf.keras SavedModel)",
              "backend": "tensorflow"}
    from .original import Original, bn_subclass_names

    try:
        mg = build_graph(config, lookup, legacy=True, source=source, unsafe=unsafe,
                         custom_classes=frozenset(custom_objects or ()), bn_classes=bn_subclass_names(custom_objects))
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise InputError(f"{folder}: malformed model config in {METADATA} "
                         f"({type(e).__name__}: {root_cause(e, 200)})") from None
    except InputError as e:
        raise with_path(e, folder) from None
    mg.original = Original(framework="tf_keras", format="savedmodel", config=config,
                           weights={"prefix": ckpt.prefix}, path=str(folder))
    return mg


def build_original(config: dict, weights: dict, *, unsafe: bool = False, custom_objects: dict | None = None):
    """tf_keras's own model of a Keras SavedModel: ``model_from_config`` of the metadata config
    (training flags already removed by the caller), then tf_keras's ``load_weights`` of the
    ``variables/`` checkpoint, which matches variables through the checkpoint's object graph;
    every object of the model must be matched."""
    from ..build.tf_keras import model_from_config

    model = model_from_config(config, custom_objects, unsafe)
    status = model.load_weights(weights["prefix"])
    status.assert_existing_objects_matched()
    return model


def is_keras_savedmodel(folder) -> bool:
    return os.path.isfile(os.path.join(folder, METADATA))
