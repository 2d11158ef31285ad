"""The graph schema at the centre of bnrewrite.

A Keras model becomes a :class:`ModelGraph`, whose ``.graph`` is a
``networkx.MultiDiGraph``:

**Nodes are layer calls.** The first call of layer ``conv`` is node ``"conv"``;
later calls of the same (shared) layer are ``"conv#1"``, ``"conv#2"``, ... Node
attributes:

``layer``   :class:`Layer` -- class name, config in the dialect of the framework
            that wrote the file (:attr:`ModelGraph.framework`) and weights
            (numpy arrays by variable key, e.g. ``"kernel"``, ``"gamma"``,
            ``"moving_variance"``). All calls of a shared layer hold the *same*
            ``Layer`` object, so a weight change applies to every call.
``call``    int -- which call of the layer this node is (0 for the first).
``args``    list -- positional call arguments, with :class:`TensorRef`
            placeholders where tensors go (``[TensorRef(0)]`` for a plain call,
            ``[[TensorRef(0), TensorRef(1)]]`` for ``Add()([a, b])``).
``kwargs``  dict -- keyword call arguments, kept per call (``training``,
            ``mask``, ...), with :class:`TensorRef` for tensor-valued ones.
``path``    tuple of str -- enclosing models, outermost first, for layers of a
            nested model that was flattened in (``("base",)``); ``()`` at top.
``order``   float -- creation order, used to break ties in topological order.

**Edges are tensors.** An edge ``u -> v`` has ``out`` (which output of ``u``)
and ``port`` (which ``TensorRef`` slot of ``v`` it fills). A tensor used twice
by one call (``Add()([x, x])``) is two parallel edges, hence the multigraph.

**The framework.** :attr:`ModelGraph.framework` is ``"tf_keras"`` for files
written by Keras 2.x / tf.keras (configs stay in their own dialect and are
rebuilt by tf_keras) and ``"keras"`` for Keras 3 files. Passes write what they
create in a form both builders understand: framework-neutral ops such as
:func:`reshape_op`, kernels and biases, statistics.

Inputs are ``InputLayer`` nodes, listed in model order in
:attr:`ModelGraph.inputs`; the model outputs are ``(node, out)`` pairs in
:attr:`ModelGraph.outputs`. Nested models are flattened in by the readers, so a
pass sees every BatchNormalization wherever it was defined.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx
import numpy as np

#: BatchNormalization under every name a Keras writer used (TF 1.13: ...V1 / ...V2)
#: class names of (nested) models in a config
MODEL_CLASSES = ("Functional", "Model", "Sequential")
BN_CLASSES = ("BatchNormalization", "SyncBatchNormalization", "BatchNormalizationV1", "BatchNormalizationV2")
INPUT_CLASS = "InputLayer"
FRAMEWORKS = ("tf_keras", "keras")


def framework_label(framework: str) -> str:
    """How messages name a framework: ``"tf_keras"`` or ``"Keras 3"``."""
    return "Keras 3" if framework == "keras" else framework
#: ``module`` of the framework-neutral ops passes create (each builder renders them natively)
OPS_MODULE = "bnrewrite.ops"


@dataclass(frozen=True)
class TensorRef:
    """Placeholder in a call's args/kwargs for the tensor on inbound edge ``port``."""

    port: int


@dataclass
class Layer:
    """A layer definition, shared by all of its calls."""

    name: str
    class_name: str
    config: dict
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    #: Keras 3 serialization ``module``/``registered_name`` when the file had them.
    module: str | None = None
    registered_name: str | None = None
    #: ``(enclosing models, name)`` of this layer in the original file, for the reference model
    origin: tuple | None = None
    #: a subclass of BatchNormalization (a custom class the user provided) -- or, for a wrapper,
    #: wrapping one: BN math, BN weights
    bn_subclass: bool = False

    @property
    def inner(self) -> dict | None:
        """The innermost wrapped layer's ``{"class_name", "config"}`` for wrappers
        like TimeDistributed (through nested wrappers), else None."""
        chain = self.wrapped_configs()
        return chain[-1] if chain else None

    def wrapped_configs(self) -> list[dict]:
        """The wrapped layers' ``{"class_name", "config"}``, outermost first."""
        chain, cfg = [], self.config
        while isinstance(cfg.get("layer"), dict) and "class_name" in cfg["layer"]:
            chain.append(cfg["layer"])
            cfg = cfg["layer"].get("config") or {}
        return chain

    def is_bn(self) -> bool:
        return self.class_name in BN_CLASSES or (self.bn_subclass and self.inner is None)

    def wraps_bn(self) -> bool:
        inner = self.inner
        return inner is not None and (inner.get("class_name") in BN_CLASSES or self.bn_subclass)

    def wrapped_model_bns(self) -> list[str]:
        """Names of the BN layers inside a model this layer wraps (``TimeDistributed(Sequential
        [..., BatchNormalization, ...])``, any depth): they run, but are not graph nodes, so no pass
        folds or calibrates them (unless ``unwrap_timedistributed`` inlines the model)."""
        return [c.get("name", "?") for c in self.wrapped_model_bn_configs()]

    def wrapped_model_bn_configs(self) -> list[dict]:
        """The configs of those BN layers (live references into this layer's config)."""
        return _model_bns(self.config.get("layer"), inside_model=False) if self.wrapped_configs() else []

    def bn_config(self) -> dict:
        """The BN's own config (the innermost wrapped one for a wrapper around a BN)."""
        return self.config if self.is_bn() else (self.inner or {}).get("config", {})


def _model_bns(entry, inside_model: bool) -> list[dict]:
    """BN configs in a serialized layer ``{"class_name", "config"}`` once inside a nested model."""
    if not isinstance(entry, dict) or "class_name" not in entry:
        return []
    cls, cfg = entry["class_name"], entry.get("config")
    if cls in BN_CLASSES:
        return [cfg if isinstance(cfg, dict) else {}] if inside_model else []
    if cls in MODEL_CLASSES:
        layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers") or []
        return [c for lay in layers for c in _model_bns(lay, True)]
    if isinstance(cfg, dict):
        return [c for k in ("layer", "backward_layer") for c in _model_bns(cfg.get(k), inside_model)]
    return []


def bn_axis(config: dict) -> int | list:
    """A BN config's axis as an int; tf.keras saves it as a one-element list (``[3]``).
    Several axes are returned as a list."""
    axis = config.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        return int(axis[0]) if len(axis) == 1 else [int(a) for a in axis]
    return int(axis)


def reshape_op(name: str, newshape: list) -> Layer:
    """A framework-neutral reshape of the whole tensor, batch axis included (``-1`` once):
    Keras 3 builds it as ``keras.ops.reshape``, tf_keras as ``tf.reshape`` (a TFOpLambda);
    both save and reload without custom code."""
    return Layer(name, "Reshape", {"name": name, "newshape": [int(d) for d in newshape]},
                 module=OPS_MODULE, registered_name="Reshape")


def reshape_like_op(name: str, lead: int, shape: list) -> Layer:
    """Reshape ``x`` to the first ``lead`` dimensions of a second tensor ``like``, read at run
    time, followed by ``shape``: the reshape back of an unwrapped TimeDistributed whose time
    length is open (``(B*T, *e) -> (B, T, *e)`` with B and T both dynamic). Only the Keras 3
    builder renders it (an internal layer), and only for ONNX output: a Keras file could not
    store it without custom code."""
    return Layer(name, "ReshapeLike", {"name": name, "lead": int(lead), "shape": [int(d) for d in shape]},
                 module=OPS_MODULE, registered_name="ReshapeLike")


def is_op(layer: Layer) -> bool:
    return layer.module == OPS_MODULE


def node_id(layer_name: str, call: int) -> str:
    return layer_name if call == 0 else f"{layer_name}#{call}"


def map_refs(struct: Any, fn) -> Any:
    """Rebuild a nested list/tuple/dict structure with every TensorRef replaced by fn(ref)."""
    if isinstance(struct, TensorRef):
        return fn(struct)
    if isinstance(struct, list):
        return [map_refs(s, fn) for s in struct]
    if isinstance(struct, tuple):
        return tuple(map_refs(s, fn) for s in struct)
    if isinstance(struct, dict):
        return {k: map_refs(v, fn) for k, v in struct.items()}
    return struct


def iter_refs(struct: Any) -> Iterator[TensorRef]:
    if isinstance(struct, TensorRef):
        yield struct
    elif isinstance(struct, (list, tuple)):
        for s in struct:
            yield from iter_refs(s)
    elif isinstance(struct, dict):
        for v in struct.values():
            yield from iter_refs(v)


class ModelGraph:
    """A Keras model as a networkx graph of layer calls (see the module docstring)."""

    def __init__(self, name: str = "model", source: dict | None = None, framework: str = "keras"):
        if framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {framework!r}")
        self.graph = nx.MultiDiGraph()
        #: which framework rebuilds this graph: ``"tf_keras"`` or ``"keras"`` (Keras 3)
        self.framework = framework
        #: how to rebuild the original model for verification (set by the readers)
        self.original = None
        self.inputs: list[str] = []
        self.outputs: list[tuple[str, int]] = []
        #: the keys when the model takes / returns a dict (``inputs``/``outputs`` are then in sorted key
        #: order, as both frameworks flatten a dict), else None
        self.input_keys: list[str] | None = None
        self.output_keys: list[str] | None = None
        self.name = name
        #: what was read: path, format, keras_version, backend
        self.source: dict = dict(source or {})
        self._order = 0.0
        self._ncalls: dict[str, int] = {}  # calls per layer name, so adding a call is O(1)

    # ----------------------------------------------------------- building
    def add_call(
        self,
        layer: Layer,
        inputs: list[tuple[str, int]],
        *,
        args: list | None = None,
        kwargs: dict | None = None,
        path: tuple[str, ...] = (),
        node: str | None = None,
    ) -> str:
        """Add a call of ``layer`` on ``inputs`` (``(node, out)`` pairs, by port).

        Without ``args``, a single input is passed as ``layer(x)`` and several
        as ``layer([x0, x1, ...])``, as Keras 2 serialized them.
        """
        if args is None:
            refs = [TensorRef(i) for i in range(len(inputs))]
            args = [] if not refs else [refs[0]] if len(refs) == 1 else [refs]
        call = self._ncalls.get(layer.name, 0)
        self._ncalls[layer.name] = call + 1
        nid = node or node_id(layer.name, call)
        if nid in self.graph:
            raise ValueError(f"duplicate node id {nid!r}")
        self._order += 1.0
        self.graph.add_node(
            nid, layer=layer, call=call, args=args, kwargs=dict(kwargs or {}),
            path=tuple(path), order=self._order,
        )
        for port, (src, out) in enumerate(inputs):
            if src not in self.graph:
                raise ValueError(f"{nid!r} consumes unknown node {src!r}")
            self.graph.add_edge(src, nid, out=out, port=port)
        return nid

    def add_input(self, layer: Layer) -> str:
        nid = self.add_call(layer, [], args=[])
        self.inputs.append(nid)
        return nid

    # ----------------------------------------------------------- queries
    def layer(self, node: str) -> Layer:
        return self.graph.nodes[node]["layer"]

    def topo(self) -> list[str]:
        """Nodes in a deterministic topological order (creation order breaks ties)."""
        g = self.graph
        return list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"]))

    def inbound(self, node: str) -> list[tuple[str, int]]:
        """``(producer, out)`` feeding each port of ``node``, in port order."""
        edges = sorted(self.graph.in_edges(node, data=True), key=lambda e: e[2]["port"])
        return [(u, d["out"]) for u, _, d in edges]

    def main_input(self, node: str) -> tuple[str, int] | None:
        """``(producer, out)`` of the call's first positional tensor (``x`` in ``bn(x, mask=m)``)."""
        refs = list(iter_refs(self.graph.nodes[node]["args"]))
        inbound = self.inbound(node)
        if refs and refs[0].port < len(inbound):
            return inbound[refs[0].port]
        return inbound[0] if inbound else None

    def consumers(self, node: str, out: int | None = None) -> list[tuple[str, int]]:
        """``(consumer, port)`` pairs reading ``node`` (output ``out`` if given)."""
        return [
            (v, d["port"])
            for _, v, d in self.graph.out_edges(node, data=True)
            if out is None or d["out"] == out
        ]

    def uses(self, node: str, out: int = 0) -> int:
        """How many places read tensor ``(node, out)``: consumer ports plus model outputs."""
        return len(self.consumers(node, out)) + self.outputs.count((node, out))

    def calls(self, layer_name: str) -> list[str]:
        return [n for n, d in self.graph.nodes(data=True) if d["layer"].name == layer_name]

    def wrapped_model_bns(self) -> dict[str, list[str]]:
        """Wrapper layer name -> the BN layers inside the model it wraps (:meth:`Layer.wrapped_model_bns`)."""
        return {name: bns for name, lay in self.layers().items() if (bns := lay.wrapped_model_bns())}

    def layers(self) -> dict[str, Layer]:
        """Unique layers, in topological order of their first call."""
        seen: dict[str, Layer] = {}
        for n in self.topo():
            lay = self.layer(n)
            seen.setdefault(lay.name, lay)
        return seen

    def bn_nodes(self, include_wrapped: bool = True) -> list[str]:
        """Calls of BatchNormalization layers (and of wrappers around one)."""
        return [
            n for n in self.topo()
            if self.layer(n).is_bn() or (include_wrapped and self.layer(n).wraps_bn())
        ]

    def unique_name(self, base: str) -> str:
        names = {d["layer"].name for _, d in self.graph.nodes(data=True)}
        if base not in names:
            return base
        i = 1
        while f"{base}_{i}" in names:
            i += 1
        return f"{base}_{i}"

    # ----------------------------------------------------------- editing
    def rewire(self, old: tuple[str, int], new: tuple[str, int]) -> None:
        """Make every reader of tensor ``old`` (consumers and model outputs) read ``new``."""
        src, out = old
        for _, v, k, d in list(self.graph.out_edges(src, keys=True, data=True)):
            if d["out"] == out and v != new[0]:
                self.graph.remove_edge(src, v, key=k)
                self.graph.add_edge(new[0], v, out=new[1], port=d["port"])
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove(self, node: str) -> None:
        """Remove a call that nothing reads any more."""
        if self.graph.out_degree(node) or any(o[0] == node for o in self.outputs):
            raise ValueError(f"cannot remove {node!r}: its output is still used")
        self.graph.remove_node(node)
        if node in self.inputs:
            self.inputs.remove(node)

    def insert_after(self, tensor: tuple[str, int], layer: Layer, **call) -> str:
        """Insert a single-input call of ``layer`` reading ``tensor``; its readers now read the new call."""
        readers = [(v, p) for v, p in self.consumers(*tensor[:1], out=tensor[1])]
        new = self.add_call(layer, [tensor], **call)
        for v, port in readers:
            for k, d in list(self.graph.get_edge_data(tensor[0], v).items()):
                if d["out"] == tensor[1] and d["port"] == port:
                    self.graph.remove_edge(tensor[0], v, key=k)
                    self.graph.add_edge(new, v, out=0, port=port)
        self.outputs = [(new, 0) if o == tensor else o for o in self.outputs]
        self.graph.nodes[new]["order"] = self.graph.nodes[tensor[0]]["order"] + 0.5
        return new

    def copy(self) -> "ModelGraph":
        """Deep copy: weights and configs are copied, shared layers stay shared; the record of
        the original file (:attr:`original`, read-only) is shared, not copied."""
        original, self.original = self.original, None
        try:
            new = copy.deepcopy(self)
        finally:
            self.original = original
        new.original = original
        return new

    # ----------------------------------------------------------- reporting
    def summary(self) -> dict:
        layers = self.layers()
        return {
            "name": self.name,
            "calls": self.graph.number_of_nodes(),
            "layers": len(layers),
            "inputs": [self.layer(n).name for n in self.inputs],
            "outputs": len(self.outputs),
            "batch_norm_layers": sum(1 for l in layers.values() if l.is_bn() or l.wraps_bn()),
            "parameters": int(sum(w.size for l in layers.values() for w in l.weights.values())),
        }

    def __repr__(self) -> str:
        s = self.summary()
        return f"<ModelGraph {s['name']!r}: {s['calls']} calls, {s['layers']} layers, {s['batch_norm_layers']} BN>"
