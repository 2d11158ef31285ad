"""calibrate_bn: AdaBN -- reset and re-estimate every BN's moving statistics on calibration data.

Runs only when ``convert(..., calibration=DATA)`` (``--calibration``) is given.
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

from ..graph import ModelGraph
from .base import Pass, PassContext, PassResult


class CalibrateBN(Pass):
    name = "calibrate_bn"
    description = "re-estimate BN moving mean/variance exactly on calibration data (AdaBN)"

    @classmethod
    def enabled(cls, options: dict) -> bool:
        return options.get("calibration") is not None

    def candidates(self, mg: ModelGraph):
        return mg.bn_nodes()

    def run(self, mg: ModelGraph, ctx: PassContext) -> PassResult:
        from ..calibration import calibrate

        o = ctx.options
        if o.get("calibration") is None:
            return PassResult(self.name)
        import os

        from ..errors import InputError
        from ..io.data import DataPath

        data, preprocess, feature = o["calibration"], o.get("preprocess"), o.get("tfrecord_feature")
        if isinstance(data, (str, os.PathLike)) and not isinstance(data, DataPath):
            data = DataPath(data, preprocess, feature)  # images preprocessed and bad ones counted; a tfrecord's feature
        elif not isinstance(data, DataPath):
            for option, value in (("preprocess", preprocess), ("tfrecord_feature", feature)):
                if value is not None:
                    raise InputError(f"{option}={value!r} applies to calibration files only, "
                                     f"not to calibration data of type {type(data).__name__}")
        report = calibrate(
            mg, data,
            batch_size=o.get("batch_size"),  # None: chosen from the model's activation sizes
            max_samples=o.get("max_samples"),
            variance=o.get("variance") or "unbiased",
            cache_mb=o.get("cache_mb"),  # None: automatic (half the available memory)
            custom_objects=o.get("custom_objects"),
            progress=o.get("calibration_progress"),
            cache_dir=o.get("cache_dir"),
            max_spill_gb=o.get("max_spill_gb"),
            engine=o.get("engine") or "local",
            shards=o.get("shards") or 1,
        )
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
