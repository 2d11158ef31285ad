"""inference_mode: give every BatchNormalization call explicit inference semantics.

A BN called with ``training=True`` in a functional graph normalizes with the
statistics of the current batch: tf.keras ``predict`` honours that, tf2onnx
exports the batch-statistics ops, Keras 3.15 lets the outer flag win, newer
Keras honours the call-site flag again. After this pass every BN call (plain or
inside TimeDistributed, also inside a model it wraps) carries ``training=False``: it computes

    y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta

in every Keras version and in ONNX. Other layers with a baked-in
``training=True`` (Dropout, GaussianNoise, ...) get ``training=False`` too, since
they would make the deployed model random. BN layers are frozen
(``trainable=False``) unless ``keep_trainable`` is set, so a later ``fit`` on
the Keras output does not move the statistics.
"""

from __future__ import annotations

from ..graph import ModelGraph
from ..io.config import TRAINING_AWARE
from .base import Pass, PassContext


class InferenceMode(Pass):
    name = "inference_mode"
    description = "explicit training=False on BN calls (and baked-in training=True elsewhere); freeze BN"

    def __init__(self, keep_trainable: bool = False):
        self.keep_trainable = keep_trainable  # leave BN layers' trainable flag alone

    @classmethod
    def from_options(cls, options: dict) -> "InferenceMode":
        return cls(keep_trainable=bool(options.get("keep_trainable")))

    def candidates(self, mg: ModelGraph):
        for n in mg.topo():
            lay = mg.layer(n)
            if lay.is_bn() or lay.wraps_bn() or lay.wrapped_model_bns() or (
                lay.class_name in TRAINING_AWARE and mg.graph.nodes[n]["kwargs"].get("training") is True
            ):
                yield n

    def rewrite(self, mg: ModelGraph, node: str, ctx: PassContext) -> list[str]:
        data = mg.graph.nodes[node]
        lay = data["layer"]
        changed = data["kwargs"].get("training") is not False
        data["kwargs"]["training"] = False
        if lay.is_bn() or lay.wraps_bn():
            bn_configs = [lay.config, *(w.get("config") for w in lay.wrapped_configs())]
        else:  # the BNs inside a wrapped model (TimeDistributed(encoder)), if any
            bn_configs = lay.wrapped_model_bn_configs()
        for cfg in bn_configs if not self.keep_trainable else ():
            if cfg is not None and cfg.get("trainable", True) is not False:
                cfg["trainable"] = False
                changed = True
        return [lay.name] if changed else []
