"""What both builders share: the options scope, the symbolic trace in topological
order, calling a node with its own args/kwargs, and assigning weights by key."""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from ..errors import UnsupportedModelError, root_cause
from ..graph import INPUT_CLASS, Layer, ModelGraph, framework_label, is_op, map_refs
from ..io.weights import weight_keys

# (custom_objects, unsafe) for layers rebuilt without explicit arguments
_OPTIONS: contextvars.ContextVar[tuple[dict, bool]] = contextvars.ContextVar(
    "bnrewrite_rebuild_options", default=({}, False)
)


@contextlib.contextmanager
def rebuild_options(custom_objects: dict | None = None, unsafe: bool = False):
    """Within this scope, layers are rebuilt with ``custom_objects`` and, if ``unsafe``,
    the framework's safe mode off (``Lambda`` bytecode is loaded)."""
    token = _OPTIONS.set((dict(custom_objects or {}), bool(unsafe)))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def effective_options(custom_objects: dict | None, unsafe: bool | None) -> tuple[dict, bool]:
    """``(custom_objects, unsafe)``: explicit arguments over the :func:`rebuild_options` scope."""
    scoped_objects, scoped_unsafe = _OPTIONS.get()
    objects = {**scoped_objects, **(custom_objects or {})}
    return objects, scoped_unsafe if unsafe is None else unsafe


def lambda_error(layer: Layer, e: BaseException, framework: str) -> UnsupportedModelError:
    """A rebuild failure, with the Python-version cause spelled out for Lambda bytecode
    (marshal is specific to the Python minor version that wrote it)."""
    import sys

    if layer.class_name == "Lambda" and _is_marshal_error(e):
        return UnsupportedModelError(
            f"layer {layer.name!r} (Lambda): its Python bytecode cannot be loaded by Python "
            f"{sys.version_info.major}.{sys.version_info.minor} ({root_cause(e)}); it was "
            "probably saved by another Python version: re-save the model with this Python "
            "version, or replace the Lambda by a custom layer (--custom-objects)"
        )
    return UnsupportedModelError(
        f"layer {layer.name!r} ({layer.class_name}) cannot be rebuilt in {framework}: {root_cause(e)}")


def _is_marshal_error(e: BaseException) -> bool:
    """marshal/base64 failures of ``func_load`` (bytecode from another Python version)."""
    while e is not None:
        if isinstance(e, (EOFError, TypeError, ValueError)) and (
            "marshal" in str(e) or "code object" in str(e) or isinstance(e, EOFError)
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


def check_custom_framework(layer: Layer, cls, framework: str) -> None:
    """A user class must belong to the framework that rebuilds the graph: a Keras 3 layer
    inside a tf_keras model (or the reverse) would compute something else."""
    mods = [c.__module__.split(".")[0] for c in getattr(cls, "__mro__", ())]
    other = {"tf_keras": "keras", "keras": "tf_keras"}[framework]
    if other in mods and framework not in mods:
        written = {"tf_keras": "tf.keras / Keras 2 (rebuilt by tf_keras)", "keras": "Keras 3"}[framework]
        raise UnsupportedModelError(
            f"layer {layer.name!r}: custom class {cls.__name__} is a {'Keras 3' if other == 'keras' else 'tf_keras'} "
            f"layer, but this model was written by {written}; give a {framework} version of it in --custom-objects"
        )


class Builder:
    """One framework's way of turning graph layers into live layers and tensors."""

    framework = ""

    # ------------------------------------------------------------ framework hooks
    def make_layer(self, layer: Layer, custom_objects: dict | None = None, unsafe: bool | None = None):
        raise NotImplementedError

    def make_op(self, layer: Layer):
        """A callable for a framework-neutral op (:func:`bnrewrite.graph.reshape_op`)."""
        raise NotImplementedError

    def input(self, layer: Layer):
        raise NotImplementedError

    def flatten(self, result) -> list:
        raise NotImplementedError

    def model(self, inputs, outputs, name):
        raise NotImplementedError

    def variables(self, klayer) -> list:
        """``(relative name, variable)`` of a live layer, in creation order."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared
    def build_model(self, mg: ModelGraph, custom_objects: dict | None = None):
        tensors, _ = self.build_live(mg, custom_objects)
        inputs, outputs = [tensors[(n, 0)] for n in mg.inputs], [tensors[o] for o in mg.outputs]
        if mg.input_keys is not None and len(mg.input_keys) == len(inputs):
            inputs = dict(zip(mg.input_keys, inputs))
        if mg.output_keys is not None and len(mg.output_keys) == len(outputs):
            outputs = dict(zip(mg.output_keys, outputs))
        return self.model(inputs, outputs, mg.name)

    def build_live(self, mg: ModelGraph, custom_objects: dict | None = None):
        """Live layers of ``mg`` with their weights set, and the symbolic tensor of every
        ``(node, out)``: ``(tensors, {layer name: live layer})``."""
        tensors, live = self.trace(mg, custom_objects)
        first: dict[str, str] = {}
        for node in mg.topo():
            first.setdefault(mg.layer(node).name, node)
        for name, klayer in live.items():
            if not is_op(mg.layer(first[name])):
                self.assign_weights(klayer, mg.layer(first[name]))
        return tensors, live

    def infer_shapes(self, mg: ModelGraph, custom_objects: dict | None = None) -> dict:
        tensors, _ = self.trace(mg, custom_objects)
        return static_shapes(tensors)

    def trace(self, mg: ModelGraph, custom_objects=None):
        """:meth:`_trace` within the variable budget of the graph's stored weights
        (:mod:`bnrewrite.io.budget`): layers allocate their variables while they are traced."""
        from ..io.budget import graph_budget

        with graph_budget(mg, self.framework):
            return self._trace(mg, custom_objects)

    def _trace(self, mg: ModelGraph, custom_objects=None):
        """Call every layer on symbolic tensors in topological order."""
        tensors: dict[tuple[str, int], object] = {}
        live: dict[str, object] = {}
        for node in mg.topo():
            layer: Layer = mg.layer(node)
            if layer.class_name == INPUT_CLASS:
                tensors[(node, 0)] = self.input(layer)
                continue
            _check_unroll(layer, [tensors.get(i) for i in mg.inbound(node)])
            if layer.name not in live:
                live[layer.name] = self.make_op(layer) if is_op(layer) else self.make_layer(layer, custom_objects)
            try:
                self.call_node(mg, node, live[layer.name], tensors)
            except UnsupportedModelError:
                raise
            except Exception as e:
                shapes = [tuple(getattr(tensors.get(i), "shape", ()) or ()) for i in mg.inbound(node)]
                hint = ""
                if (layer.is_bn() or layer.wraps_bn()) and layer.bn_config().get("virtual_batch_size"):
                    # tf.keras's get_config writes the axis build() shifted for the virtual batch dimension
                    hint = ("; with virtual_batch_size set, tf.keras saves the BN's axis shifted by one, so it "
                            "cannot load this file either: re-save the model with virtual_batch_size=None "
                            "(it changes training only)")
                raise UnsupportedModelError(
                    f"layer {layer.name!r} ({layer.class_name}) failed when called in {self.label} on "
                    f"input shape{'s' if len(shapes) != 1 else ''} {', '.join(map(str, shapes))}: {root_cause(e)}"
                    + hint
                ) from e
        return tensors, live

    @property
    def label(self) -> str:
        return framework_label(self.framework)

    def call_node(self, mg: ModelGraph, node: str, fn, tensors: dict) -> None:
        """Call ``fn`` with the node's args/kwargs, reading its inputs from ``tensors`` and
        storing its outputs there as ``(node, out)``."""
        data = mg.graph.nodes[node]
        by_port = {p: tensors[(src, out)] for p, (src, out) in enumerate(mg.inbound(node))}
        args = map_refs(data["args"], lambda r: by_port[r.port])
        kwargs = map_refs(data["kwargs"], lambda r: by_port[r.port])
        result = fn(*args, **kwargs)
        for i, t in enumerate(self.flatten(result)):
            tensors[(node, i)] = t

    def assign_weights(self, klayer, layer: Layer) -> None:
        """Set the live layer's variables from ``layer.weights``: by key, or by position when
        the keys differ but the layout (count and shapes) is the same, as the frameworks'
        own HDF5 loaders do."""
        named = self.variables(klayer)
        variables = [v for _, v in named]
        if not variables and not layer.weights:
            return
        want = weight_keys([n for n, _ in named])
        if set(want) == set(layer.weights) and len(want) == len(layer.weights):
            values = [layer.weights[k] for k in want]
        elif len(want) == len(layer.weights) and all(
            tuple(v.shape) == np.shape(b) for v, b in zip(variables, layer.weights.values())
        ):
            values = list(layer.weights.values())
        else:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({layer.class_name}): file has weights "
                f"{ {k: np.shape(v) for k, v in layer.weights.items()} }, {self.label} expects "
                f"{ {k: tuple(v.shape) for k, v in zip(want, variables)} }"
            )
        for v, value, k in zip(variables, values, want):
            if tuple(np.shape(value)) != tuple(v.shape):
                raise UnsupportedModelError(
                    f"layer {layer.name!r}: weight {k} has shape {np.shape(value)}, {self.label} expects "
                    f"{tuple(v.shape)}"
                )
            with np.errstate(over="ignore"):  # an overflow is refused just below, by name
                cast = np.asarray(value).astype(numpy_dtype(v.dtype))
            if cast.dtype.kind == "f" and not np.isfinite(cast).all() and np.isfinite(np.asarray(value)).all():
                raise UnsupportedModelError(
                    f"layer {layer.name!r}: weight {k} holds values beyond the range of the layer's "
                    f"{cast.dtype} (stored as {np.asarray(value).dtype}): they would become inf",
                    code="NONFINITE_STATS" if layer.is_bn() else None)
            v.assign(cast)


def static_shapes(tensors: dict) -> dict:
    """``{(node, out): static shape}`` of traced symbolic tensors (batch and unknown dims are None)."""
    return {k: tuple(None if d is None else int(d) for d in t.shape) for k, t in tensors.items()}


#: time steps an ``unroll=True`` recurrent layer may have: tracing (and the export) copies the cell once
#: per step, in time that grows faster than the steps (2000 steps: 4 minutes)
MAX_UNROLL = 1024


def _check_unroll(layer: Layer, inputs: list) -> None:
    cfgs = [layer.config, *(w.get("config") or {} for w in layer.wrapped_configs())]
    if not any(isinstance(c, dict) and c.get("unroll") for c in cfgs) or not inputs or inputs[0] is None:
        return
    shape = list(getattr(inputs[0], "shape", ()) or ())
    steps = shape[1] if len(shape) > 1 else None
    if steps is not None and int(steps) > MAX_UNROLL:
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({layer.class_name}) is unrolled (unroll=True) over {int(steps):,} time steps, "
            f"more than the {MAX_UNROLL:,} bnrewrite traces: each step is a copy of the cell; re-save the model "
            "with unroll=False")


def numpy_dtype(dtype):
    """The numpy dtype of a tf_keras (``tf.DType``) or Keras 3 (string) variable or tensor."""
    return getattr(dtype, "as_numpy_dtype", None) or np.dtype(str(dtype))


def module_class(module: str, name: str, base: type):
    """Class ``name`` of the framework module ``module`` if it is a ``base`` (a Keras op, an APP_LAYERS
    entry), else None."""
    import importlib

    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, base) else None
