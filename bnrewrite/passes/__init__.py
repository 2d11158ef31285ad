"""Graph rewrite passes, in the order ``convert`` runs them by default."""

from __future__ import annotations

from .base import Pass, PassContext, PassError, PassManager, PassResult
from .calibrate_bn import CalibrateBN
from .cudnn_rnn import CudnnRNN
from .fold_bn import FoldBN
from .inference_mode import InferenceMode
from .unwrap_timedistributed import UnwrapTimeDistributed

#: The default pipeline, in order. One line per pass.
DEFAULT_PASSES: list[type[Pass]] = [
    CudnnRNN,  # GPU-only CuDNN RNN layers as the standard ones: runnable on CPU, exportable
    InferenceMode,  # first: later passes see explicit training=False
    UnwrapTimeDistributed,  # before folding, so unwrapped BNs can fold too
    CalibrateBN,  # only with calibration data; after unwrapping (stats over batch and time), before folding
    FoldBN,
]


#: convert() options that configure the default passes; with an explicit ``passes=[...]``
#: they belong to the passes' constructors (e.g. ``FoldBN(keep_trainable=True)``).
PASS_OPTIONS = {"fold": True, "keep_trainable": False, "keep_timedistributed": False, "calibration": None}


def default_passes(**options) -> list[Pass]:
    """The default passes configured from ``convert()``'s keyword arguments (each pass's
    :meth:`~Pass.from_options`), minus those the options switch off."""
    return [p for cls in DEFAULT_PASSES if (p := cls.from_options(options)) is not None]


__all__ = ["CalibrateBN", "CudnnRNN", "FoldBN", "InferenceMode", "UnwrapTimeDistributed", "Pass", "PassContext", "PassError", "PassManager", "PassResult", "DEFAULT_PASSES", "PASS_OPTIONS",
           "default_passes"]
