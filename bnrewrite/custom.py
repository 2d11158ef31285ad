"""Load user-supplied custom Keras objects from a Python file (``--custom-objects``).

A model file may use layer classes that are not part of Keras (``MyBlock``,
``Scale``, ...). bnrewrite never imports code a model file names; the user
must hand the classes over explicitly. ``--custom-objects module.py`` does
that: the file is **executed** as a Python module -- this runs the user's own
code, which they opted into by naming the file, so only pass files you trust
as much as your own source tree.

What is collected, by name:

* every class *defined in* the file that subclasses ``keras.layers.Layer`` (or, when the
  file imports tf_keras, ``tf_keras.layers.Layer``: for tf.keras models, which tf_keras rebuilds)
  (imported ones such as ``keras.layers.Dense`` are skipped), under its class
  name and, if it differs, its Keras registered name (``"pkg>Scale"``);
* everything in an optional module-level ``custom_objects`` dict (functions
  for ``Lambda`` layers, activations, classes defined elsewhere), which wins
  over the automatic collection.

The result is the ``custom_objects=`` dict the Python API takes.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from .errors import InputError, first_line


MODULE_PREFIX = "bnrewrite_custom_"  # the module a --custom-objects file is loaded as (not importable elsewhere)


def load_custom_objects(path) -> dict:
    """Execute the Python file ``path`` and return its custom Keras objects by name."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--custom-objects {p}: no such file")
    if p.suffix != ".py":
        raise InputError(f"--custom-objects {p}: expected a Python file (.py)")
    import keras

    mod_name = f"{MODULE_PREFIX}{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise InputError(f"--custom-objects {p}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up here
    no_pyc = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # write nothing beside the user's file (__pycache__)
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # SystemExit too: the user's file must not end bnrewrite
        sys.modules.pop(mod_name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        where = _user_frame(e, p)
        raise InputError(
            f"--custom-objects {p}: importing it failed{where}: {type(e).__name__}: {first_line(e, empty='')}"
        ) from e
    finally:
        sys.dont_write_bytecode = no_pyc

    # Keras 3 layers, and tf_keras layers when the file imports tf_keras (for tf.keras models,
    # which tf_keras rebuilds): the builder checks that each class fits the model's framework
    bases = [keras.layers.Layer]
    if "tf_keras" in sys.modules:
        bases.append(sys.modules["tf_keras"].layers.Layer)
    found: dict = {}
    for name, obj in vars(module).items():
        if isinstance(obj, type) and issubclass(obj, tuple(bases)) and obj.__module__ == mod_name:
            found[obj.__name__] = obj
            if issubclass(obj, keras.layers.Layer):
                registered = keras.saving.get_registered_name(obj)
                if registered and registered != obj.__name__:
                    found[registered] = obj
    extra = getattr(module, "custom_objects", None)
    if extra is not None:
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise InputError(f"--custom-objects {p}: 'custom_objects' must be a dict of name -> object")
        found.update(extra)
    if not found:
        raise InputError(
            f"--custom-objects {p}: defines no Keras (keras or tf_keras) layer class and no 'custom_objects' dict"
        )
    return found


def _user_frame(e: BaseException, p: Path) -> str:
    """' (line N)' of the deepest frame in the user's file, if any."""
    line = None
    for fs in traceback.extract_tb(e.__traceback__):
        if Path(fs.filename).resolve() == p.resolve():
            line = fs.lineno
    if line is None and isinstance(e, SyntaxError) and e.lineno:
        line = e.lineno
    return f" (line {line})" if line else ""
