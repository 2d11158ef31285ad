"""A bound on the variables a framework creates while it rebuilds a model from a file's config.

Keras allocates a layer's variables when it builds the layer (``Dense(units=2**28)``, a conv whose
``build_config`` declares 2**25 input channels), before any weight from the file is compared with
them: an 18 KB config could make bnrewrite allocate tens of GB. Every variable a rebuild creates
stands for a weight the file stores, so inside :func:`variable_budget` the frameworks' variable
constructors (Keras 3 ``Variable``, tf_keras ``Layer.add_weight``) are charged *before* they allocate:

    used + size(shape, dtype) <= 2 x (bytes of the weights the file stores) + 64 MiB

and a variable beyond that is refused (exit 2). The slack covers what Keras creates beyond the stored
weights (seed states, counters). Outside a budget (a user's own Keras code in the same process)
nothing is checked.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

from ..errors import UnsupportedModelError

SLACK = 64 << 20


class BudgetError(UnsupportedModelError):
    """A variable beyond the budget (exit 2); never taken for a mere failure to rebuild."""


_BUDGET: contextvars.ContextVar = contextvars.ContextVar("bnrewrite_variable_budget", default=None)


def stored_bytes(obj) -> int:
    """Bytes of the arrays in a (nested dict/list) weights structure."""
    if isinstance(obj, dict):
        return sum(stored_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(stored_bytes(v) for v in obj)
    return int(getattr(obj, "nbytes", 0) or 0)


@contextlib.contextmanager
def variable_budget(stored: int, framework: str):
    """Refuse variables beyond ``2 x stored + SLACK`` bytes in all, created inside this block by
    ``framework`` (``"keras"`` or ``"tf_keras"``, imported here if need be)."""
    (_install_tf_keras if framework == "tf_keras" else _install_keras3)()
    token = _BUDGET.set({"limit": 2 * int(stored) + SLACK, "used": 0, "stored": int(stored)})
    try:
        yield
    finally:
        _BUDGET.reset(token)


def graph_budget(mg, framework: str | None = None):
    """:func:`variable_budget` for rebuilding ``mg`` (or its original): the graph's weights are the
    file's (folding only removes BN vectors, far below the slack)."""
    return variable_budget(stored_bytes({name: lay.weights for name, lay in mg.layers().items()}),
                           framework or mg.framework)


def _charge(shape, dtype, name) -> None:
    state = _BUDGET.get()
    if state is None or shape is None:
        return
    try:
        dims = [int(d) for d in shape]
    except (TypeError, ValueError):
        return  # an unknown dimension: no allocation of that shape can happen
    import numpy as np

    try:  # a tf.DType or a dtype string
        itemsize = np.dtype(str(getattr(dtype, "name", dtype))).itemsize
    except TypeError:
        itemsize = 8  # bfloat16 and other names numpy lacks: counted at the widest
    size = itemsize
    for d in dims:
        size *= max(d, 0)  # Python ints: no overflow
    if state["used"] + size > state["limit"]:
        raise BudgetError(
            f"the model config makes a variable {name or ''} of shape {tuple(dims)} ({size / 2**20:,.0f} MiB), "
            f"beyond what the file's weights ({state['stored'] / 2**20:,.1f} MiB) account for: the config does not "
            "match its weights (was it edited?)")
    state["used"] += size


@functools.lru_cache(maxsize=None)
def _install_keras3() -> None:
    from keras.src.backend.common import variables

    init = variables.Variable.__init__

    @functools.wraps(init)
    def checked(self, initializer, shape=None, dtype=None, *args, **kwargs):
        if shape is not None and callable(initializer):
            _charge(shape, dtype or "float32", kwargs.get("name"))
        return init(self, initializer, shape, dtype, *args, **kwargs)

    variables.Variable.__init__ = checked


@functools.lru_cache(maxsize=None)
def _install_tf_keras() -> None:
    from tf_keras.src.engine import base_layer

    add_weight = base_layer.Layer.add_weight

    @functools.wraps(add_weight)
    def checked(self, name=None, shape=None, dtype=None, *args, **kwargs):
        _charge(shape, dtype or getattr(self, "dtype", None) or "float32", name)
        return add_weight(self, name, shape, dtype, *args, **kwargs)

    base_layer.Layer.add_weight = checked
