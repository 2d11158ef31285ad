"""Rewrite a tf_keras 2.21 ``.h5`` into an older Keras dialect.

Real files written by standalone Keras 2.0-2.3 and by tf.keras 1.x differ from
what tf_keras 2.21 writes. ``rewrite(src, dst, dialect, bn_ranks)`` copies the
file with h5py and edits the root ``model_config``/``keras_version``/``backend``
attributes, the ``model_weights`` attributes and weight names so that the copy
looks like a file of that era. What each dialect changes, and the public
examples each rule was checked against, is in ``PROVENANCE.md`` ("Legacy
dialects").

Dialects: ``keras-2.0.8``, ``keras-2.1.6``, ``keras-2.2.4``, ``keras-2.3.1``
(standalone Keras, TensorFlow backend), ``tf-1.13`` and ``tf-1.15`` (tf.keras,
``keras_version`` "2.2.4-tf"), and ``keras-2.2.4-cudnn``: Keras 2.2.4 with the
recurrent layers as the GPU-only ``CuDNNLSTM``/``CuDNNGRU`` it trained with.
"""

from __future__ import annotations

import copy
import json
import re
import shutil

import numpy as np

DIALECTS = {
    # label: (keras_version, settings)
    "keras-2.0.8": ("2.0.8", dict(standalone=True, seq_list=True, all_dtype=False, init_dtype=False,
                                   old_dropout=True, old_flatten=True, bn_v1=False)),
    "keras-2.1.6": ("2.1.6", dict(standalone=True, seq_list=True, all_dtype=False, init_dtype=False,
                                   old_dropout=False, old_flatten=False, bn_v1=False)),
    "keras-2.2.4": ("2.2.4", dict(standalone=True, seq_list=False, all_dtype=False, init_dtype=False,
                                   old_dropout=False, old_flatten=False, bn_v1=False)),
    "keras-2.3.1": ("2.3.1", dict(standalone=True, seq_list=False, all_dtype=True, init_dtype=False,
                                   old_dropout=False, old_flatten=False, bn_v1=False)),
    # Keras 2.2.4 trained on a GPU with CuDNNLSTM/CuDNNGRU (GPU-only layers; see _to_cudnn)
    "keras-2.2.4-cudnn": ("2.2.4", dict(standalone=True, seq_list=False, all_dtype=False, init_dtype=False,
                                         old_dropout=False, old_flatten=False, bn_v1=False, cudnn=True)),
    "tf-1.13": ("2.2.4-tf", dict(standalone=False, seq_list=False, all_dtype=True, init_dtype=True,
                                  old_dropout=False, old_flatten=False, bn_v1=True)),
    "tf-1.15": ("2.2.4-tf", dict(standalone=False, seq_list=False, all_dtype=True, init_dtype=False,
                                  old_dropout=False, old_flatten=False, bn_v1=False)),
}

#: initializer class -> the VarianceScaling config standalone Keras 2.x wrote for it
_VS = {
    "GlorotUniform": (1.0, "fan_avg", "uniform"),
    "GlorotNormal": (1.0, "fan_avg", "normal"),
    "HeUniform": (2.0, "fan_in", "uniform"),
    "HeNormal": (2.0, "fan_in", "normal"),
    "LecunUniform": (1.0, "fan_in", "uniform"),
    "LecunNormal": (1.0, "fan_in", "normal"),
}

#: keys that tf_keras 2.x added to layer configs after the dialect's era
_NEW_KEYS = {
    "*": ("module", "registered_name", "build_config", "compile_config", "shared_object_id"),
    "InputLayer": ("ragged", "optional"),
    "Conv1D": ("groups",), "Conv2D": ("groups",), "Conv3D": ("groups",),
    "GlobalAveragePooling1D": ("keepdims",), "GlobalAveragePooling2D": ("keepdims",),
    "GlobalMaxPooling1D": ("keepdims",), "GlobalMaxPooling2D": ("keepdims",),
    "GlobalAveragePooling3D": ("keepdims",), "GlobalMaxPooling3D": ("keepdims",),
    "LSTM": ("time_major",), "GRU": ("time_major",), "SimpleRNN": ("time_major",),
    "UpSampling2D": (), "Embedding": (),
}


#: values a newer config key may be dropped with (what older Keras did without the key)
_IMPLICIT = {"groups": (1,), "keepdims": (False,), "time_major": (False,), "ragged": (False,),
             "optional": (False,)}


class _Rewriter:
    def __init__(self, s: dict, bn_ranks: dict):
        self.s = s
        self.bn_ranks = bn_ranks

    # -- generic helpers -------------------------------------------------------------

    def initializer(self, obj):
        if not isinstance(obj, dict) or "class_name" not in obj:
            return obj
        obj = {"class_name": obj["class_name"], "config": dict(obj.get("config") or {})}
        if self.s["standalone"] and obj["class_name"] in _VS:
            scale, mode, dist = _VS[obj["class_name"]]
            obj = {"class_name": "VarianceScaling",
                   "config": {"scale": scale, "mode": mode, "distribution": dist,
                              "seed": obj["config"].get("seed")}}
        if self.s["init_dtype"]:
            obj["config"]["dtype"] = "float32"
        return obj

    def plain(self, obj):
        """Regularizers/constraints: drop the Keras 3-era keys only."""
        if isinstance(obj, dict) and "class_name" in obj:
            return {"class_name": obj["class_name"], "config": obj.get("config", {})}
        return obj

    # -- layers ----------------------------------------------------------------------

    def layer(self, entry: dict, first_in_sequential: bool = False) -> dict:
        cls = entry["class_name"]
        cfg = dict(entry.get("config") or {})
        for k in _NEW_KEYS["*"]:
            cfg.pop(k, None)
        for k in _NEW_KEYS.get(cls, ()):
            # only drop a newer key while it holds its old implicit value (keepdims=True, groups > 1
            # have no older spelling: they stay, and the file is then not purely of its era)
            if k in cfg and cfg[k] in _IMPLICIT.get(k, (None,)):
                cfg.pop(k)
        for k, v in list(cfg.items()):
            if k.endswith("_initializer"):
                cfg[k] = self.initializer(v)
            elif k.endswith("_regularizer") or k.endswith("_constraint"):
                cfg[k] = self.plain(v)
            elif isinstance(v, dict) and k == "dtype":
                cfg[k] = "float32"  # a dtype policy dict -> plain string
        keep_dtype = self.s["all_dtype"] or "batch_input_shape" in cfg or cls == "InputLayer"
        if not keep_dtype:
            cfg.pop("dtype", None)
        if cls in ("BatchNormalization",) or cls == "BatchNorm":
            axis = cfg.get("axis")
            rank = self.bn_ranks.get(cfg.get("name"))
            if self.s["standalone"]:
                if isinstance(axis, list) and len(axis) == 1:
                    axis = axis[0]
                if isinstance(axis, int) and rank is not None and axis == rank - 1:
                    axis = -1
                cfg["axis"] = axis
            if self.s["bn_v1"] and cls == "BatchNormalization":
                cls = "BatchNormalizationV1"
        if cls == "Dropout" and self.s["old_dropout"]:
            cfg = {k: v for k, v in cfg.items() if k not in ("noise_shape", "seed")}
        if cls == "Flatten" and self.s["old_flatten"]:
            cfg.pop("data_format", None)
        if self.s.get("cudnn") and cls in _CUDNN:
            cls, cfg = _CUDNN[cls], _cudnn_config(cls, cfg)
        if cls in ("TimeDistributed", "Bidirectional"):
            for k in ("layer", "backward_layer"):
                if k in cfg and isinstance(cfg[k], dict):
                    cfg[k] = self.layer(cfg[k])
        if cls in ("Sequential", "Functional", "Model"):
            cls, cfg = self.model(cls, cfg)
        out = {"class_name": cls, "config": cfg}
        for k in ("name", "inbound_nodes"):
            if k in entry:
                out[k] = entry[k]
        if "name" in entry:  # standalone Keras wrote "name" first
            out = {"name": entry["name"], **{k: v for k, v in out.items() if k != "name"}}
        return out

    def model(self, cls: str, cfg):
        if cls == "Sequential":
            layers = list(cfg["layers"]) if isinstance(cfg, dict) else list(cfg)
            if layers and layers[0]["class_name"] == "InputLayer":
                inp = layers.pop(0)["config"]
                if layers:
                    first = dict(layers[0])
                    fcfg = dict(first["config"])
                    fcfg["batch_input_shape"] = inp.get("batch_input_shape")
                    # standalone Keras 2 gave the first layer of a Sequential the float type
                    # (an Embedding casts its float input: see PROVENANCE.md)
                    fcfg["dtype"] = "float32" if self.s["standalone"] else inp.get("dtype", "float32")
                    if first["class_name"] == "Embedding" and self.s["standalone"]:
                        fcfg["input_length"] = (inp.get("batch_input_shape") or [None, None])[1]
                    first["config"] = fcfg
                    layers[0] = first
            layers = [self.layer(lay, i == 0) for i, lay in enumerate(layers)]
            if self.s["seq_list"]:
                return "Sequential", layers
            return "Sequential", {"name": cfg.get("name", "sequential_1"), "layers": layers}
        cfg = dict(cfg)
        cfg["layers"] = [self.layer(lay) for lay in cfg["layers"]]
        return "Model", {"name": cfg.get("name", "model_1"), "layers": cfg["layers"],
                         "input_layers": cfg["input_layers"], "output_layers": cfg["output_layers"]}

    def top(self, conf: dict) -> dict:
        cls, cfg = self.model(conf["class_name"], conf["config"])
        return {"class_name": cls, "config": cfg}


#: standard layer -> the CuDNN layer Keras 2.x trained on a GPU (same function, other weight layout)
_CUDNN = {"LSTM": "CuDNNLSTM", "GRU": "CuDNNGRU"}
_CUDNN_KEYS = ("name", "trainable", "units", "kernel_initializer", "recurrent_initializer", "bias_initializer",
               "kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "activity_regularizer",
               "kernel_constraint", "recurrent_constraint", "bias_constraint", "return_sequences",
               "return_state", "go_backwards", "stateful")


def _cudnn_config(cls: str, cfg: dict) -> dict:
    """The CuDNN layer's config (Keras 2.2.4 ``CuDNNLSTM``/``CuDNNGRU.get_config``); only a layer with
    cuDNN's fixed function may become one."""
    fixed = {"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True, "dropout": 0.0,
             "recurrent_dropout": 0.0, **({"reset_after": True} if cls == "GRU" else {})}
    bad = {k: cfg.get(k) for k, v in fixed.items() if cfg.get(k, v) != v}
    if bad:
        raise ValueError(f"{cls} {cfg.get('name')!r} is not cuDNN's function: {bad}")
    keys = _CUDNN_KEYS + (("unit_forget_bias",) if cls == "LSTM" else ())
    return {k: cfg[k] for k in keys if k in cfg}


def _to_cudnn_layout(kind: str, kernel, recurrent, bias):
    """Standard LSTM/GRU weights -> the CuDNN layer's: cuDNN reads each gate's kernel block
    (inputs x units) as a row-major (units x inputs) matrix W applied as W x, so the block
    stored is reshape(K_gate^T, (inputs, units)); a recurrent block R is used as R h: stored R^T.
    Bias: [input biases; recurrent biases] (the LSTM's single bias split as (b, 0))."""
    gates = 4 if kind == "CuDNNLSTM" else 3
    inputs, units = kernel.shape[0], recurrent.shape[0]
    k = np.hstack([b.T.reshape(inputs, units) for b in np.hsplit(kernel, gates)])
    r = np.hstack([b.T for b in np.hsplit(recurrent, gates)])
    b = np.concatenate([bias, np.zeros_like(bias)]) if kind == "CuDNNLSTM" else np.asarray(bias).reshape(-1)
    return [k, r, b]


def _cudnn_weights(f, conf: dict) -> int:
    """Rewrite the weights of every CuDNN layer in ``conf`` (top level or inside Bidirectional) into
    the CuDNN layout; returns how many layers."""
    n = 0
    for lay in conf["config"]["layers"]:
        cls, cfg = lay["class_name"], lay["config"]
        kinds = [cls] if cls in _CUDNN.values() else \
            [cfg["layer"]["class_name"]] * 2 if cls == "Bidirectional" and cfg["layer"]["class_name"] in \
            _CUDNN.values() else []
        if not kinds:
            continue
        g = f["model_weights"][lay["name"]]
        names = [w.decode() if isinstance(w, bytes) else str(w) for w in g.attrs["weight_names"]]
        for kind, trio in zip(kinds, zip(*[iter(names)] * 3)):
            new = _to_cudnn_layout(kind, *[np.asarray(g[w]) for w in trio])
            for w, v in zip(trio, new):
                del g[w]
                g.create_dataset(w, data=v.astype("float32"))
        n += 1
    return n


_CELL = re.compile(r"^(lstm|gru|simple_rnn|conv_lstm(1d|2d|3d)?)_cell(_\d+)?$")


def _old_weight_name(name: str) -> str:
    """tf_keras 2.x puts RNN cell variables under the cell's scope ("lstm/lstm_cell/kernel:0");
    Keras 2.x and tf.keras 1.x did not ("lstm_1/kernel:0")."""
    return "/".join(p for p in name.split("/") if not _CELL.match(p))


def _drop_empty_groups(g) -> None:
    import h5py

    for k in list(g.keys()):
        if isinstance(g[k], h5py.Group):
            _drop_empty_groups(g[k])
            if len(g[k]) == 0:
                del g[k]


def rewrite(src, dst, dialect: str, bn_ranks: dict | None = None) -> dict:
    """Copy ``src`` (a tf_keras 2.21 .h5) to ``dst`` in ``dialect``; returns a summary of edits."""
    import h5py

    version, s = DIALECTS[dialect]
    shutil.copyfile(src, dst)
    summary = {"dialect": dialect, "keras_version": version, "renamed_weights": 0}
    with h5py.File(dst, "r+") as f:
        conf = json.loads(f.attrs["model_config"])
        new = _Rewriter(s, bn_ranks or {}).top(copy.deepcopy(conf))
        # attributes were written as utf8 bytes by Keras 2.x / tf.keras 1.x
        text = json.dumps(new).encode("utf8")
        if len(text) < 64000:
            f.attrs["model_config"] = np.bytes_(text)
        else:
            # a fixed-length attribute this long exceeds HDF5's 64 KiB object-header limit (old Keras
            # failed to save such models the same way); keep tf_keras's variable-length string
            del f.attrs["model_config"]
            f.attrs["model_config"] = text.decode("utf8")
            summary["model_config_vlen"] = True
        f.attrs["keras_version"] = np.bytes_(version.encode("utf8"))
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        mw = f["model_weights"]
        if "top_level_model_weights" in mw:
            del mw["top_level_model_weights"]
        layer_names = [n.decode() if isinstance(n, bytes) else str(n) for n in mw.attrs["layer_names"]]
        layer_names = [n for n in layer_names if n != "top_level_model_weights"]
        mw.attrs["layer_names"] = np.array([n.encode("utf8") for n in layer_names])
        mw.attrs["keras_version"] = np.bytes_(version.encode("utf8"))
        mw.attrs["backend"] = np.bytes_(b"tensorflow")
        for lname in layer_names:
            g = mw[lname]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["weight_names"]]
            new_names = []
            for n in names:
                m = _old_weight_name(n)
                if m != n:
                    data = np.asarray(g[n])
                    del g[n]
                    g.create_dataset(m, data=data)
                    summary["renamed_weights"] += 1
                new_names.append(m)
            _drop_empty_groups(g)
            if new_names:
                g.attrs["weight_names"] = np.array([n.encode("utf8") for n in new_names])
            else:
                g.attrs["weight_names"] = np.array([], dtype="S1")
        for k in ("training_config",):
            if k in f.attrs:
                del f.attrs[k]
        if s.get("cudnn"):
            summary["cudnn_layers"] = _cudnn_weights(f, new)
    return summary
