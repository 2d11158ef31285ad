"""What the verification reference is rebuilt from: the original file's own config and
its vetted weights, exactly as read (before any bnrewrite translation or pass).

:mod:`bnrewrite.reference` hands these to the framework that wrote the file, so the
reference is that framework's own reading of the original, never ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Original:
    #: ``"tf_keras"`` or ``"keras"``: the framework that wrote (and so rebuilds) the file
    framework: str
    #: ``"h5"`` (full-model HDF5), ``"keras"`` (a .keras archive: Keras 3, or tf.keras 2.14/2.15),
    #: ``"memory"`` (a live model,
    #: :mod:`bnrewrite.io.memory`) or ``"savedmodel"`` (:mod:`bnrewrite.io.savedmodel`)
    format: str
    #: the model config as stored in the file
    config: dict
    #: the vetted weights: the HDF5 extractor's result (``.h5``), the weights tree (``.keras``), or
    #: ``{top-level layer name: [arrays]}`` in ``get_weights`` order (``memory``), or
    #: ``{"prefix": variables/variables}`` (``savedmodel``: tf_keras restores the checkpoint)
    weights: dict = field(repr=False, default_factory=dict)
    path: str = ""


def bn_subclass_names(custom_objects: dict | None) -> frozenset:
    """Names of user-provided classes that subclass BatchNormalization (either framework):
    they are BNs for every pass and for ``inspect`` (e.g. Mask R-CNN's ``BatchNorm``)."""
    names = set()
    for name, obj in (custom_objects or {}).items():
        if isinstance(obj, type) and any(c.__name__ == "BatchNormalization" for c in obj.__mro__[1:]):
            names.add(name)
            names.add(obj.__name__)
    return frozenset(names)
