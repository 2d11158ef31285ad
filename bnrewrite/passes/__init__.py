"""Graph rewrite passes, in the order ``convert`` runs them by default."""

from __future__ import annotations

from .base import Pass, PassContext, PassError, PassManager, PassResult
from .calibrate_bn import CalibrateBN
from .fold_bn import FoldBN
from .inference_mode import InferenceMode
from .unwrap_timedistributed import UnwrapTimeDistributed

#: The default pipeline, in order. One line per pass.
DEFAULT_PASSES: list[type[Pass]] = [
    InferenceMode,  # first: later passes see explicit training=False
    UnwrapTimeDistributed,  # before folding, so unwrapped BNs can fold too
    CalibrateBN,  # only with calibration data; after unwrapping (stats over batch and time), before folding
    FoldBN,
]


def default_passes(**options) -> list[Pass]:
    """Instances of the default passes, minus those switched off by ``options``."""
    return [cls() for cls in DEFAULT_PASSES if cls.enabled(options)]


__all__ = ["CalibrateBN", "FoldBN", "InferenceMode", "UnwrapTimeDistributed", "Pass", "PassContext", "PassError", "PassManager", "PassResult", "DEFAULT_PASSES", "default_passes"]
