"""Keras 3 model -> ONNX through tf2onnx.

The input signature is explicit: one ``tf.TensorSpec`` per model input, named
after the Keras input, with a dynamic (``None``) batch dimension, so the ONNX
file takes any batch size. Other dimensions keep what the model declares.

tf2onnx does not fail on a TensorFlow op it has no ONNX mapping for: it logs
an error and leaves the op in the graph, so the file is written and only
onnxruntime notices. :func:`to_onnx` listens to tf2onnx's log instead and
refuses such a model (exit 2), naming the Keras layer the op came from (TF
node names carry the layer's name scope; for Keras ops outside any layer
scope, the nearest upstream layer).

Grouped convolutions: TensorFlow's CPU kernels lack them, so Keras runs them
(and Keras 3 a channels_first ``Conv3D``) in a function compiled with XLA, which
tf2onnx cannot export. While tf2onnx traces the model, those layers call
TensorFlow's plain convolution op instead (:func:`_plain_convolutions`): the
trace is only converted, never run, and tf2onnx maps the op to an ONNX ``Conv``
with its ``group``. Keras 3's ``Conv1D`` computes its convolution in its own
``call``; while tracing, that call is replaced by the same steps (causal padding,
bias, activation) around the plain op. The written file is verified against the
original like any other.

``Erfc``: TensorFlow's exact GELU (``tf.nn.gelu(approximate=False)``, Keras 3's default ``gelu``:
ConvNeXt, ViTs) is ``0.5 x erfc(-x/√2)``; ONNX has ``Erf`` but no ``Erfc`` and tf2onnx maps none, so
it is written as ``1 - Erf(x)`` (:func:`_erfc`), exact in real arithmetic; in float32 an ``erfc``
value below ~6e-8 becomes 0 (an absolute error of that size), and the export is verified as usual.

Transposed convolutions whose output is longer than the full transposed convolution (Keras's
``output_padding`` with ``padding='valid'``): TensorFlow computes ``Conv2DBackpropInput`` for that
output length, where the extra trailing positions receive no gradient and so hold 0 (+ bias). tf2onnx
writes them as negative ``pads``, which ONNX forbids (onnxruntime refuses the file; tf2onnx alone fails
too). Per spatial axis with ``t = pad_begin + pad_end < 0``, :func:`_conv_transpose_pads` writes
``pads = 0, 0`` and ``output_padding += -t``: ONNX's output padding appends exactly those positions at
the end.
"""

from __future__ import annotations

import contextlib
import logging
import re

from ..errors import UnsupportedModelError, scope_layer

DEFAULT_OPSET = 17


def tf2onnx_max_opset() -> tuple[int, str]:
    """``(highest opset, version)`` of the installed tf2onnx, without importing it (its package
    import loads TensorFlow): its ``constants`` module, read on its own. ``MAX_OPSET`` where tf2onnx
    defines it, else the highest key of ``OPSET_TO_IR_VERSION`` (18 for tf2onnx 1.17)."""
    import importlib.util
    from importlib import metadata
    from pathlib import Path

    try:
        version = metadata.version("tf2onnx")
    except metadata.PackageNotFoundError:
        version = "?"
    spec = importlib.util.find_spec("tf2onnx")
    if spec is None or not spec.submodule_search_locations:
        return DEFAULT_OPSET, version
    path = Path(list(spec.submodule_search_locations)[0]) / "constants.py"
    cspec = importlib.util.spec_from_file_location("_bnrewrite_tf2onnx_constants", path)
    mod = importlib.util.module_from_spec(cspec)
    cspec.loader.exec_module(mod)
    top = getattr(mod, "MAX_OPSET", None) or max(getattr(mod, "OPSET_TO_IR_VERSION", {DEFAULT_OPSET: 0}))
    return int(top), version


def input_signature(model):
    import tensorflow as tf

    specs = []
    for t in model.inputs:
        shape = [None, *list(t.shape)[1:]]
        name = t.name.split(":")[0]
        specs.append(tf.TensorSpec(shape, tf.as_dtype(t.dtype), name=name))
    return tuple(specs)


class _Capture(logging.Handler):
    """Collects tf2onnx's per-node errors: unsupported ops and nodes that failed to convert."""

    UNSUPPORTED = re.compile(r"Tensorflow op \[(?P<node>.+?): (?P<op>[^\]]+)\] is not supported")
    FAILED = re.compile(r"Failed to convert node '?(?P<node>[^'\s]+)'?")

    def __init__(self):
        super().__init__(logging.ERROR)
        self.unsupported: list[tuple[str, str]] = []
        self.failed: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if m := self.UNSUPPORTED.search(msg):
            self.unsupported.append((m["node"], m["op"]))
        elif m := self.FAILED.search(msg):
            self.failed.append(m["node"])


def to_onnx(model, opset: int = DEFAULT_OPSET, metadata: dict | None = None, transpose_optimizer: bool = True):
    """Return an ``onnx.ModelProto`` for ``model``; raise :class:`UnsupportedModelError`
    naming the layer when tf2onnx cannot export part of it.

    The proto is normalized (:func:`normalize`): the same model and options give the same
    bytes, every input and output has the symbolic batch dimension ``batch``, and
    ``metadata_props`` holds bnrewrite's version plus ``metadata`` (:func:`onnx_metadata`).
    ``transpose_optimizer=False`` runs tf2onnx's graph optimizers without ``optimize_transpose``
    (the fallback when its layout rewrite produced a graph that verification rejects)."""
    top, version = tf2onnx_max_opset()
    if not 9 <= int(opset) <= top:
        raise UnsupportedModelError(f"opset {opset} is not one tf2onnx {version} exports (9..{top})")
    _check_compute_dtypes(model)
    proto = _export(model, opset, transpose_optimizer)
    return normalize(proto, metadata)


def _check_compute_dtypes(model) -> None:
    """Refuse bfloat16 computation (``mixed_bfloat16`` policies) before exporting: tf2onnx writes the
    ops in bfloat16, which onnxruntime's CPU kernels (Conv, MatMul, ...) do not run, so the file
    could never be loaded, let alone verified."""
    walk = getattr(model, "_flatten_layers", None)
    layers = list(walk(include_self=False, recursive=True)) if walk else list(model.layers)
    bf16 = [lay.name for lay in layers if str(getattr(lay, "compute_dtype", "")) == "bfloat16"]
    if bf16:
        raise UnsupportedModelError(
            f"{len(bf16)} layer(s) compute in bfloat16 (e.g. {bf16[0]!r}: a mixed_bfloat16 dtype policy), which "
            "onnxruntime's CPU kernels do not run; write .keras or .h5, or re-save the model with a float32 or "
            "mixed_float16 policy")


def _export(model, opset: int, transpose_optimizer: bool = True):
    import tf2onnx
    from tf2onnx.optimizer import _get_optimizers

    optimizers = None if transpose_optimizer else {
        k: v for k, v in _get_optimizers().items() if k != "optimize_transpose"}

    log = logging.getLogger("tf2onnx")
    log.setLevel(logging.ERROR)
    capture, propagate = _Capture(), log.propagate
    log.addHandler(capture)
    log.propagate = False  # its errors become one message below, not lines on stderr
    try:
        with _plain_convolutions(model):
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=input_signature(model), opset=opset,
                                                  custom_op_handlers={"Erfc": (_erfc, [])}, optimizers=optimizers)
    except Exception as e:
        where = _where(model, None, capture.failed[0]) if capture.failed else ""
        raise UnsupportedModelError(f"tf2onnx could not export the model{where}: {_describe(e)}") from e
    finally:
        log.removeHandler(capture)
        log.propagate = propagate
    _conv_transpose_pads(proto.graph)
    if capture.unsupported:
        node, op = capture.unsupported[0]
        more = len({o for _, o in capture.unsupported}) - 1
        raise UnsupportedModelError(
            f"tf2onnx cannot export{_where(model, proto, node)}: TensorFlow op {op} (node {node}) has no "
            f"ONNX conversion at opset {opset}" + (f" ({more} more unsupported op types)" if more > 0 else "")
        )
    return proto


def _conv_transpose_pads(graph) -> int:
    """Rewrite ``ConvTranspose`` nodes with negative ``pads`` as explained in the module docstring,
    in place (subgraphs included); returns how many nodes changed."""
    from onnx import AttributeProto, helper

    changed = 0
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else
                        a.graphs if a.type == AttributeProto.GRAPHS else []):
                changed += _conv_transpose_pads(sub)
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "ConvTranspose" or "pads" not in attrs or min(attrs["pads"].ints, default=0) >= 0:
            continue
        pads = list(attrs["pads"].ints)
        k = len(pads) // 2
        extra = list(attrs["output_padding"].ints) if "output_padding" in attrs else [0] * k
        for i in range(k):
            total = pads[i] + pads[i + k]
            if total < 0:
                pads[i] = pads[i + k] = 0
                extra[i] -= total
        if min(pads) < 0:  # a negative begin with a non-negative total: not TensorFlow's layout; left to verification
            continue
        attrs["pads"].ints[:] = pads
        if "output_padding" in attrs:
            attrs["output_padding"].ints[:] = extra
        else:
            node.attribute.append(helper.make_attribute("output_padding", extra))
        changed += 1
    return changed


def _erfc(ctx, node, name, args):
    """tf2onnx handler (its ``custom_op_handlers`` form): TF ``Erfc(x)`` -> ONNX ``1 - Erf(x)``."""
    import numpy as np
    from onnx import helper
    from tf2onnx import utils

    node.type = "Erf"
    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype)).output[0]
    ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{name}_one_minus"),
                                  inputs=[one, node.output[0]])


def _plain_conv_op(layer):
    """``(attribute, replacement)`` that makes ``layer`` trace a plain TF convolution, or None when
    it already does (or is not a convolution this knows)."""
    if getattr(layer, "_jit_compiled_convolution_op", None) is not None:  # tf_keras: XLA for groups > 1
        return ("_jit_compiled_convolution_op", layer.convolution_op) if getattr(layer, "groups", 1) > 1 else None
    try:
        from keras.src.layers.convolutional.base_conv import BaseConv
        from keras.src.layers.convolutional.conv1d import Conv1D
    except ImportError:
        return None
    if not isinstance(layer, BaseConv) or type(layer).call not in (BaseConv.call, Conv1D.call):
        return None  # e.g. the transposed convolutions call ops.conv themselves
    first = layer.data_format == "channels_first"
    if not (layer.groups > 1 or (first and layer.rank == 3)):  # Keras 3's test for its XLA path
        return None
    spatial = "DHW"[3 - layer.rank:] if layer.rank > 1 else "W"
    fmt = f"NC{spatial}" if first else f"N{spatial}C"

    def convolution_op(inputs, kernel, padding=None):
        import tensorflow as tf

        return tf.nn.convolution(inputs, kernel, strides=list(layer.strides),
                                 padding=(padding or layer.padding).upper(), data_format=fmt,
                                 dilations=list(layer.dilation_rate))

    if type(layer).call is BaseConv.call:
        return "convolution_op", convolution_op

    def conv1d_call(inputs):
        # Conv1D.call, line for line, with the plain op in place of ops.conv (which takes XLA here)
        from keras import ops

        padding = layer.padding
        if padding == "causal":
            inputs, padding = ops.pad(inputs, layer._compute_causal_padding()), "valid"
        outputs = convolution_op(inputs, layer.kernel, padding)
        if layer.use_bias:
            shape = (1, 1, layer.filters) if not first else (1, layer.filters, 1)
            outputs = ops.add(outputs, ops.reshape(layer.bias, shape))
        return layer.activation(outputs) if layer.activation is not None else outputs

    return "call", conv1d_call


@contextlib.contextmanager
def _plain_convolutions(model):
    """While tf2onnx traces ``model``: its XLA-compiled convolutions call the plain TF op (module docstring).
    Set on the layer instances and removed afterwards, so nothing else ever runs them."""
    patched = []
    try:
        for layer in model._flatten_layers(include_self=False, recursive=True):
            plain = _plain_conv_op(layer)
            if plain is not None:
                object.__setattr__(layer, plain[0], plain[1])  # past Keras's attribute tracking
                patched.append((layer, plain[0]))
        yield
    finally:
        for layer, name in patched:
            layer.__dict__.pop(name, None)  # the class's own method again


def _layer_of(model, node_name: str):
    """The Keras layer whose name scope holds TF node ``node_name`` (``model/disc_1/Bucketize``)."""
    layers = {l.name: l for l in model.layers if l.name != model.name}
    name = scope_layer(node_name, layers)
    return None if name is None else layers[name]


def _where(model, proto, node_name: str) -> str:
    """' layer 'x' (Class)' for a TF node, else the nearest upstream layer's name."""
    layer = _layer_of(model, node_name)
    if layer is not None:
        groups = getattr(layer, "groups", 1)
        kind = f", a grouped convolution (groups={groups}), which tf2onnx does not export" \
            if isinstance(groups, int) and groups > 1 else ""
        return f" layer {layer.name!r} ({type(layer).__name__}{kind})"
    if proto is not None:  # a Keras op outside a layer scope: walk up to a producer that has one
        producer = {out: n for n in proto.graph.node for out in n.output}
        by_name = {n.name: n for n in proto.graph.node}
        todo, seen = [by_name.get(node_name)], set()
        while todo:
            n = todo.pop(0)
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            up = _layer_of(model, n.name) if n.name != node_name else None
            if up is not None:
                return f" the op after layer {up.name!r} ({type(up).__name__})"
            todo.extend(producer.get(i) for i in n.input)
    return f" node {node_name!r}"


def _describe(e: BaseException) -> str:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    # tf2onnx names the unsupported TF op; keep the line that does.
    for l in lines:
        if "op" in l.lower() and ("unsupported" in l.lower() or "not supported" in l.lower()):
            return l.strip()[:300]
    return (lines[0] if lines else type(e).__name__)[:300]


# ---------------------------------------------------------------- deterministic, self-describing output
BATCH_DIM = "batch"
_COUNTER = re.compile(r"__\d+")


def onnx_metadata(rep) -> dict:
    """``metadata_props`` for a conversion: the source file's sha256 and the passes applied (name and
    number of layers changed, in order), from a :class:`~bnrewrite.convert.ConvertReport` (or a dict)."""
    import json

    from .safe_files import sha256_file

    d = rep if isinstance(rep, dict) else {"input": rep.input, "passes": rep.passes}
    src = (d.get("input") or {}).get("path")
    out = {"bnrewrite.passes": json.dumps([{"name": p["name"], "changed": len(p.get("changed", []))}
                                           for p in d.get("passes") or []], separators=(",", ":"))}
    sha = (d.get("input") or {}).get("sha256") or (sha256_file(src) if src else None)
    if sha:
        out["bnrewrite.source_sha256"] = sha
    return out


def normalize(proto, metadata: dict | None = None):
    """Make tf2onnx's output a function of the model alone, in place; returns ``proto``.

    tf2onnx numbers the names it invents (``Conv__19``, ``const_fold_opt__21``, the symbolic
    dimension ``unk__24``) with a counter that lives as long as the process: the second export of
    the same model in one process gets other names, hence other bytes. Every such name is
    renumbered in order of first appearance (graph inputs and outputs keep their names); the
    first dimension of every input and output becomes the one named dimension ``batch``; doc
    strings are cleared; ``metadata_props`` are bnrewrite's version and ``metadata``, sorted."""
    from importlib import metadata as md

    import onnx

    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep or not _COUNTER.search(name):
            return name
        if name not in names:
            n = len(names) + 1
            names[name] = _COUNTER.sub(f"__{n}", name)
        return names[name]

    # the batch dimension: the first dimension of every graph input and output
    dims: dict[str, str] = {}
    for v in [*graph.input, *graph.output]:
        shape = v.type.tensor_type.shape if v.type.HasField("tensor_type") else None
        if shape is None or not len(shape.dim):
            continue
        d0 = shape.dim[0]
        if d0.HasField("dim_value"):
            continue
        if d0.dim_param:
            dims[d0.dim_param] = BATCH_DIM
        d0.dim_param = BATCH_DIM

    def fix_value_info(v):
        v.doc_string = ""
        v.name = rename(v.name)
        if v.type.HasField("tensor_type"):
            for d in v.type.tensor_type.shape.dim:
                if d.dim_param:
                    d.dim_param = dims.get(d.dim_param) or rename(d.dim_param)

    def walk(g):
        g.doc_string = ""
        for v in [*g.input, *g.output, *g.value_info]:
            fix_value_info(v)
        for t in g.initializer:
            t.name = rename(t.name)
            t.doc_string = ""
        for n in g.node:
            n.name = rename(n.name)
            n.doc_string = ""
            n.input[:] = [rename(i) for i in n.input]
            n.output[:] = [rename(o) for o in n.output]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        walk(sub)

    walk(graph)
    # Initializers: tf2onnx merges identical constants (a shared layer's weights read twice) and keeps
    # the name of whichever copy it met first, which varies within a process. Each one is named after
    # its first reader instead (node order is deterministic), and the list is sorted.
    first: dict[str, str] = {}
    for n in graph.node:
        for slot, i in enumerate(n.input):
            first.setdefault(i, f"{n.name}/const{slot}")
    inits = {t.name: (first.get(t.name, t.name) if t.name not in keep else t.name) for t in graph.initializer}
    taken = set(inits.values())
    if len(taken) == len(inits) and not taken & {o for n in graph.node for o in n.output}:
        def reinit(g):
            for n in g.node:
                n.input[:] = [inits.get(i, i) for i in n.input]
                for a in n.attribute:
                    for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                                a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
                        reinit(sub)
            for v in g.value_info:
                v.name = inits.get(v.name, v.name)

        reinit(graph)
        for t in graph.initializer:
            t.name = inits[t.name]
        ordered = sorted(graph.initializer, key=lambda t: t.name)
        copies = [onnx.TensorProto() for _ in ordered]
        for c, t in zip(copies, ordered):
            c.CopyFrom(t)
        del graph.initializer[:]
        graph.initializer.extend(copies)
    proto.doc_string = ""
    try:
        version = md.version("bnrewrite")
    except md.PackageNotFoundError:
        version = "unknown"
    props = {**{p.key: p.value for p in proto.metadata_props}, "bnrewrite.version": version,
             **{str(k): str(v) for k, v in (metadata or {}).items()}}
    del proto.metadata_props[:]
    for k in sorted(props):
        proto.metadata_props.add(key=k, value=props[k])
    return proto
