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
SeparableConv1D/2D     pointwise (1.., out)  last axis of the pointwise kernel
=====================  ===================  ===============================

A separable convolution is depthwise then pointwise, both linear: the BN folds
into the pointwise kernel and the bias exactly as for Conv. Kernel names are
the writing framework's (tf_keras ``DepthwiseConv2D.depthwise_kernel`` is Keras
3's ``kernel``).

It is safe only when the producer's activation is linear, its output feeds the
BN alone (no other consumer, not a model output), neither layer is shared, the
BN normalizes the producer's channel axis, and the BN runs in inference mode.
A Reshape between the layer and the BN (as unwrapping ``TimeDistributed(Conv2D)``
leaves: conv -> reshape (B, T, ...) -> BN) does not stop the fold when it keeps
the size of the last axis and the layer is channels_last: a reshape never
reorders elements, so every element keeps its channel. Candidates that fail a
check are skipped with the reason. Arithmetic is float64,
then cast back to the kernel's dtype.
"""

from __future__ import annotations

import numpy as np

from ..graph import ModelGraph, bn_axis
from .base import Pass, PassContext

FOLDABLE = {
    "Dense": "last",
    "Conv1D": "last", "Conv2D": "last", "Conv3D": "last",
    "SeparableConv1D": "last", "SeparableConv2D": "last",
    "DepthwiseConv1D": "depthwise", "DepthwiseConv2D": "depthwise",
    "Conv1DTranspose": "transpose", "Conv2DTranspose": "transpose", "Conv3DTranspose": "transpose",
}
#: the weight that holds the output channels, by class (default ``kernel``)
KERNEL_KEYS = {"SeparableConv1D": ("pointwise_kernel",), "SeparableConv2D": ("pointwise_kernel",),
               "DepthwiseConv1D": ("depthwise_kernel", "kernel"), "DepthwiseConv2D": ("depthwise_kernel", "kernel")}


def kernel_key(layer) -> str | None:
    for key in KERNEL_KEYS.get(layer.class_name, ("kernel",)):
        if key in layer.weights:
            return key
    return None


# Output rank fixed by the class (Conv{k}D, DepthwiseConv{k}D, Conv{k}DTranspose: k + 2).
FIXED_RANK = {
    "Conv1D": 3, "Conv2D": 4, "Conv3D": 5, "DepthwiseConv1D": 3, "DepthwiseConv2D": 4,
    "Conv1DTranspose": 3, "Conv2DTranspose": 4, "Conv3DTranspose": 5, "SeparableConv1D": 3, "SeparableConv2D": 4,
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

    def __init__(self, keep_trainable: bool = False):
        self.keep_trainable = keep_trainable  # BNs kept as layers, for training

    @classmethod
    def from_options(cls, options: dict) -> "FoldBN | None":
        return cls(keep_trainable=bool(options.get("keep_trainable"))) if options.get("fold", True) else None

    def candidates(self, mg: ModelGraph):
        return [n for n in mg.topo() if mg.layer(n).is_bn()]

    def check(self, mg: ModelGraph, node: str, ctx: PassContext) -> str | None:
        bn = mg.layer(node)
        if self.keep_trainable:
            return "--keep-trainable keeps BN layers for training"
        if len(mg.calls(bn.name)) > 1:
            return "the BN layer is shared by several calls"
        if mg.graph.nodes[node]["kwargs"].get("training") not in (False, None):
            return "the BN is called in training mode"
        prod, out = mg.main_input(node) or (None, None)
        if prod is None:
            return "the BN has no input tensor"
        player = mg.layer(prod)
        through = self._through_reshape(mg, prod)
        if through is not None:  # layer -> Reshape -> BN (e.g. an unwrapped TimeDistributed)
            reason = self._check_reshape(mg, prod, out, through)
            if reason is not None:
                return reason
            (prod, out), player = through, mg.layer(through[0])
        if player.class_name not in FOLDABLE:
            return f"its input comes from {player.class_name} {player.name!r}, which cannot absorb it"
        act = player.config.get("activation", "linear")
        if act not in ("linear", None):
            return f"{player.name!r} has activation {act!r}: the BN acts after a non-linearity"
        if len(mg.calls(player.name)) > 1:
            return f"{player.name!r} is shared by several calls"
        if mg.uses(prod, out) > 1:
            return f"the output of {player.name!r} is also used elsewhere"
        key = kernel_key(player)
        if key is None or not np.issubdtype(np.asarray(player.weights[key]).dtype, np.floating):
            return f"{player.name!r} has no float kernel"
        if np.asarray(player.weights[key]).size == 0:  # a zero-width input: TF's oneDNN aborts on K=0 + bias
            return f"{player.name!r} has an empty kernel (no input features)"
        if any(k not in bn.weights for k in ("moving_mean", "moving_variance")):
            return "the BN has no moving statistics"
        channel = 1 if player.config.get("data_format") == "channels_first" else -1
        axis = bn_axis(bn.config)
        if isinstance(axis, list):
            return f"the BN normalizes several axes {axis}"
        if axis == channel:  # the same axis whatever the rank: no shapes needed
            return None
        rank = self._rank(mg, node)
        if rank is None:
            return "the rank of the BN input is unknown"
        if axis % rank != channel % rank:
            return f"the BN normalizes axis {axis}, not the channel axis of {player.name!r}"
        return None

    def run(self, mg, ctx):
        from ..build import infer_shapes

        self._shapes = None
        self._infer = lambda: infer_shapes(mg)
        return super().run(mg, ctx)

    def _get_shapes(self) -> dict:
        """Static shapes of all tensors: one symbolic trace of the model, made only when needed."""
        if self._shapes is None:
            self._shapes = self._infer()
        return self._shapes

    def _rank(self, mg, node):
        src = mg.main_input(node)
        fixed = FIXED_RANK.get(mg.layer(src[0]).class_name)
        if fixed is not None:  # conv layers accept and return exactly this rank
            return fixed
        shape = self._get_shapes().get(src)
        return None if shape is None else len(shape)

    @staticmethod
    def _through_reshape(mg: ModelGraph, prod: str):
        """``(node, out)`` that the Reshape ``prod`` reads, when that comes from a foldable layer; else None."""
        cls = mg.layer(prod).class_name
        if cls not in ("Reshape", "ReshapeLike"):
            return None
        inbound = mg.inbound(prod)  # ReshapeLike: the data, then the tensor whose leading dims it takes
        if len(inbound) != (2 if cls == "ReshapeLike" else 1) or mg.layer(inbound[0][0]).class_name not in FOLDABLE:
            return None
        return inbound[0]

    def _check_reshape(self, mg: ModelGraph, reshape: str, out: int, src: tuple[str, int]) -> str | None:
        """A Reshape between the layer and the BN is transparent to the fold when it keeps the size of
        the last (channel) axis: a reshape never reorders elements, so each element keeps its
        channel index (flat index mod C)."""
        lay, player = mg.layer(reshape), mg.layer(src[0])
        if len(mg.calls(lay.name)) > 1:
            return f"the reshape {lay.name!r} between {player.name!r} and the BN is shared by several calls"
        if mg.uses(reshape, out) > 1:
            return f"the output of {lay.name!r} is also used elsewhere"
        if player.config.get("data_format") == "channels_first":
            return f"the reshape {lay.name!r} moves the channel axis of {player.name!r} (channels_first)"
        a, b = self._get_shapes().get(src), self._get_shapes().get((reshape, out))
        if not a or not b or a[-1] is None or a[-1] != b[-1]:
            return f"the reshape {lay.name!r} between {player.name!r} and the BN does not keep the channel axis"
        return None

    def rewrite(self, mg: ModelGraph, node: str, ctx: PassContext) -> list[str]:
        bn = mg.layer(node)
        prod, out = mg.main_input(node)
        read = (prod, out)  # what the BN reads: the layer's output, or a Reshape of it
        prod, out = self._through_reshape(mg, prod) or read
        player = mg.layer(prod)
        s, t = bn_scale_shift(bn.weights, bn.config)
        key = kernel_key(player)
        kernel = np.asarray(player.weights[key])
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
        player.weights[key] = w.astype(kernel.dtype)
        player.weights["bias"] = new_bias.astype(kernel.dtype)
        if not player.config.get("use_bias", True):
            player.config["use_bias"] = True
            # keep the weight order the framework creates: kernel(s), then bias
            player.weights = {**{k: v for k, v in player.weights.items() if k != "bias"},
                              "bias": player.weights["bias"]}
        mg.rewire((node, 0), read)
        mg.remove(node)
        return [bn.name]
