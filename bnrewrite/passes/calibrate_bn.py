"""calibrate_bn: AdaBN -- reset and re-estimate every BN's moving statistics on calibration data.

In the default pipeline only when ``convert(..., calibration=DATA)``
(``--calibration``) is given; in an explicit pipeline as ``CalibrateBN(DATA, ...)``.
The statistics are the exact population mean and variance of each BN's input
over the data, layer by layer so that every BN sees inputs normalized by the
new statistics upstream; the algorithm and its math are in
:mod:`bnrewrite.calibration`. It runs after ``unwrap_timedistributed`` (an
unwrapped BN is estimated over batch and time) and before ``fold_bn`` (the new
statistics are what gets folded).

Unlike the other passes this is one computation over the whole graph, not a
rewrite per match, so it overrides :meth:`Pass.run`; layers it cannot
calibrate are reported as skipped with the reason.
"""

from __future__ import annotations

from typing import Callable

from ..graph import ModelGraph
from .base import Pass, PassContext, PassResult


class CalibrateBN(Pass):
    """AdaBN on ``data`` (any source :class:`~bnrewrite.io.data.CalibrationData` reads);
    the keyword options are :func:`bnrewrite.calibration.calibrate`'s, plus ``preprocess``
    and ``tfrecord_feature`` for a calibration path (an image folder, TFRecord files)."""

    name = "calibrate_bn"
    description = "re-estimate BN moving mean/variance exactly on calibration data (AdaBN)"

    def __init__(self, data, *, preprocess: str | None = None, tfrecord_feature: str | None = None,
                 batch_size: int | None = None, max_samples: int | None = None, variance: str = "unbiased",
                 cache_mb: float | None = None, cache_dir=None, max_spill_gb: float | None = None,
                 engine: str = "local", shards: int = 1, custom_objects: dict | None = None,
                 progress: Callable | None = None):
        self.data = data
        self.preprocess, self.tfrecord_feature = preprocess, tfrecord_feature
        self.calibrate_options = {
            "batch_size": batch_size,  # None: chosen from the model's activation sizes
            "max_samples": max_samples, "variance": variance,
            "cache_mb": cache_mb,  # None: automatic (half the available memory)
            "cache_dir": cache_dir, "max_spill_gb": max_spill_gb, "engine": engine, "shards": shards,
            "custom_objects": custom_objects, "progress": progress,
        }

    @classmethod
    def from_options(cls, options: dict) -> "CalibrateBN | None":
        if options.get("calibration") is None:
            return None
        return cls(options["calibration"], preprocess=options.get("preprocess"),
                   tfrecord_feature=options.get("tfrecord_feature"), batch_size=options.get("batch_size"),
                   max_samples=options.get("max_samples"), variance=options.get("variance") or "unbiased",
                   cache_mb=options.get("cache_mb"), cache_dir=options.get("cache_dir"),
                   max_spill_gb=options.get("max_spill_gb"), engine=options.get("engine") or "local",
                   shards=options.get("shards") or 1, custom_objects=options.get("custom_objects"),
                   progress=options.get("calibration_progress"))

    def candidates(self, mg: ModelGraph):
        return mg.bn_nodes()

    def run(self, mg: ModelGraph, ctx: PassContext) -> PassResult:
        import os

        from ..calibration import calibrate
        from ..errors import InputError, UnsupportedModelError
        from ..io.data import DataPath

        hidden = mg.wrapped_model_bns()
        if hidden:  # a partial AdaBN would leave those statistics from the old domain, silently
            name, bns = next(iter(hidden.items()))
            kept = ctx.artifacts.get("timedistributed_kept", {}).get(name, "--keep-timedistributed")
            raise UnsupportedModelError(
                f"calibration cannot reach the {sum(map(len, hidden.values()))} BatchNormalization layer(s) inside "
                f"the model wrapped by {name!r} ({', '.join(bns[:3])}{', ...' if len(bns) > 3 else ''}): the wrapper "
                f"was kept ({kept})")
        data, preprocess, feature = self.data, self.preprocess, self.tfrecord_feature
        if isinstance(data, (str, os.PathLike)) and not isinstance(data, DataPath):
            data = DataPath(data, preprocess, feature)  # images preprocessed and bad ones counted; a tfrecord's feature
        elif not isinstance(data, DataPath):
            for option, value in (("preprocess", preprocess), ("tfrecord_feature", feature)):
                if value is not None:
                    raise InputError(f"{option}={value!r} applies to calibration files only, "
                                     f"not to calibration data of type {type(data).__name__}")
        report = calibrate(mg, data, **self.calibrate_options)
        if isinstance(data, DataPath) and data.found:  # an image folder: what was read, what was bad
            found = data.found
            report["bad_images"] = found["bad_images"]
            report["bad_image_names"] = list(found["bad_image_names"])
            report["images"] = {k: v for k, v in found.items() if k not in ("bad_images", "bad_image_names")}
        ctx.artifacts["calibration"] = report
        # the new statistics by the layer's place in the original file, for the verification reference
        done = {r["layer"] for r in report["layers"]}
        calibrated = [lay for lay in mg.layers().values() if lay.name in done]
        ctx.artifacts["calibrated_stats"] = {
            lay.origin: {k: lay.weights[k] for k in ("moving_mean", "moving_variance")}
            for lay in calibrated if lay.origin is not None
        }
        # per channel, for the HTML report's before/after plots
        report["per_channel"] = {lay.name: {k: [float(v) for v in lay.weights[k]]
                                            for k in ("moving_mean", "moving_variance")} for lay in calibrated}
        return PassResult(self.name, changed=[r["layer"] for r in report["layers"]],
                          skipped=[{"layer": s["layer"], "node": None, "reason": s["reason"]}
                                   for s in report["skipped"]])
