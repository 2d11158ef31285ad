"""cudnn_rnn: ``CuDNNLSTM`` / ``CuDNNGRU`` as the standard recurrent layers they equal.

Keras 2.0–2.3 and tf.keras 1.x wrote GPU-only recurrent layers that call cuDNN's
fused kernel (``CudnnRNN``): no CPU kernel and no ONNX mapping, so such a model
(CRNN/OCR and DeepSpeech-style BN + CuDNN RNN stacks) runs nowhere but on a GPU.
cuDNN's cells are the standard ones with fixed activations:

* LSTM (gates i, f, c, o): ``i, f, o = σ(W x + R h + b_W + b_R)``,
  ``c' = f·c + i·tanh(W_c x + R_c h + b_Wc + b_Rc)``, ``h' = o·tanh(c')`` -- Keras's
  ``LSTM(activation='tanh', recurrent_activation='sigmoid')`` with bias ``b_W + b_R``;
* GRU (Keras gate order z, r, h): ``z, r = σ(W x + b_W + R h + b_R)``,
  ``h~ = tanh(W_h x + b_Wh + r·(R_h h + b_Rh))``, ``h' = z·h + (1 − z)·h~`` -- Keras's
  ``GRU(reset_after=True, recurrent_activation='sigmoid')`` with bias rows ``[b_W; b_R]``.

The layouts differ: Keras's CuDNN layers hand each gate's block of ``kernel`` (inputs × units)
to cuDNN as it lies in memory, and cuDNN reads that buffer as a row-major (units × inputs)
matrix ``W``; so the standard layer's block is ``Wᵀ = reshape(block, (units, inputs))ᵀ``. A
recurrent block ``R`` (units × units) is read as ``R`` itself, used as ``W h``: the standard
block is ``Rᵀ``. The bias holds 2 × gates × units values, input biases first. The weights
are converted here in numpy (exact: a permutation and, for the LSTM bias, one float32 sum).

The verification reference reads the original file independently: tf_keras builds the same
standard layer from the config and converts the CuDNN weights with its own HDF5 loader
(:func:`bnrewrite.reference.build_reference`), so a wrong layout here fails verification.
Wrapped layers (``Bidirectional``, including a different ``backward_layer``,
``TimeDistributed``) are converted too.
"""

from __future__ import annotations

import numpy as np

from ..build.tf_keras import CUDNN_RNN, cudnn_config_as_standard
from ..graph import ModelGraph
from .base import Pass, PassContext


def _cudnn_configs(config: dict, class_name: str) -> list[tuple[str, dict]]:
    """``(class name, config)`` of the CuDNN layers a layer is or wraps, in weight order
    (a Bidirectional's forward layer, then its backward one)."""
    if class_name in CUDNN_RNN:
        return [(class_name, config)]
    out = []
    for key in ("layer", "backward_layer"):
        inner = config.get(key)
        if isinstance(inner, dict) and "class_name" in inner:
            found = _cudnn_configs(inner.get("config") or {}, inner["class_name"])
            out += found * (2 if key == "layer" and class_name == "Bidirectional" and found
                            and not isinstance(config.get("backward_layer"), dict) else 1)
    return out


def convert_weights(class_name: str, kernel, recurrent, bias) -> list[np.ndarray]:
    """One CuDNN layer's ``[kernel, recurrent_kernel, bias]`` in the standard layer's layout."""
    gates = CUDNN_RNN[class_name][1]
    inputs, units = kernel.shape[0], recurrent.shape[0]
    k = np.hstack([np.ascontiguousarray(b).reshape(units, inputs).T for b in np.hsplit(kernel, gates)])
    r = np.hstack([b.T for b in np.hsplit(recurrent, gates)])
    b_w, b_r = np.split(np.asarray(bias), 2)
    b = b_w + b_r if class_name == "CuDNNLSTM" else np.stack([b_w, b_r])
    return [k.astype(kernel.dtype), r.astype(recurrent.dtype), b.astype(bias.dtype)]


class CudnnRNN(Pass):
    name = "cudnn_rnn"
    description = "CuDNNLSTM/CuDNNGRU (GPU-only) as the LSTM/GRU they equal, weights converted"

    def candidates(self, mg: ModelGraph):
        seen = set()
        for n in mg.topo():
            lay = mg.layer(n)
            if lay.name not in seen and _cudnn_configs(lay.config, lay.class_name):
                seen.add(lay.name)
                yield n

    def check(self, mg: ModelGraph, node: str, ctx: PassContext) -> str | None:
        lay = mg.layer(node)
        found = _cudnn_configs(lay.config, lay.class_name)
        values = list(lay.weights.values())
        if len(values) != 3 * len(found):
            return f"expected {3 * len(found)} weights (kernel, recurrent_kernel, bias per CuDNN layer), found {len(values)}"
        for (cls, _), (k, r, b) in zip(found, zip(*[iter(values)] * 3)):
            gates, units = CUDNN_RNN[cls][1], np.shape(r)[0]
            if np.ndim(k) != 2 or np.shape(r) != (units, gates * units) or np.shape(k)[1] != gates * units \
                    or np.shape(b) != (2 * gates * units,):
                return f"weights of shapes {np.shape(k)}, {np.shape(r)}, {np.shape(b)} are not {cls}'s layout"
        return None

    def rewrite(self, mg: ModelGraph, node: str, ctx: PassContext) -> list[str]:
        lay = mg.layer(node)
        found = _cudnn_configs(lay.config, lay.class_name)
        keys, values = list(lay.weights), list(lay.weights.values())
        new = []
        for (cls, _), (k, r, b) in zip(found, zip(*[iter(values)] * 3)):
            new += convert_weights(cls, np.asarray(k), np.asarray(r), np.asarray(b))
        lay.weights = dict(zip(keys, new))
        # the same config translation the reference gets (the layer itself, or those it wraps)
        out = cudnn_config_as_standard({"class_name": lay.class_name, "config": lay.config})
        lay.class_name, lay.config = out["class_name"], out["config"]
        return [lay.name]
