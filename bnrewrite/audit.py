"""Audit the BatchNormalization layers of a model: ``bnrewrite inspect``.

:func:`audit` looks at every BatchNormalization of a
:class:`~bnrewrite.graph.ModelGraph` (including BNs wrapped in
``TimeDistributed`` and BNs of flattened nested models) and returns an
:class:`Audit`: one row per BN *layer* (a shared BN is one row, its calls'
``training`` flags listed) and a list of findings. :func:`inspect` reads a file
first. :func:`compare` tells which findings a conversion fixed.

Findings
========

Each finding is ``{"code", "layer", "severity", "message", "hint"}``; ``layer``
is the (flattened) layer name, one finding per code and layer. The codes are
stable strings. "Any channel" means any element of the per-channel vectors.

=========================  ========  ==========================================  ==============================================
code                       severity  rule                                        hint (what fixes it)
=========================  ========  ==========================================  ==============================================
``TRAINING_BAKED_IN``      error     some call of the layer passes               ``bnrewrite convert`` puts every BN in
                                     ``training=True`` (node kwargs), so it      inference mode (the default): it then uses the
                                     normalizes with each batch's statistics:    moving statistics
                                     an output depends on the rest of the batch
``NONFINITE_STATS``        error     any element of gamma, beta, moving mean or  ``convert --calibration DATA`` re-estimates mean
                                     moving variance is NaN or +-inf             and variance; NaN/inf in gamma/beta cannot be
                                                                                 repaired by conversion (retrain / fix weights)
``DEGENERATE_VARIANCE``    error     any channel has moving variance < 0 (or     ``convert --calibration DATA`` re-estimates the
                                     variance + epsilon <= 0): a variance        variance
                                     cannot be negative
``DEGENERATE_VARIANCE``    warning   (no negative channel, and) any channel has  same; a zero-variance channel whose input
                                     moving variance exactly 0, or a gain        really is constant (a dead unit) is harmless
                                     ``|gamma| / sqrt(variance + epsilon)``
                                     above :data:`MAX_GAIN` = 1e3 (gamma is 1
                                     when ``scale=False``): the layer amplifies
                                     any deviation from the moving mean by more
                                     than 1000x. NaN/inf channels are left to
                                     ``NONFINITE_STATS``
``STALE_STATS``            warning   moving mean all exactly 0 *and* moving      ``convert --calibration DATA`` re-estimates them
                                     variance all exactly 1 (their initial
                                     values): never updated (e.g. a
                                     TimeDistributed BN in Keras 2.0.x, or a
                                     model saved before training)
``MISSING_STATS``          error     no moving mean or no moving variance was    save the whole model again; ``convert
                                     found for the layer in the file (its        --calibration DATA`` estimates them
                                     weights are missing or misnamed): the
                                     model cannot run as saved
``TIMEDISTRIBUTED_BN``     warning   the BN is wrapped in ``TimeDistributed``    ``convert`` unwraps it by default (do not pass
                                     (Keras 3 exports it unrolled per time       ``--keep-timedistributed``)
                                     step; Keras 2.0.x never updated its stats)
``BN_IN_WRAPPED_MODEL``    warning   a model inside ``TimeDistributed`` (a      ``convert`` inlines the model between two
                                     per-frame encoder) holds BN layers: they    reshapes, so they fold and calibrate; where
                                     are not listed above                        it cannot (``--keep-timedistributed``, a
                                                                                 shared wrapper, several inputs/outputs) they
                                                                                 are neither folded nor calibrated, and
                                                                                 ``--calibration`` is refused
``FROZEN_BN``              info      ``trainable`` is False in the layer config  ``convert --calibration DATA`` (AdaBN) if the
                                     (for a wrapped BN: the wrapper's or the     deployment domain differs from the training
                                     inner one's; the reader propagates a        domain
                                     nested model's ``trainable=False``). In
                                     TF2 / Keras 3 a frozen BN runs in
                                     inference mode even during ``fit``, so its
                                     statistics come from the original domain
=========================  ========  ==========================================  ==============================================

Severities order ``info < warning < error``; :attr:`Audit.worst_severity` is the
highest one found (None without findings) and ``inspect --strict`` fails (exit
4) on any warning or error.

The findings are deliberately limited to rules that can be checked from the
file alone. A call with ``training=False`` is not a finding (it is what
inference does anyway), nor is sharing one BN between several calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .graph import ModelGraph, bn_axis

INFO, WARNING, ERROR = "info", "warning", "error"
SEVERITY_RANK = {INFO: 0, WARNING: 1, ERROR: 2}

#: above this per-channel gain ``|gamma| / sqrt(var + eps)`` the variance is degenerate
MAX_GAIN = 1e3

#: code -> (default severity, hint). The order is the order findings are listed in, per layer.
CODES: dict[str, tuple[str, str]] = {
    "TRAINING_BAKED_IN": (
        ERROR,
        "convert puts BatchNormalization in inference mode by default (moving statistics, "
        "batch-independent output)",
    ),
    "NONFINITE_STATS": (
        ERROR,
        "re-estimate mean/variance with `bnrewrite convert --calibration DATA`; NaN/inf in "
        "gamma or beta cannot be repaired by conversion (retrain or fix the weights)",
    ),
    "DEGENERATE_VARIANCE": (
        WARNING,
        "re-estimate the variance with `bnrewrite convert --calibration DATA` (a zero-variance "
        "channel whose input really is constant is harmless)",
    ),
    "STALE_STATS": (
        WARNING,
        "re-estimate the statistics with `bnrewrite convert --calibration DATA`",
    ),
    "MISSING_STATS": (
        ERROR,
        "the file holds no moving mean or variance for the layer (a partial or damaged file): "
        "save the whole model again; `convert --calibration DATA` can estimate them",
    ),
    "TIMEDISTRIBUTED_BN": (
        WARNING,
        "`bnrewrite convert` unwraps it by default (do not pass --keep-timedistributed); "
        "check its statistics too (STALE_STATS)",
    ),
    "BN_IN_WRAPPED_MODEL": (
        WARNING,
        "convert inlines the wrapped model (reshape to frames, its layers, reshape back) so that they fold and "
        "calibrate; where it cannot (--keep-timedistributed, a shared wrapper, several inputs or outputs) they "
        "are left as they are and --calibration is refused",
    ),
    "FROZEN_BN": (
        INFO,
        "if the deployment data differ from the training data, re-estimate the statistics "
        "with `bnrewrite convert --calibration DATA` (AdaBN)",
    ),
}

#: What ``inspect`` reports about unsafe or unsupported content, found without running
#: anything (:mod:`bnrewrite.io.scan`, the HDF5 reader's refusals). ``convert`` refuses
#: these files (exit 2) unless the user opts in where that is possible.
SAFETY_CODES: dict[str, tuple[str, str]] = {
    "UNSAFE_LAMBDA_CODE": (ERROR, "a Lambda (or other object) carries Python bytecode, run on load; convert "
                                  "only with --unsafe for a file you trust, or replace it by a custom layer"),
    "UNSAFE_LAYER": (ERROR, "a layer that loads models or files or runs an op the file names (TFSMLayer, "
                            "vocabulary layers, tf.keras 2.0-2.3 TensorFlowOpLayer, ...); bnrewrite does not "
                            "rebuild it"),
    "UNSAFE_FILE_VOCABULARY": (ERROR, "the layer reads a vocabulary file from the machine; inline the vocabulary"),
    "UNSAFE_TF_OP": (ERROR, "a tf.keras op layer calls a TensorFlow function outside the allowlist of pure ops"),
    "UNSAFE_FUNCTION": (ERROR, "the config names a function (or a class where a function goes) that is not "
                               "Keras's own; provide it with --custom-objects if you trust it"),
    "UNSAFE_OBJECT": (ERROR, "the config holds an object of a class that is not on the allowlist"),
    "UNSAFE_CALL_ARGUMENT": (ERROR, "a layer is called with an argument it does not document"),
    "UNSAFE_HDF5_EXTERNAL_LINK": (ERROR, "the HDF5 file links to another file; re-save the model"),
    "UNSAFE_HDF5_EXTERNAL_STORAGE": (ERROR, "a dataset keeps its data in another file; re-save the model"),
    "UNSAFE_HDF5_SOFT_LINK": (ERROR, "the HDF5 file has soft links, which Keras never writes; re-save the model"),
    "UNSAFE_HDF5_VIRTUAL_DATASET": (ERROR, "a virtual dataset maps other files; re-save the model"),
    "UNSAFE_HDF5": (ERROR, "the HDF5 file has a structure Keras never writes; re-save the model"),
    "OVERSIZED_DATA": (ERROR, "the file declares more data or larger tensors than bnrewrite allows (a "
                              "decompression or size bomb?); the message names the limit to raise, only for a "
                              "file you trust"),
    "UNKNOWN_CLASS": (WARNING, "a custom layer class: provide it with --custom-objects"),
    "UNSUPPORTED": (WARNING, "bnrewrite cannot rebuild this layer"),
}

#: codes about a layer's weights: folding the BN into its neighbour keeps the problem
#: (folding preserves the function), so compare() does not count them fixed when the
#: BN merely disappeared
WEIGHT_CODES = frozenset({"NONFINITE_STATS", "DEGENERATE_VARIANCE", "STALE_STATS"})
#: weight codes that re-estimating the statistics (calibration) fixes for certain
CALIBRATION_FIXES = frozenset({"STALE_STATS"})

_STAT_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass
class Audit:
    """BN rows and findings; see the module docstring for the codes."""

    bn_layers: list[dict] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)
    #: what was read (``ModelGraph.source``): path, format, ... (not part of to_dict)
    source: dict = field(default_factory=dict)

    @property
    def worst_severity(self) -> str | None:
        """``"error"``, ``"warning"``, ``"info"``, or None without findings."""
        if not self.findings:
            return None
        return max((f["severity"] for f in self.findings), key=SEVERITY_RANK.__getitem__)

    def has(self, min_severity: str = WARNING) -> bool:
        """Whether any finding is at least ``min_severity``."""
        rank = SEVERITY_RANK[min_severity]
        return any(SEVERITY_RANK[f["severity"]] >= rank for f in self.findings)

    def codes(self) -> dict[str, set[str]]:
        """layer name -> set of finding codes (layers without findings included as empty sets)."""
        out: dict[str, set[str]] = {r["name"]: set() for r in self.bn_layers}
        for f in self.findings:
            out.setdefault(f["layer"], set()).add(f["code"])
        return out

    def to_dict(self) -> dict:
        """JSON-safe: non-finite statistics become the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
        return {
            "bn_layers": [{k: _json_value(v) for k, v in r.items()} for r in self.bn_layers],
            "findings": [dict(f) for f in self.findings],
        }


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _finding(code: str, layer: str, message: str, severity: str | None = None) -> dict:
    default, hint = CODES[code]
    return {"code": code, "layer": layer, "severity": severity or default, "message": message, "hint": hint}


def _scalar(x) -> Any:
    """A plain Python value for JSON (numpy scalars, lists of them)."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [_scalar(i) for i in x]
    return x


def _min_max(a: np.ndarray | None) -> tuple[float | None, float | None]:
    """min/max, NaN if any element is NaN; (None, None) when missing or empty."""
    if a is None or a.size == 0:
        return None, None
    a = a.astype(np.float64)
    if np.isnan(a).any():
        return float("nan"), float("nan")
    return float(a.min()), float(a.max())


def _call_training(mg: ModelGraph, node: str) -> Any:
    t = mg.graph.nodes[node]["kwargs"].get("training")
    return t if t is None or isinstance(t, bool) else str(t)


def audit(mg: ModelGraph) -> Audit:
    """Audit every BatchNormalization layer of ``mg`` (see the module docstring)."""
    result = Audit(source=dict(getattr(mg, "source", {}) or {}))
    by_layer: dict[str, list[str]] = {}
    for n in mg.bn_nodes(include_wrapped=True):
        by_layer.setdefault(mg.layer(n).name, []).append(n)

    for name, nodes in by_layer.items():
        layer = mg.layer(nodes[0])
        attrs = mg.graph.nodes[nodes[0]]
        if layer.is_bn():
            cfg, wrapper = layer.config, None
            trainable = cfg.get("trainable", True) is not False
        else:  # a wrapper (TimeDistributed) around a BN: config inside, weights on the wrapper
            cfg, wrapper = layer.inner.get("config", {}), layer.class_name
            trainable = (layer.config.get("trainable", True) is not False
                         and cfg.get("trainable", True) is not False)
        w = {k: np.asarray(layer.weights[k]) for k in _STAT_KEYS if k in layer.weights}
        mean, var = w.get("moving_mean"), w.get("moving_variance")
        epsilon = float(cfg.get("epsilon", 1e-3))
        trainings = [_call_training(mg, n) for n in nodes]
        channels = next((int(a.size) for a in (mean, var, w.get("gamma"), w.get("beta")) if a is not None), None)
        mm, vv = _min_max(mean), _min_max(var)
        result.bn_layers.append({
            "name": name,
            "path": "/".join(attrs.get("path", ())),
            "wrapper": wrapper,
            "axis": bn_axis(cfg),  # tf.keras saves [3]; the audit reports the axis
            "momentum": _scalar(cfg.get("momentum")),
            "epsilon": epsilon,
            "center": bool(cfg.get("center", True)),
            "scale": bool(cfg.get("scale", True)),
            "trainable": trainable,
            "training": trainings[0] if len(trainings) == 1 else trainings,
            "calls": len(nodes),
            "moving_mean_min": mm[0], "moving_mean_max": mm[1],
            "moving_variance_min": vv[0], "moving_variance_max": vv[1],
            "channels": channels,
        })
        result.findings.extend(_layer_findings(name, wrapper, trainable, trainings, w, cfg, epsilon))
    layers = mg.layers()
    for name, bns in mg.wrapped_model_bns().items():
        result.findings.append(_finding(
            "BN_IN_WRAPPED_MODEL", name,
            f"{layers[name].class_name} wraps a model with {len(bns)} BatchNormalization layer(s) "
            f"({', '.join(bns[:5])}{', ...' if len(bns) > 5 else ''})"))
    return result


def _layer_findings(name, wrapper, trainable, trainings, w, cfg, epsilon) -> list[dict]:
    found: list[dict] = []
    mean, var = w.get("moving_mean"), w.get("moving_variance")

    if any(t is True for t in trainings):
        which = [i for i, t in enumerate(trainings) if t is True]
        calls = "its call" if len(trainings) == 1 else f"call(s) {', '.join(map(str, which))} of {len(trainings)}"
        found.append(_finding(
            "TRAINING_BAKED_IN", name,
            f"{calls} pass training=True: it normalizes with each batch's own statistics, so an "
            "output depends on the other samples in the batch",
        ))

    missing = [k for k, v in (("moving_mean", mean), ("moving_variance", var)) if v is None]
    if missing:
        found.append(_finding("MISSING_STATS", name, f"no {' and no '.join(missing)} in the file for this layer"))

    bad = {k: int((~np.isfinite(a)).sum()) for k, a in w.items() if a.dtype.kind == "f" and not np.isfinite(a).all()}
    if bad:
        parts = ", ".join(f"{k} ({n} of {w[k].size})" for k, n in bad.items())
        found.append(_finding("NONFINITE_STATS", name, f"NaN or inf in {parts}"))

    if var is not None and var.size:
        with np.errstate(all="ignore"):
            v = var.astype(np.float64)
            gamma = w.get("gamma") if cfg.get("scale", True) else None
            g = np.abs(gamma.astype(np.float64)) if gamma is not None and gamma.shape == v.shape else 1.0
            fin = np.isfinite(v)
            negative = fin & ((v < 0) | (v + epsilon <= 0))
            zero = fin & (v == 0)
            gain = g / np.sqrt(np.where(v + epsilon > 0, v + epsilon, np.nan))
            loud = np.isfinite(gain) & (gain > MAX_GAIN)
        if negative.any():
            found.append(_finding(
                "DEGENERATE_VARIANCE", name,
                f"moving variance is negative in {int(negative.sum())} of {v.size} channels "
                f"(min {float(v[fin].min()):.4g}); a variance cannot be negative",
                severity=ERROR,
            ))
        elif zero.any() or loud.any():
            bits = []
            if zero.any():
                bits.append(f"moving variance is exactly 0 in {int(zero.sum())} of {v.size} channels")
            if loud.any():
                bits.append(
                    f"gain |gamma|/sqrt(variance + epsilon) exceeds {MAX_GAIN:g} in {int(loud.sum())} "
                    f"channels (max {float(gain[np.isfinite(gain)].max()):.4g}, epsilon {epsilon:g})"
                )
            found.append(_finding(
                "DEGENERATE_VARIANCE", name,
                "; ".join(bits) + ": the layer amplifies small deviations of its input",
            ))

    if mean is not None and var is not None and mean.size and var.size \
            and np.all(mean == 0) and np.all(var == 1):
        found.append(_finding(
            "STALE_STATS", name,
            "moving mean is all 0 and moving variance all 1 (their initial values): the statistics "
            "were never updated" + (" (TimeDistributed BN in Keras 2.0.x did not update them)" if wrapper else ""),
        ))

    if wrapper == "TimeDistributed":
        found.append(_finding(
            "TIMEDISTRIBUTED_BN", name,
            "BatchNormalization inside TimeDistributed: Keras 3 exports it unrolled per time step, "
            "and Keras 2.0.x never updated its moving statistics",
        ))

    if not trainable:
        found.append(_finding(
            "FROZEN_BN", name,
            "trainable=False: it runs in inference mode even during fit (TF2 / Keras 3), so its "
            "statistics come from the data it was first trained on",
        ))
    return found


def inspect(path, **read_options) -> Audit:
    """Read the model file ``path`` (``bnrewrite.io.read_model(path, **read_options)``) and audit it.

    Unsafe content is reported, not raised: every layer the data-only scan flags
    (:data:`SAFETY_CODES`), at any depth, is a finding -- even with ``unsafe=True``, since a
    CI gate wants to know. When the file cannot be read safely at all, the BN rows are
    empty and ``source["bn_audit"]`` says why."""
    from .errors import BnrewriteError
    from .io import read_config, read_model
    from .io.scan import scan_config

    custom = frozenset(read_options.get("custom_objects") or ())
    try:
        mg = read_model(path, **read_options)
    except BnrewriteError as e:
        if getattr(e, "code", None) is None:
            raise
        result = Audit(source={"path": str(path), "bn_audit": f"skipped: {e}"})
        try:
            config = read_config(path)
        except BnrewriteError:
            config = None
        if config is not None and e.code == "UNSAFE_LAMBDA_CODE" and _is_hdf5(path):
            # reading an .h5 never runs its bytecode (the graph is JSON + arrays), so the BN rows can
            # still be audited; a .keras is read through Keras, which would run it
            try:
                result = audit(read_model(path, **{**read_options, "unsafe": True}))
            except BnrewriteError:
                pass
        found = scan_config(config, custom_classes=custom) if config else []
        if not any(f["code"] == e.code for f in found):
            found.insert(0, {"code": e.code, "layer": "(file)", "message": str(e)})
        result.findings.extend(_safety_finding(f) for f in found)
        return result
    result = audit(mg)
    config = mg.original.config if mg.original is not None else None
    if config:
        result.findings.extend(_safety_finding(f) for f in scan_config(config, custom_classes=custom))
    return result


def inspect_record(path, **read_options) -> tuple[dict, Audit]:
    """:func:`inspect` as a CI record (docs/report-schema.md, ``kind: "inspect"``) and the :class:`Audit`.

    The record has the schema version, the installed versions, the input's path, size and sha256,
    ``bn_layers`` and ``findings`` (as :meth:`Audit.to_dict`), counts per severity, the worst
    severity, timings, and ``error``/``exit_code`` (None and 0 here; the CLI sets 4 for ``--strict``)."""
    import time

    t0 = time.perf_counter()
    result = inspect(path, **read_options)
    record = _record_head(path)
    source = {k: _json_value(v) for k, v in result.source.items()
              if k != "notes" and isinstance(v, (str, int, float, bool, type(None)))}
    record["input"] = {**source, **record["input"]}
    record.update(result.to_dict())
    record["counts"] = {"bn_layers": len(result.bn_layers),
                        **{s: sum(f["severity"] == s for f in result.findings) for s in (ERROR, WARNING, INFO)}}
    record["worst_severity"] = result.worst_severity
    record["timings"] = {"inspect_s": time.perf_counter() - t0}
    return record, result


def failed_record(path, error: BaseException, exit_code: int | None = None) -> dict:
    """The CI record of an ``inspect`` that failed (unreadable file, ...): ``error`` set, no rows."""
    from .report import error_record

    record = _record_head(path)
    record.update(bn_layers=[], findings=[], counts=None, worst_severity=None, timings={})
    record["error"] = error_record(error, exit_code)
    record["exit_code"] = record["error"]["exit_code"]
    return record


def _record_head(path) -> dict:
    import os

    from .report import SCHEMA_VERSION, sha256_file, versions

    try:
        size = os.stat(path).st_size if os.path.isfile(path) else None
    except OSError:
        size = None
    return {"schema_version": SCHEMA_VERSION, "kind": "inspect", "exit_code": 0, "error": None,
            "versions": versions(), "input": {"path": str(path), "bytes": size, "sha256": sha256_file(path)}}


def _is_hdf5(path) -> bool:
    import os

    from .io.safe_files import sniff

    return isinstance(path, (str, os.PathLike)) and sniff(path) == "hdf5"


def _safety_finding(f: dict) -> dict:
    severity, hint = SAFETY_CODES.get(f["code"], (ERROR, ""))
    return {"code": f["code"], "layer": f["layer"], "severity": severity, "message": f["message"], "hint": hint}


def compare(before: Audit, after: Audit, *, calibrated: Iterable[str] = (),
            min_severity: str = WARNING) -> dict:
    """Which findings of ``before`` a conversion fixed.

    Returns ``{"fixed": [...], "remaining": [...], "new": [...]}``, each a list of
    ``{"code", "layer", "message"}``. Only findings of at least ``min_severity``
    count (by default warnings and errors; ``FROZEN_BN`` is advice, not a defect).
    A finding is identified by ``(code, layer)``:

    * still in ``after``: **remaining**;
    * its layer is still a BN in ``after`` and the rule no longer fires: **fixed**;
    * its layer is no longer a BN in ``after`` (folded into its neighbour or
      unwrapped under another name): structural findings (``TRAINING_BAKED_IN``,
      ``TIMEDISTRIBUTED_BN``) are **fixed**; weight findings (``STALE_STATS``,
      ``NONFINITE_STATS``, ``DEGENERATE_VARIANCE``) are **remaining**, because
      folding keeps the layer's function and so the bad statistics, unless the
      layer is in ``calibrated`` (its statistics were re-estimated) and the code
      is one that re-estimation fixes (``STALE_STATS``).

    ``new`` lists findings of ``after`` that ``before`` did not have.
    """
    rank = SEVERITY_RANK[min_severity]
    calibrated = set(calibrated)

    def counted(a: Audit) -> dict[tuple[str, str], dict]:
        return {(f["code"], f["layer"]): f for f in a.findings if SEVERITY_RANK[f["severity"]] >= rank}

    def brief(f: dict, note: str = "") -> dict:
        return {"code": f["code"], "layer": f["layer"], "message": f["message"] + note}

    b, a = counted(before), counted(after)
    after_bn = {r["name"] for r in after.bn_layers}
    fixed, remaining = [], []
    for key, f in b.items():
        code, layer = key
        if key in a:
            remaining.append(brief(a[key]))
        elif layer in after_bn:
            fixed.append(brief(f))
        elif code in WEIGHT_CODES and not (layer in calibrated and code in CALIBRATION_FIXES):
            remaining.append(brief(f, " (the layer was folded away; its statistics live on in the folded weights)"))
        else:
            fixed.append(brief(f))
    new = [brief(f) for key, f in a.items() if key not in b]
    return {"fixed": fixed, "remaining": remaining, "new": new}


__all__ = ["Audit", "audit", "inspect", "inspect_record", "failed_record", "compare", "CODES", "MAX_GAIN", "INFO", "WARNING", "ERROR"]
