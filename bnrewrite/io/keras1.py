"""Keras 1.x ``.h5`` files: their config mapped to Keras 2 (tf_keras's dialect), their weights
converted as Keras 2 converted them. The table is in ``docs/keras1.md``.

How a Keras 1 file is recognised: ``keras_version`` "1.x" at the file's root (Keras 1.2 wrote it,
``str(keras_version)`` in ``keras/models.py: save_model``), or no ``keras_version`` at all
(Keras 1.0/1.1) with a config in the Keras 1 dialect (a Keras 1 class name such as
``Convolution2D``/``Merge``, or Keras 1 arguments such as ``output_dim``, ``nb_filter``,
``border_mode``, ``input_dtype``).

The config is mapped layer by layer as Keras 2.0's ``keras/legacy/interfaces.py`` maps Keras 1
constructor arguments (``output_dim``->``units``, ``nb_filter``/``nb_row``/``nb_col``->
``filters``/``kernel_size``, ``border_mode``->``padding``, ``subsample``->``strides``,
``init``->``kernel_initializer``, ``dim_ordering`` ``th``/``tf``->``data_format``, ...). Keras 1
regularizers and constraints are dropped (their Keras 1 configs mean nothing to Keras 2, and they
only act in training). Whatever is not in the table -- a class, an argument, a value (BN ``mode``
1/2, ``border_mode="full"``, a ``Merge`` with a Python function or ``mode="cos"``) -- is refused
with the layer's name.

Weights (Keras 1 stores them by position, named ``dense_1_W``, ``batchnormalization_1_running_std``
-- which holds the moving *variance*, used as such by Keras 1's ``K.batch_normalization``) are
converted in the order of Keras 2.0.8's ``topology.preprocess_weights_for_loading`` (tf_keras's
``hdf5_format.preprocess_weights_for_loading`` is the same without the Theano step):

1. Keras-1 layouts: ``Conv2D`` with ``channels_first``: (filters, in, rows, cols) ->
   (rows, cols, in, filters); ``Conv1D``: (filter_length, 1, in, filters) -> drop axis 1
   (Keras 1.1's (filters, in, filter_length, 1) transposed first);
2. Theano kernels (file attribute ``backend: "theano"``): Theano's convolution flips the kernel,
   TensorFlow's does not, so the spatial axes are reversed (Keras 2's ``conv_utils.convert_kernel``).
   A Keras 1 file with convolution layers and *no* ``backend`` attribute (Keras 1 never wrote one)
   is refused: whether its kernels are Theano's or TensorFlow's cannot be known from the file.

The verification reference is tf_keras's own reading of the mapped config with the file's weights
through its HDF5 loader, which applies step 1 itself (the ``model_weights`` group of a Keras 1 file
has no ``keras_version``, so tf_keras takes it as version "1"); for Theano files the kernels it is
given are flipped first, since tf_keras no longer does step 2.
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import InputError, UnsupportedModelError, with_path
from ..graph import ModelGraph

#: Keras 1 class -> Keras 2 class (same name when absent from the dict but in SAME)
RENAMED = {
    "Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "AtrousConvolution2D": "Conv2D",
}
SAME = frozenset({
    "InputLayer", "Dense", "Activation", "Dropout", "Flatten", "Reshape", "Permute", "RepeatVector",
    "BatchNormalization", "MaxPooling1D", "AveragePooling1D", "MaxPooling2D", "AveragePooling2D",
    "GlobalMaxPooling1D", "GlobalAveragePooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling2D",
    "ZeroPadding2D", "UpSampling2D", "Embedding", "LeakyReLU", "ELU", "TimeDistributed",
})
MERGE_MODES = {"sum": "Add", "mul": "Multiply", "concat": "Concatenate", "ave": "Average", "max": "Maximum",
               "dot": "Dot"}
CONV_CLASSES = ("Conv1D", "Conv2D")
#: Keras 1 initializer names -> Keras 2 classes
INITIALIZERS = {
    "uniform": "RandomUniform", "normal": "RandomNormal", "lecun_uniform": "LecunUniform",
    "glorot_uniform": "GlorotUniform", "glorot_normal": "GlorotNormal", "he_uniform": "HeUniform",
    "he_normal": "HeNormal", "orthogonal": "Orthogonal", "identity": "Identity", "zero": "Zeros", "one": "Ones",
}
DIM_ORDERING = {"th": "channels_first", "tf": "channels_last", "default": None}
#: keys every Keras 1 layer may carry, and what they become (None: dropped; training only)
COMMON = {"name": "name", "trainable": "trainable", "batch_input_shape": "batch_input_shape",
          "input_dtype": "dtype", "activity_regularizer": None}
#: per Keras 2 class: Keras 1 argument -> Keras 2 argument (None: dropped, training only)
ARGS = {
    "InputLayer": {"sparse": "sparse"},
    "Dense": {"output_dim": "units", "init": "kernel_initializer", "activation": "activation", "bias": "use_bias",
              "input_dim": "input_dim", "W_regularizer": None, "b_regularizer": None, "W_constraint": None,
              "b_constraint": None},
    "Conv2D": {"nb_filter": "filters", "nb_row": None, "nb_col": None, "subsample": "strides",
               "border_mode": "padding", "dim_ordering": "data_format", "init": "kernel_initializer",
               "activation": "activation", "bias": "use_bias", "atrous_rate": "dilation_rate",
               "W_regularizer": None, "b_regularizer": None, "W_constraint": None, "b_constraint": None},
    "Conv1D": {"nb_filter": "filters", "filter_length": None, "subsample_length": "strides",
               "border_mode": "padding", "init": "kernel_initializer", "activation": "activation",
               "bias": "use_bias", "input_dim": None, "input_length": None,
               "W_regularizer": None, "b_regularizer": None, "W_constraint": None, "b_constraint": None},
    "Activation": {"activation": "activation"},
    "Dropout": {"p": "rate"},
    "Flatten": {},
    "Reshape": {"target_shape": "target_shape"},
    "Permute": {"dims": "dims"},
    "RepeatVector": {"n": "n"},
    "BatchNormalization": {"mode": None, "axis": "axis", "epsilon": "epsilon", "momentum": "momentum",
                           "beta_init": "beta_initializer", "gamma_init": "gamma_initializer",
                           "gamma_regularizer": None, "beta_regularizer": None},
    "MaxPooling2D": {"pool_size": "pool_size", "strides": "strides", "border_mode": "padding",
                     "dim_ordering": "data_format"},
    "MaxPooling1D": {"pool_length": "pool_size", "stride": "strides", "border_mode": "padding"},
    "GlobalMaxPooling2D": {"dim_ordering": "data_format"},
    "GlobalMaxPooling1D": {},
    "ZeroPadding2D": {"padding": "padding", "dim_ordering": "data_format"},
    "UpSampling2D": {"size": "size", "dim_ordering": "data_format"},
    "Embedding": {"input_dim": "input_dim", "output_dim": "output_dim", "init": "embeddings_initializer",
                  "input_length": "input_length", "mask_zero": "mask_zero", "dropout": None,
                  "W_regularizer": None, "W_constraint": None},
    "LeakyReLU": {"alpha": "alpha"},
    "ELU": {"alpha": "alpha"},
    "TimeDistributed": {"layer": "layer"},
    "Merge": {"mode": None, "concat_axis": None, "dot_axes": None, "mode_type": None, "layers": None,
              "output_shape": None, "output_shape_type": None, "output_mask": None, "output_mask_type": None,
              "node_indices": None, "tensor_indices": None, "arguments": None},
}
ARGS["AveragePooling2D"] = ARGS["MaxPooling2D"]
ARGS["AveragePooling1D"] = ARGS["MaxPooling1D"]
ARGS["GlobalAveragePooling2D"] = ARGS["GlobalMaxPooling2D"]
ARGS["GlobalAveragePooling1D"] = ARGS["GlobalMaxPooling1D"]

_MARKER_CLASSES = frozenset(RENAMED) | {"Merge", "Convolution3D", "Deconvolution2D", "SeparableConvolution2D",
                                        "AtrousConvolution1D", "Highway", "MaxoutDense", "TimeDistributedDense"}
_MARKER_KEYS = frozenset({"nb_filter", "border_mode", "dim_ordering", "input_dtype", "subsample", "W_regularizer",
                          "init"})


def is_keras1(attrs: dict, config) -> bool:
    """Whether a ``.h5``'s root attributes and model config are Keras 1's (see module docstring)."""
    version = attrs.get("keras_version")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    if version is not None:
        return str(version).startswith("1")
    return _looks_keras1(config)


def _looks_keras1(obj) -> bool:
    if isinstance(obj, dict):
        if obj.get("class_name") in _MARKER_CLASSES:
            return True
        cfg = obj.get("config")
        if isinstance(cfg, dict) and "class_name" in obj and (
                _MARKER_KEYS & set(cfg) or (obj["class_name"] == "Dense" and "output_dim" in cfg)):
            return True
        return any(_looks_keras1(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_looks_keras1(v) for v in obj)
    return False


# ------------------------------------------------------------------ config
def translate_model(config: dict) -> dict:
    """A Keras 2 (tf_keras) model config for a Keras 1 one; UnsupportedModelError naming what does not map."""
    config = copy.deepcopy(config)
    cls = config.get("class_name")
    if cls not in ("Model", "Sequential"):
        raise UnsupportedModelError(f"the Keras 1 file holds a {cls!r}, not a Model or Sequential")
    cfg = config.get("config")
    layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers")
    if not isinstance(layers, list):
        raise InputError("Keras 1 model config has no 'layers' list")
    for i, lc in enumerate(layers):
        if cls == "Sequential" and lc.get("class_name") == "Merge":
            raise UnsupportedModelError(f"Keras 1 layer {_name(lc)!r}: a Merge of Sequential models inside a "
                                        "Sequential (Keras 2 has no equivalent; rebuild it as a functional Model)")
        layers[i] = translate_layer(lc, top=True)
    return config


def translate_layer(lc: dict, top: bool = False) -> dict:
    cls = lc.get("class_name")
    name = _name(lc)
    cfg = lc.get("config") or {}
    if cls in ("Model", "Sequential"):
        raise UnsupportedModelError(f"Keras 1 layer {name!r}: nested {cls} models in Keras 1 files are not mapped")
    if cls == "Merge":
        new_cls = _merge_class(name, cfg)
    elif cls in RENAMED:
        new_cls = RENAMED[cls]
    elif cls in SAME:
        new_cls = cls
    else:
        raise UnsupportedModelError(f"Keras 1 layer {name!r} ({cls}) has no mapping to Keras 2 in bnrewrite "
                                    "(docs/keras1.md lists what maps)", code="UNKNOWN_CLASS")
    table = ARGS["Merge" if cls == "Merge" else new_cls]
    out: dict = {}
    for k, v in cfg.items():
        if k in COMMON:
            if COMMON[k] is not None:
                out[COMMON[k]] = v
            continue
        if k not in table:
            raise UnsupportedModelError(
                f"Keras 1 layer {name!r} ({cls}): argument {k}={_short(v)} has no Keras 2 equivalent bnrewrite maps")
        if table[k] is None:
            continue
        out[table[k]] = _value(name, cls, k, v)
    if cls == "Merge":
        mode = cfg.get("mode", "sum")
        if mode == "concat":
            out["axis"] = cfg.get("concat_axis", -1)
        if mode == "dot":
            axes = cfg.get("dot_axes", -1)
            out["axes"] = axes
        if cfg.get("layers"):
            raise UnsupportedModelError(f"Keras 1 layer {name!r}: a Merge of models (layers=...) is not mapped; "
                                        "only merge() of tensors in a functional Model")
    if cls == "BatchNormalization":
        mode = cfg.get("mode", 0)
        if mode != 0:
            raise UnsupportedModelError(
                f"Keras 1 layer {name!r} (BatchNormalization): mode={mode!r} has no Keras 2 equivalent (only mode 0, "
                "feature-wise with moving statistics, maps; Keras 2 dropped modes 1 and 2)")
    if new_cls == "Conv2D":
        if "nb_row" in cfg or "nb_col" in cfg:
            out["kernel_size"] = [cfg.get("nb_row"), cfg.get("nb_col")]
    if new_cls == "Conv1D":
        out["kernel_size"] = [cfg.get("filter_length")]
        if isinstance(out.get("strides"), int):
            out["strides"] = [out["strides"]]
        if "batch_input_shape" not in out and cfg.get("input_dim") is not None:
            out["batch_input_shape"] = [None, cfg.get("input_length"), cfg["input_dim"]]
    if new_cls in ("MaxPooling1D", "AveragePooling1D"):
        for k in ("pool_size", "strides"):
            if isinstance(out.get(k), int):
                out[k] = [out[k]]
    if new_cls == "TimeDistributed":
        out["layer"] = translate_layer(cfg["layer"])
    new = {"class_name": new_cls, "config": out}
    if top:
        new["name"] = name
        new["inbound_nodes"] = lc.get("inbound_nodes", [])
    return new


def _merge_class(name, cfg) -> str:
    mode = cfg.get("mode", "sum")
    if cfg.get("mode_type", "raw") != "raw" or not isinstance(mode, str):
        raise UnsupportedModelError(f"Keras 1 layer {name!r} (Merge) merges with a Python function "
                                    "(mode_type lambda/function); refusing to run code from a model file",
                                    code="UNSAFE_LAMBDA_CODE")
    if mode not in MERGE_MODES:
        raise UnsupportedModelError(f"Keras 1 layer {name!r} (Merge): mode={mode!r} has no Keras 2 equivalent "
                                    f"bnrewrite maps (maps: {', '.join(MERGE_MODES)})")
    return MERGE_MODES[mode]


def _value(name, cls, key, v):
    if key == "border_mode":
        if v not in ("valid", "same"):
            raise UnsupportedModelError(f"Keras 1 layer {name!r} ({cls}): border_mode={v!r} has no Keras 2 equivalent")
        return v
    if key == "dim_ordering":
        if v not in DIM_ORDERING:
            raise UnsupportedModelError(f"Keras 1 layer {name!r} ({cls}): dim_ordering={v!r} is not th/tf/default")
        return DIM_ORDERING[v]
    if key in ("init", "beta_init", "gamma_init"):
        if v not in INITIALIZERS:
            raise UnsupportedModelError(f"Keras 1 layer {name!r} ({cls}): {key}={_short(v)} is not a Keras 1 "
                                        "initializer bnrewrite maps")
        return {"class_name": INITIALIZERS[v], "config": {}}
    if key == "atrous_rate":
        return list(v)
    if key == "padding" and isinstance(v, dict):  # Keras 1 ZeroPadding2D {"top_pad": ..., ...}
        if not set(v) <= {"top_pad", "bottom_pad", "left_pad", "right_pad"}:
            raise UnsupportedModelError(f"Keras 1 layer {name!r} ({cls}): padding={_short(v)} is not mapped")
        return [[v.get("top_pad", 0), v.get("bottom_pad", 0)], [v.get("left_pad", 0), v.get("right_pad", 0)]]
    return v


def _name(lc) -> str:
    return str((lc.get("config") or {}).get("name") or lc.get("name") or "?")


def _short(v) -> str:
    t = repr(v)
    return t if len(t) <= 60 else t[:57] + "..."


# ------------------------------------------------------------------ weights
def check_backend(config2: dict, backend: str | None, path) -> None:
    """Refuse conv kernels whose orientation is unknown (no backend attribute) or not Theano/TensorFlow."""
    convs = [n for n, c in _all_layers(config2) if c in CONV_CLASSES]
    if not convs:
        return
    if backend is None or backend == "":
        raise UnsupportedModelError(
            f"{path}: Keras 1 file with convolution layers ({', '.join(convs[:3])}) and no 'backend' attribute: "
            "its kernels may be Theano's (flipped) or TensorFlow's and using them as the wrong one gives wrong "
            "outputs; state which with h5py: f.attrs['backend'] = 'theano' (or 'tensorflow')")
    if backend not in ("theano", "tensorflow"):
        raise UnsupportedModelError(f"{path}: Keras 1 file written with backend {backend!r}: its convolution "
                                    "kernels' orientation is not known to bnrewrite (theano and tensorflow are)")


def _all_layers(config2):
    cfg = config2.get("config")
    layers = cfg if isinstance(cfg, list) else cfg.get("layers", [])
    for lc in layers:
        c = lc["class_name"]
        yield lc["config"].get("name", lc.get("name")), c
        if c == "TimeDistributed":
            yield lc["config"]["layer"]["config"].get("name"), lc["config"]["layer"]["class_name"]


def flip_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras 2's ``conv_utils.convert_kernel``: reverse every axis but the last two."""
    k = np.asarray(kernel)
    return np.copy(k[tuple([slice(None, None, -1)] * (k.ndim - 2) + [slice(None)] * 2)])


def convert_weights(cls2: str, cfg2: dict, arrays: list, backend: str | None, name: str) -> dict:
    """A Keras 1 layer's arrays (file order) -> Keras 2 weights keyed as tf_keras keys them."""
    arrays = [np.asarray(a) for a in arrays]
    if cls2 == "TimeDistributed":
        inner = cfg2["layer"]
        return convert_weights(inner["class_name"], inner["config"], arrays, backend, name)
    if not arrays:
        return {}

    def need(n):
        if len(arrays) != n:
            raise UnsupportedModelError(f"Keras 1 layer {name!r} ({cls2}): {len(arrays)} weights in the file, "
                                        f"expected {n}")

    if cls2 == "Dense":
        use_bias = cfg2.get("use_bias", True)
        need(2 if use_bias else 1)
        return dict(zip(("kernel", "bias"), arrays))
    if cls2 in CONV_CLASSES:
        use_bias = cfg2.get("use_bias", True)
        need(2 if use_bias else 1)
        w = arrays[0]
        filters = cfg2["filters"]
        ks = tuple(cfg2["kernel_size"])
        if cls2 == "Conv1D":
            if w.ndim != 4:
                raise UnsupportedModelError(f"Keras 1 layer {name!r} (Conv1D): kernel shape {w.shape} is not Keras 1's")
            if w.shape[:2] != (ks[0], 1) or w.shape[3] != filters:  # Keras 1.1: (filters, in, length, 1)
                if not (w.shape[0] == filters and w.shape[2:] == (ks[0], 1)):
                    raise UnsupportedModelError(f"Keras 1 layer {name!r} (Conv1D): kernel shape {w.shape} is not Keras 1's")
                w = np.transpose(w, (2, 3, 1, 0))
            w = w[:, 0, :, :]
        elif cfg2.get("data_format") == "channels_first":  # (filters, in, rows, cols) -> (rows, cols, in, filters)
            w = np.transpose(w, (2, 3, 1, 0))
        if backend == "theano":
            w = flip_kernel(w)
        if w.shape[:-2] != ks or w.shape[-1] != filters:
            raise UnsupportedModelError(f"Keras 1 layer {name!r} ({cls2}): kernel shape {arrays[0].shape} does not "
                                        f"fit filters={filters}, kernel_size={ks}")
        return dict(zip(("kernel", "bias"), [w, *arrays[1:]]))
    if cls2 == "BatchNormalization":
        need(4)  # gamma, beta, running_mean, running_std (which Keras 1 uses as the variance)
        return dict(zip(("gamma", "beta", "moving_mean", "moving_variance"), arrays))
    if cls2 == "Embedding":
        need(1)
        return {"embeddings": arrays[0]}
    raise UnsupportedModelError(f"Keras 1 layer {name!r} ({cls2}) has weights bnrewrite does not map")


def reference_raw(raw: dict, config2: dict, backend: str | None) -> dict:
    """The extractor's result for tf_keras's own loader: Keras 1 layouts kept (tf_keras converts
    them itself), Theano kernels flipped in their Keras 1 layout (tf_keras no longer does)."""
    if backend != "theano":
        return raw
    raw = dict(raw, groups=dict(raw["groups"]))
    cfg = config2.get("config")
    layers = cfg if isinstance(cfg, list) else cfg.get("layers", [])
    for lc in layers:
        c, lcfg = lc["class_name"], lc["config"]
        if c == "TimeDistributed":
            c, lcfg = lcfg["layer"]["class_name"], lcfg["layer"]["config"]
        if c not in CONV_CLASSES:
            continue
        top = lc["config"].get("name", lc.get("name"))
        grp = raw["groups"].get(top)
        if not grp or not grp["weight_names"]:
            continue
        first = grp["weight_names"][0]
        w = np.asarray(grp["data"][first])
        if c == "Conv1D":  # Keras 1 (length, 1, in, filters): the length axis; Keras 1.1 (filters, in, length, 1)
            axes = (0,) if w.shape[:2] == (tuple(lcfg["kernel_size"])[0], 1) else (2,)
        else:  # (rows, cols, in, filters) for tf ordering, (filters, in, rows, cols) for th
            axes = (2, 3) if lcfg.get("data_format") == "channels_first" else (0, 1)
        flipped = np.flip(w, axis=axes).copy()
        raw["groups"][top] = dict(grp, data={**grp["data"], first: flipped})
    return raw


# ------------------------------------------------------------------ reader
def read_keras1(path, raw: dict, config: dict, *, unsafe=False, custom_classes=frozenset(),
                bn_classes=frozenset()) -> ModelGraph:
    """The graph of a Keras 1 ``.h5`` (``raw``: :func:`bnrewrite.io.h5._extract_isolated`'s result)."""
    from .config import build_graph
    from .original import Original

    attrs = raw["attrs"]
    version = str(attrs.get("keras_version") or "1 (no keras_version)")
    backend = attrs.get("backend") or None
    try:
        config2 = translate_model(config)
        check_backend(config2, backend, path)
    except InputError as e:
        raise with_path(e, path) from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise InputError(f"{path}: malformed Keras 1 model_config ({type(e).__name__}: {e})") from None
    configs = {}
    for lc in (config2["config"] if isinstance(config2["config"], list) else config2["config"]["layers"]):
        configs[lc["config"].get("name", lc.get("name"))] = lc
    groups = raw["groups"]

    def lookup(nest: tuple, name: str, class_name: str) -> dict:
        grp = groups.get(name)
        if grp is None:
            return {}
        arrays = []
        for n in grp["weight_names"]:
            value = grp["data"][n]
            if isinstance(value, str):
                raise InputError(f"{path}: weight {name}/{n} is unreadable ({value[len('error: '):]})")
            arrays.append(value)
        lc = configs[name]
        return convert_weights(lc["class_name"], lc["config"], arrays, backend, name)

    source = {"path": str(path), "format": "h5", "keras_version": version, "backend": backend or "",
              "dialect": "keras1"}
    try:
        mg = build_graph(config2, lookup, legacy=True, source=source, unsafe=unsafe,
                         custom_classes=custom_classes, bn_classes=bn_classes)
    except InputError as e:
        raise with_path(e, path) from None
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise InputError(f"{path}: malformed Keras 1 model_config ({type(e).__name__}: {e})") from None
    mg.source.setdefault("notes", []).append(
        f"Keras 1 file (keras_version {version}{', backend ' + backend if backend else ''}): config mapped to "
        "Keras 2 (docs/keras1.md)" + ("; Theano kernels flipped for TensorFlow" if backend == "theano" else ""))
    mg.original = Original(framework="tf_keras", format="h5", config=config2,
                           weights=reference_raw(raw, config2, backend), path=str(path))
    return mg
