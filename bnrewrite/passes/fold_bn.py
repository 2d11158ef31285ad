"""fold_bn: fold a BatchNormalization into the linear layer before it.

In inference a BN over channel c is an affine map. With

    s_c = gamma_c / sqrt(moving_variance_c + epsilon)

(gamma = 1 when ``scale=False``, beta = 0 when ``center=False``) it computes
``y = s_c * (x_c - moving_mean_c) + beta_c``. When ``x = W * u + b`` comes from a
layer that is linear in its input, the BN disappears into that layer:

    W'[..., c] = W[..., c] * s_c
    b'_c       = (b_c - moving_mean_c) * s_c + beta_c      (b = 0 without a bias)

Where the output channel c sits in the kernel:

=====================  ===================  ===============================
layer                  kernel shape         output channel
=====================  ===================  ===============================
Dense                  (in, out)            last axis
Conv1D/2D/3D           (*k, in/groups, out) last axis
DepthwiseConv1D/2D     (*k, in, mult)       c = i * mult + m  (last two)
Conv1D/2D/3DTranspose  (*k, out, in)        second to last axis
=====================  ===================  ===============================

It is safe only when the producer's activation is linear, its output feeds the
BN alone (no other consumer, not a model output), neither layer is shared, the
BN normalizes the producer's channel axis, and the BN runs in inference mode.
Candidates that fail a check are skipped with the reason. Arithmetic is float64,
then cast back to the kernel's dtype.
"""

from __future__ import annotations

import numpy as np

from ..graph import ModelGraph
from .base import Pass, PassContext

FOLDABLE = {
    "Dense": "last",
    "Conv1D": "last", "Conv2D": "last", "Conv3D": "last",
    "DepthwiseConv1D": "depthwise", "DepthwiseConv2D": "depthwise",
    "Conv1DTranspose": "transpose", "Conv2DTranspose": "transpose", "Conv3DTranspose": "transpose",
}


def bn_scale_shift(weights: dict, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) such that BN(x) = s * x + t, in float64."""
    mean = np.asarray(weights["moving_mean"], np.float64)
    var = np.asarray(weights["moving_variance"], np.float64)
    gamma = np.asarray(weights["gamma"], np.float64) if config.get("scale", True) else np.ones_like(mean)
    beta = np.asarray(weights["beta"], np.float64) if config.get("center", True) else np.zeros_like(mean)
    s = gamma / np.sqrt(var + float(config.get("epsilon", 1e-3)))
    return s, beta - mean * s


class FoldBN(Pass):
    name = "fold_bn"
    description = "fold BN into the preceding Dense/Conv/DepthwiseConv/ConvTranspose kernel and bias"

    @classmethod
    def enabled(cls, options: dict) -> bool:
        return bool(options.get("fold", True))

    def candidates(self, mg: ModelGraph):
        return [n for n in mg.topo() if mg.layer(n).is_bn()]

    def check(self, mg: ModelGraph, node: str, ctx: PassContext) -> str | None:
        bn = mg.layer(node)
        if ctx.keep_trainable:
            return "--keep-trainable keeps BN layers for training"
        if len(mg.calls(bn.name)) > 1:
            return "the BN layer is shared by several calls"
        if mg.graph.nodes[node]["kwargs"].get("training") not in (False, None):
            return "the BN is called in training mode"
        (prod, out), = mg.inbound(node) or [(None, None)]
        if prod is None:
            return "the BN has no single input"
        player = mg.layer(prod)
        if player.class_name not in FOLDABLE:
            return f"its input comes from {player.class_name} {player.name!r}, which cannot absorb it"
        act = player.config.get("activation", "linear")
        if act not in ("linear", None):
            return f"{player.name!r} has activation {act!r}: the BN acts after a non-linearity"
        if len(mg.calls(player.name)) > 1:
            return f"{player.name!r} is shared by several calls"
        if mg.uses(prod, out) > 1:
            return f"the output of {player.name!r} is also used elsewhere"
        if not np.issubdtype(np.asarray(player.weights.get("kernel", np.zeros(0))).dtype, np.floating):
            return f"{player.name!r} has no float kernel"
        if any(k not in bn.weights for k in ("moving_mean", "moving_variance")):
            return "the BN has no moving statistics"
        rank = self._rank(mg, node)
        channel = 1 if player.config.get("data_format") == "channels_first" else -1
        axis = bn.config.get("axis", -1)
        if rank is None:
            return "the rank of the BN input is unknown"
        if axis % rank != channel % rank:
            return f"the BN normalizes axis {axis}, not the channel axis of {player.name!r}"
        return None

    def run(self, mg, ctx):
        from ..io.keras_writer import infer_shapes

        self._shapes = None
        self._infer = lambda: infer_shapes(mg)
        return super().run(mg, ctx)

    def _rank(self, mg, node):
        if self._shapes is None:
            self._shapes = self._infer()
        shape = self._shapes.get(mg.inbound(node)[0])
        return None if shape is None else len(shape)

    def rewrite(self, mg: ModelGraph, node: str, ctx: PassContext) -> list[str]:
        bn = mg.layer(node)
        (prod, out), = mg.inbound(node)
        player = mg.layer(prod)
        s, t = bn_scale_shift(bn.weights, bn.config)
        kernel_key = "kernel"
        kernel = np.asarray(player.weights[kernel_key])
        w = kernel.astype(np.float64)
        kind = FOLDABLE[player.class_name]
        if kind == "last":
            w = w * s
        elif kind == "depthwise":
            w = w * s.reshape(w.shape[-2], w.shape[-1])
        else:  # transpose: kernel (..., out, in)
            w = w * s[:, None]
        bias = player.weights.get("bias")
        b = np.zeros_like(s) if bias is None or not player.config.get("use_bias", True) else np.asarray(bias, np.float64)
        new_bias = b * s + t
        player.weights[kernel_key] = w.astype(kernel.dtype)
        player.weights["bias"] = new_bias.astype(kernel.dtype)
        if not player.config.get("use_bias", True):
            player.config["use_bias"] = True
            # keep weight order kernel, bias as Keras creates them
            player.weights = {kernel_key: player.weights[kernel_key], "bias": player.weights["bias"]}
        mg.rewire((node, 0), (prod, out))
        mg.remove(node)
        return [bn.name]
