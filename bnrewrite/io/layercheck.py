"""Check one layer config before anything is built from it: data only, nothing runs.

A config is accepted only if every class and function it names is on the allowlist
(:mod:`bnrewrite.io.allowlist`) or was handed over by the user (``custom_objects``):

* the layer class itself; ``TFSMLayer`` and the other layers that read files or
  load models are refused with the reason; a vocabulary layer whose vocabulary is
  a path is refused;
* nested objects (initializers, regularizers, constraints, dtype policies, RNN
  cells, wrapped layers) at any depth, by ``class_name``; a Keras 3 ``module`` must
  be one of Keras's own;
* functions named in the config (activations, a ``Lambda``'s function), which
  must be functions -- never a class where a function is expected;
* serialized Python bytecode (Keras 3 ``__lambda__``, tf.keras ``Lambda`` with
  ``function_type: "lambda"``) anywhere in the config: loading it means running
  it (CVE-2024-3660), so only with ``unsafe``;
* tf.keras ``TFOpLambda``/``SlicingOpLambda`` (``tf.*`` calls recorded in a
  functional graph): the TensorFlow function must be on the allowlist of pure ops.
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from ..graph import MODEL_CLASSES
from .allowlist import FUNCTIONS, LAYERS, NESTED, REFUSED, app_layer, tf_op_allowed

_KERAS_MODULES = ("keras", "tf_keras")
#: TensorFlow's own initializer modules: tf.keras 2.x records ``tf.constant_initializer`` & co. under them.
#: Only the class name counts: both frameworks look it up among their initializers, never in the module.
_TF_INITIALIZER_MODULES = ("tensorflow.python.ops.init_ops_v2", "tensorflow.python.ops.init_ops")


def is_keras_module(module) -> bool:
    """``keras``, ``tf_keras`` or a module inside them (not merely a name that starts the same)."""
    return any(str(module) == k or str(module).startswith(k + ".") for k in _KERAS_MODULES)


#: modules of Keras 3's own operations that functional graphs record as nodes (``keras.ops.add``,
#: and in Keras 3.4, ``keras.activations.relu`` as ``keras.src.activations.activations.ReLU``)
KERAS_OP_MODULES = ("keras.src.ops.", "keras.src.activations.")


def is_keras_op(module: str | None) -> bool:
    """Whether a config's ``module`` names one of Keras 3's own ops (not a layer)."""
    return (module or "").startswith(KERAS_OP_MODULES)


#: most memory one tensor of the model may declare for one sample (env BNREWRITE_MAX_TENSOR_BYTES)
TENSOR_BYTES = 1 << 30


def tensor_cap() -> int:
    import os

    from .safe_files import parse_bytes

    env = os.environ.get("BNREWRITE_MAX_TENSOR_BYTES")
    return parse_bytes(env, "BNREWRITE_MAX_TENSOR_BYTES") if env else TENSOR_BYTES


def check_declared_shapes(config: dict, who: str, build_config=None) -> None:
    """A layer or model config's declared input shapes (``batch_input_shape``, ``batch_shape``,
    ``build_config``, a Sequential's ``build_input_shape``) within the per-sample tensor cap, counting 4 bytes an element and an open dimension as 1: a
    framework builds layers from them before any model exists to check -- a 16 KB file's Normalization
    broadcast its mean to a declared (1, 2**31) while Keras read it (9 GB)."""
    from .safe_files import fmt_bytes

    shapes = [config.get("batch_input_shape"), config.get("batch_shape"), config.get("build_input_shape")]
    for build in (config.get("build_config"), build_config):  # Keras 3 keeps it beside the config
        if isinstance(build, dict):
            shapes.append(build.get("input_shape"))
    cap = tensor_cap()
    stack = [s for s in shapes if isinstance(s, (list, tuple))]
    while stack:
        shape = stack.pop()
        if any(isinstance(d, (list, tuple, dict)) for d in shape):  # several inputs
            stack.extend(d for d in shape if isinstance(d, (list, tuple)))
            stack.extend(v for d in shape if isinstance(d, dict) for v in d.values() if isinstance(v, (list, tuple)))
            continue
        n = 4.0
        for d in shape[1:]:
            if isinstance(d, (int, float)) and not isinstance(d, bool):
                n *= max(abs(float(d)), 1.0)
        if n > cap:
            raise UnsupportedModelError(
                f"{who} declares an input shape {str(list(shape))[:80]} of {fmt_bytes(int(min(n, 2.0 ** 62)))} per "
                f"sample, more than the {fmt_bytes(cap)} allowed (BNREWRITE_MAX_TENSOR_BYTES; raise it only for a "
                "model you trust)", code="OVERSIZED_DATA")


#: the type specs a ``__typespec__`` object may name (an input's ``type_spec``: dense, ragged, sparse)
TYPE_SPECS = frozenset({"TensorSpec", "RaggedTensorSpec", "SparseTensorSpec"})
#: elements a constant array or a size argument in a file may ask for (a rebuild allocates it)
MAX_CONST_ELEMENTS = 1 << 20
ARRAY_CLASSES = ("__numpy__", "__tensor__")


def check_array(cfg: dict, who: str):
    """The numpy dtype of a serialized ``__numpy__``/``__tensor__`` value (``{"value", "dtype"}``), after
    checking it is a plain numeric or bool dtype (a dtype string like ``"(16000,16000)f8"`` is a
    sub-array type that multiplies every element) and that the value has a bounded number of elements,
    without building anything. ``who`` starts the message (``"layer 'bn' is called with"``)."""
    import numpy as np

    value, dtype = cfg.get("value"), cfg.get("dtype")
    try:
        dt = np.dtype(dtype) if dtype is not None else None
    except (TypeError, ValueError):
        dt = np.dtype("V")  # not a dtype: refused below like any non-numeric one
    if dt is not None and (dt.shape != () or dt.kind not in "biufc" or dt.names is not None):
        raise UnsupportedModelError(f"{who} an array of dtype {str(dtype)[:60]!r}, not a plain numeric type",
                                    code="UNSAFE_CALL_ARGUMENT")
    count, stack = 0, [value]
    while stack:  # count the leaves without building anything
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        else:
            count += 1
        if count > MAX_CONST_ELEMENTS or len(stack) > MAX_CONST_ELEMENTS:
            raise UnsupportedModelError(f"{who} a constant array of more than {MAX_CONST_ELEMENTS} elements",
                                        code="UNSAFE_CALL_ARGUMENT")
    return dt


def check_registered_name(obj: dict, who: str, custom=frozenset()) -> None:
    """An object's ``registered_name`` may only repeat its ``class_name`` (or, for a function, its
    name), or be a ``package>ClassName`` registration of that same class: tf_keras looks a name it
    cannot find in ``module`` up by ``registered_name`` (``vars(module)[registered_name]``), so a
    ``{"class_name": "function", "module": "builtins", "config": "l2_normalize", "registered_name":
    "exec"}`` called ``exec``, and a regularizer registered as ``StringLookup`` read a host file."""
    registered, cls = obj.get("registered_name"), obj.get("class_name")
    if registered is None or registered == cls:
        return
    if isinstance(registered, str) and isinstance(cls, str):
        if cls == "function" and registered == obj.get("config"):
            return
        if ">" in registered and registered.rsplit(">", 1)[1] == cls:
            return
        if registered in custom:
            return
    raise UnsupportedModelError(
        f"{who} names class {str(cls)[:60]!r} but is registered as {str(registered)[:60]!r}: a framework "
        "would look the object up by that other name", code="UNSAFE_OBJECT")


def check_layer(class_name: str, config: dict, *, layer_name: str, module: str | None = None,
                unsafe: bool = False, custom_classes=frozenset(), registered_name: str | None = None,
                build_config=None) -> None:
    """Raise :class:`UnsupportedModelError` naming the layer if its config is not data only."""
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"layer {layer_name!r}: config is not a JSON object")
    check_registered_name({"class_name": class_name, "registered_name": registered_name},
                          f"layer {layer_name!r}", custom_classes)
    check_declared_shapes(config, f"layer {layer_name!r}", build_config)
    code = bytecode_keys(config)
    if code and not unsafe:
        what = "a Lambda carrying Python code" if class_name == "Lambda" else f"a {class_name} carrying Python code"
        raise UnsupportedModelError(
            f"layer {layer_name!r} is {what} (serialized bytecode in {', '.join(code)}); refusing to "
            "run code from a model file (pass --unsafe / unsafe=True only for files you trust)",
            code="UNSAFE_LAMBDA_CODE",
        )
    custom = set(custom_classes)
    if class_name in REFUSED and class_name not in custom:
        raise UnsupportedModelError(
            f"layer {layer_name!r} is {class_name} ({REFUSED[class_name]}); bnrewrite does not rebuild it",
            code="UNSAFE_LAYER",
        )
    if is_keras_op(module):
        if not class_name.isidentifier():
            raise UnsupportedModelError(f"layer {layer_name!r}: bad Keras op name {class_name!r}", code="UNKNOWN_CLASS")
    elif class_name not in LAYERS and class_name not in MODEL_CLASSES and class_name not in custom \
            and not app_layer(class_name, module):
        raise UnsupportedModelError(
            f"layer {layer_name!r} has unknown class {class_name!r}; provide it with "
            "--custom-objects module.py (API: custom_objects={...})",
            code="UNKNOWN_CLASS",
        )
    if module is not None and not is_keras_op(module) and class_name not in custom \
            and not is_keras_module(module):
        raise UnsupportedModelError(
            f"layer {layer_name!r}: class {class_name!r} from module {module!r} is not a Keras layer",
            code="UNSAFE_OBJECT",
        )
    if class_name in ("TFOpLambda", "SlicingOpLambda"):
        fn = config.get("function")
        if not isinstance(fn, str) or not tf_op_allowed(fn):
            raise UnsupportedModelError(
                f"layer {layer_name!r} calls TensorFlow function tf.{fn} (TFOpLambda), which is not on "
                "bnrewrite's allowlist of pure tensor ops",
                code="UNSAFE_TF_OP",
            )
    if class_name == "Lambda":
        for key in ("function", "output_shape", "mask"):
            fn = _named_function(config.get(key), key, config)
            if fn is not None and not (set(fn) & custom):
                raise UnsupportedModelError(
                    f"layer {layer_name!r} is a Lambda calling the Python function {fn[0]!r} ({key}); "
                    "provide it with --custom-objects module.py (a module-level custom_objects dict; "
                    "API: custom_objects={...})",
                    code="UNSAFE_FUNCTION",
                )
    for key in ("vocabulary", "vocabulary_file"):
        if isinstance(config.get(key), str):
            raise UnsupportedModelError(
                f"layer {layer_name!r} ({class_name}) reads its vocabulary from the file {config[key][:100]!r}",
                code="UNSAFE_FILE_VOCABULARY",
            )
    _check_nested(config, layer_name, custom, top=True)


def _check_nested(obj, layer_name: str, custom: set, top: bool = False) -> None:
    """Every ``{"class_name": ...}`` object inside a layer config must be allowlisted."""
    if isinstance(obj, list):
        for v in obj:
            _check_nested(v, layer_name, custom)
        return
    if not isinstance(obj, dict):
        return
    if not top and "class_name" in obj:
        cls = obj["class_name"]
        module = obj.get("module")
        if cls == "__lambda__":
            return  # bytecode: checked above (unsafe only)
        check_registered_name(obj, f"layer {layer_name!r} holds an object that", custom)
        if cls == "__typespec__" and (obj.get("spec_name") not in TYPE_SPECS or obj.get("registered_name")):
            # tf_keras imports ``module`` and calls ``vars(module)[spec_name].from_config`` (red-team round 4:
            # a StringLookup named there read a host file and resolved a gs:// path)
            raise UnsupportedModelError(
                f"layer {layer_name!r} holds a type spec naming {str(obj.get('spec_name'))[:60]!r}, not one of "
                f"TensorFlow's tensor specs ({', '.join(sorted(TYPE_SPECS))})", code="UNSAFE_OBJECT")
        if cls in ARRAY_CLASSES:  # a framework deserializing the config builds the array
            check_array(obj.get("config") if isinstance(obj.get("config"), dict) else {},
                        f"layer {layer_name!r} holds")
            return
        if cls == "function":
            name = obj.get("config")
            ok = isinstance(name, str) and (name in FUNCTIONS or name in custom)
            if module is not None and not (is_keras_module(module) or module == "builtins"):
                ok = name in custom
            if not ok:
                raise UnsupportedModelError(
                    f"layer {layer_name!r} names the function {module}.{name} that is not on bnrewrite's "
                    "allowlist; provide it with --custom-objects if you trust it",
                    code="UNSAFE_FUNCTION",
                )
            return
        if cls in REFUSED and cls not in custom:
            raise UnsupportedModelError(f"layer {layer_name!r} holds a {cls} ({REFUSED[cls]})", code="UNSAFE_LAYER")
        if isinstance(cls, str) and cls not in NESTED and cls not in LAYERS and cls not in MODEL_CLASSES \
                and cls not in custom and not is_keras_op(module):
            raise UnsupportedModelError(
                f"layer {layer_name!r} holds an object of class {cls!r} that is not on bnrewrite's allowlist",
                code="UNSAFE_OBJECT",
            )
        if module is not None and cls not in custom and not is_keras_module(module) \
                and not is_keras_op(module) and not (module in _TF_INITIALIZER_MODULES and cls in NESTED):
            raise UnsupportedModelError(
                f"layer {layer_name!r} holds {cls!r} from module {module!r}, which is not Keras",
                code="UNSAFE_OBJECT",
            )
        if cls in MODEL_CLASSES:  # its layers; Keras 2.0/2.1 write a Sequential's config as the list of them
            _check_nested(obj.get("config"), layer_name, custom)
            return
        if cls in LAYERS:
            check_layer(cls, obj.get("config") or {}, layer_name=f"{layer_name}/{(obj.get('config') or {}).get('name', cls)}",
                        module=module, unsafe=True, custom_classes=frozenset(custom),
                        registered_name=obj.get("registered_name"),
                        build_config=obj.get("build_config"))  # bytecode checked at top
            return
    for k, v in obj.items():
        if k == "class_name":
            continue
        _check_nested(v, layer_name, custom)


def bytecode_keys(config, where: str = "") -> list[str]:
    """Config keys (dotted) holding serialized Python bytecode."""
    found: list[str] = []
    if isinstance(config, dict):
        if config.get("class_name") == "__lambda__":
            return [where or "config"]
        for k, v in config.items():
            path = f"{where}.{k}" if where else str(k)
            if k.endswith("_type") and v == "lambda" and k[:-5] in ("function", "output_shape", "mask"):
                found.append(path[:-5])  # tf.keras Lambda: function_type "lambda" = bytecode
            found += bytecode_keys(v, path)
    elif isinstance(config, list):
        for i, v in enumerate(config):
            found += bytecode_keys(v, f"{where}[{i}]")
    return found


def _named_function(value, key: str, config: dict) -> tuple[str, ...] | None:
    """Names a Lambda's ``function``/``output_shape``/``mask`` is looked up by, unless it is a
    pure function on the allowlist (or bytecode, checked separately)."""
    if value is None:
        return None
    kind = config.get(f"{key}_type")
    if kind == "lambda" or (isinstance(value, dict) and value.get("class_name") == "__lambda__"):
        return None
    if key == "output_shape" and isinstance(value, (list, tuple)) and kind != "function":
        return None  # a shape, not a function
    if isinstance(value, str):
        return None if value in FUNCTIONS else (value,)
    if isinstance(value, dict) and value.get("class_name") == "function":
        module = str(value.get("module") or "")
        name = value.get("config")
        if isinstance(name, str) and name in FUNCTIONS and (is_keras_module(module) or module == "builtins"):
            return None
        names = tuple(n for n in (name, value.get("registered_name")) if isinstance(n, str) and n != "function")
        return names or ("?",)
    if isinstance(value, dict):  # a class or anything else where a function is expected
        return (str(value.get("class_name", "?")),)
    return None
