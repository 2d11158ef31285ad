"""The convert pipeline: read -> passes -> rebuild -> write -> verify against the original.

The rewritten graph is rebuilt by the framework that wrote the input (tf_keras for
Keras 2.x / tf.keras files, Keras 3 for Keras 3 files); only a ``.keras`` output of a
legacy file goes through the Keras 2 -> 3 migration (:mod:`bnrewrite.build.migrate`).
The written file is verified against the original model as its own framework reads
it (:mod:`bnrewrite.reference`), and against the rewritten model.

Files are handled as a deployment step must handle them: the input is only
ever opened for reading; the output is written to a temporary file in the
destination folder, verified there, and only then renamed into place, so a
crash or a failed verification leaves no partial or unverified output.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import InputError, VerificationError
from .graph import ModelGraph, framework_label
from .io import WRITE_SUFFIXES, read_model
from .io.data import with_options
from .io.onnx_writer import DEFAULT_OPSET
from .outputs import check_interrupted, discard, place
from .passes import PASS_OPTIONS, CalibrateBN, Pass, PassContext, PassManager, default_passes


@dataclass
class ConvertReport:
    """What was read, what was done, and how the output verified."""

    input: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    passes: list[dict] = field(default_factory=list)
    calibration: dict | None = None
    migration: list[str] | None = None
    verification: dict | None = None
    findings: dict | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    ok: bool = False
    #: CI fields (docs/report-schema.md), filled by :func:`bnrewrite.report.finalize_convert`
    schema_version: int = 1
    versions: dict = field(default_factory=dict)
    error: dict | None = None
    exit_code: int | None = None

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version, "kind": "convert", "ok": self.ok, "exit_code": self.exit_code,
            "error": self.error, "versions": self.versions,
            "input": self.input, "output": self.output, "passes": self.passes,
            "calibration": self.calibration, "migration": self.migration, "verification": self.verification,
            "findings": self.findings, "notes": self.notes, "timings": self.timings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def output_format(dst: Path) -> str:
    suffix = dst.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise InputError(
            f"{dst}: unknown output suffix {dst.suffix!r} (expected one of {', '.join(WRITE_SUFFIXES)})"
        )
    return suffix[1:]


def check_paths(src, dst, force: bool, report=None, *, inputs=()) -> None:
    """Refuse what would lose data, before any work is done.

    ``src`` must exist; ``dst`` (and ``report``, when given) must not be ``src``
    or any of ``inputs`` (calibration data, ``--custom-objects`` file), nor each
    other, nor a directory, FIFO or device, nor exist without ``force``, and
    their folders must exist and be writable (:func:`bnrewrite.outputs.check_outputs`).
    """
    from .outputs import check_outputs

    from .io.memory import is_model

    live = is_model(src)  # a live model object: nothing to protect on disk
    src, dst = (src if live else Path(src)), Path(dst)
    output_format(dst)
    if not live and not src.exists():
        raise InputError(f"{src}: no such file")
    check_outputs([(dst, "output"), (report, "--report")], inputs=[*([] if live else [src]), *inputs], force=force)


def atomic_write(dst: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary path beside ``dst``; return the temp path.

    The caller places it (:func:`bnrewrite.outputs.place`, no-clobber unless
    ``force``) once it is verified, or removes it (:func:`bnrewrite.outputs.discard`).
    The temporary file (``.NAME.bnrewrite-tmp-XXXXXXXX.suffix``: Keras picks the
    format from the suffix) is registered, so a stop signal removes it too.
    """
    from .outputs import write_temp

    return write_temp(dst, write)


def write_text_atomic(dst: Path, text: str, force: bool = False) -> None:
    """Write ``text`` to ``dst`` through a temporary file; an existing ``dst`` only with ``force``."""
    from .outputs import write_text

    write_text(dst, text, force=force)


def check_finite(mg: ModelGraph, *, skip_bn_stats: bool = False) -> None:
    """Refuse weights with NaN or inf (exit 2): every output they touch would be NaN.

    ``inspect`` reports the same for BN statistics as the finding ``NONFINITE_STATS``.
    ``skip_bn_stats`` leaves BN moving statistics to a later check (calibration
    replaces them).
    """
    import numpy as np

    for name, layer in mg.layers().items():
        for key, value in layer.weights.items():
            if skip_bn_stats and key in ("moving_mean", "moving_variance"):
                continue
            a = np.asarray(value)
            if a.dtype.kind in "fc" and not np.isfinite(a).all():
                bad = int((~np.isfinite(a)).sum())
                kinds = "/".join(k for k, hit in (("NaN", np.isnan(a).any()), ("inf", np.isinf(a).any())) if hit)
                where = f"{mg.source['path']}: " if mg.source.get("path") else ""
                raise InputError(
                    f"{where}layer {name!r} ({layer.class_name}): weight {key!r} has {bad} {kinds} value"
                    f"{'s' if bad != 1 else ''} of {a.size}; refusing to convert non-finite weights"
                    + (" (`bnrewrite inspect`: NONFINITE_STATS)" if layer.class_name == "BatchNormalization" else "")
                )


def choose_passes(passes: Iterable[Pass] | None, options: dict) -> list[Pass]:
    """The default pipeline configured from ``options``, or the caller's own list. Options that
    configure the default passes are refused beside an explicit list rather than ignored: they
    belong to the passes' constructors there (``FoldBN(keep_trainable=True)``, ``CalibrateBN(data)``)."""
    if passes is None:
        return default_passes(**options)
    given = [k for k, default in PASS_OPTIONS.items()
             if (options.get(k) is not None if default is None else options.get(k, default) != default)]
    if given:
        raise InputError(
            f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} the default passes; with passes=[...] "
            "give such options to the passes themselves (e.g. FoldBN(keep_trainable=True), CalibrateBN(data))"
        )
    return list(passes)


def run_passes(mg: ModelGraph, chosen: list[Pass], ctx: PassContext) -> list[dict]:
    results = [r.to_dict() for r in PassManager(chosen).run(mg, ctx)]
    ctx.artifacts["changes_function"] = [p.name for p, r in zip(chosen, results)
                                         if getattr(p, "changes_function", False) and r["changed"]]
    return results


def convert(
    src,
    dst,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float | None = None,
    rtol: float | None = None,
    verify: bool = True,
    force: bool = False,
    passes: Iterable[Pass] | None = None,
    fold: bool = True,
    keep_trainable: bool = False,
    keep_timedistributed: bool = False,
    unsafe: bool = False,
    custom_objects: dict | None = None,
    calibration=None,
    preprocess: str | None = None,
    tfrecord_feature: str | None = None,
    batch_size: int | None = None,
    max_samples: int | None = None,
    variance: str = "unbiased",
    cache_mb: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_spill_gb: float | None = None,
    engine: str = "local",
    shards: int = 1,
    report: str | os.PathLike | None = None,
    input_shapes: dict | None = None,
    verify_data=None,
    allow_no_reference: bool = False,
    progress: Callable[[str], None] | None = None,
    calibration_progress: Callable[[int, int | None], None] | None = None,
    **extra,
) -> ConvertReport:
    """Convert a Keras model file ``src`` to ``dst`` (``.onnx``, ``.keras`` or ``.h5``).

    ``src`` may also be a live Keras 3 ``keras.Model`` or tf_keras ``Model`` (Functional or
    Sequential; :mod:`bnrewrite.io.memory`): it is only read, and the output is verified
    against a copy of it made by its own framework.

    ``passes`` replaces the default pass list (``bnrewrite.passes.default_passes``);
    ``fold=False`` and ``keep_timedistributed=True`` switch default passes off,
    ``keep_trainable`` and ``calibration`` configure them. With an explicit
    ``passes`` list those four are refused (InputError): each pass takes its
    options when constructed (``FoldBN(keep_trainable=True)``, ``CalibrateBN(data)``).

    ``calibration`` turns on AdaBN (the ``calibrate_bn`` pass): every BN's moving
    mean and variance are re-estimated exactly on that data -- a numpy array, a
    dict of arrays by input name, an iterable of batches, a ``tf.data.Dataset``,
    or a path to a ``.npy``/``.npz`` file or a folder of them (see
    :mod:`bnrewrite.io.data`), a ``.tfrecord`` file of ``tf.train.Example`` records
    read for the feature ``tfrecord_feature``, or a folder of ``.png``/``.jpg`` images (resized to the
    input, then ``preprocess``: ``"scale"`` (default) [0, 1], ``"tf"``, ``"torch"``,
    ``"caffe"`` as in ``keras.applications``, or ``"none"``), read ``batch_size`` samples at a time (default: the power of two,
    32 to 256, that brings the largest activation of a batch nearest to 128 MiB), at most
    ``max_samples``; ``variance`` is ``"unbiased"`` (n-1) or ``"biased"`` (n);
    cached activations use up to ``cache_mb`` of RAM (default: half the available
    memory, at least 1024 MiB), then spill to disk.
    ``engine`` (``"local"``, ``"ray"`` or ``"ray:ADDRESS"``) and ``shards`` spread
    calibration over processes or machines (:mod:`bnrewrite.engines`); the
    statistics are the same for any engine and shard count.
    ``calibration_progress(done, total[, where])`` is called as batches finish
    (``where``: level and batch, see :func:`bnrewrite.calibration.calibrate`).
    ``input_shapes`` (``{"input": [64, 64, 3]}``, sample dims) sets the sizes of open
    dimensions for verification; ``verify_data`` verifies on real samples instead of
    seeded random ones (same sources as ``calibration``; an image folder or TFRecord
    file is read with ``preprocess`` and ``tfrecord_feature``, as for calibration).
    When the writing framework cannot rebuild the original (no independent reference),
    verification fails unless ``allow_no_reference``: a comparison with bnrewrite's own
    rebuild alone cannot find bnrewrite's bugs.
    Returns a :class:`ConvertReport`; raises :class:`~bnrewrite.errors.InputError`
    (exit 2) for bad input and :class:`~bnrewrite.errors.VerificationError`
    (exit 3) when the written output does not match. ``report`` also writes the
    report as JSON, success or not.
    """
    from .io.memory import is_model

    src, dst = (src if is_model(src) else Path(src)), Path(dst)
    say = progress or (lambda msg: None)
    if input_shapes is not None:
        from .verify import parse_input_shapes

        pairs = input_shapes.items() if isinstance(input_shapes, dict) else None
        if pairs is None and all(isinstance(i, str) for i in input_shapes):  # the CLI's NAME:D1,D2 items
            input_shapes = parse_input_shapes(input_shapes)
        else:
            input_shapes = {str(k): [int(d) for d in v] for k, v in (pairs or input_shapes)}
    rep = ConvertReport()
    t0 = time.perf_counter()
    scope = contextlib.ExitStack()
    try:
        check_paths(src, dst, force, report,
                    inputs=[calibration if isinstance(calibration, (str, os.PathLike)) else None,
                            verify_data if isinstance(verify_data, (str, os.PathLike)) else None])
        fmt = output_format(dst)
        options = {
            "fold": fold, "keep_trainable": keep_trainable, "keep_timedistributed": keep_timedistributed,
            "calibration": calibration, "preprocess": preprocess, "tfrecord_feature": tfrecord_feature,
            "batch_size": batch_size, "max_samples": max_samples, "variance": variance, "cache_mb": cache_mb,
            "cache_dir": cache_dir, "max_spill_gb": max_spill_gb, "engine": engine, "shards": shards,
            "custom_objects": custom_objects, "calibration_progress": calibration_progress,
            "output_format": fmt, **extra,
        }
        chosen = choose_passes(passes, options)
        calibrating = any(isinstance(p, CalibrateBN) for p in chosen)
        say(f"reading {src}")
        mg = read_model(src, unsafe=unsafe, custom_objects=custom_objects)
        check_finite(mg, skip_bn_stats=calibrating)
        from .build import rebuild_options

        # custom layers and (with unsafe) Lambda bytecode for every rebuild: passes, writer, verification
        scope.enter_context(rebuild_options(custom_objects, unsafe))
        rep.input = {**{k: v for k, v in mg.source.items() if k != "notes"}, **mg.summary()}
        rep.notes.extend(mg.source.get("notes", []))
        atol, rtol = _tolerances(mg, atol, rtol, rep.notes if verify else [])
        rep.timings["read_s"] = time.perf_counter() - t0

        ctx = PassContext(options=options)
        from .audit import audit, compare

        before = audit(mg)
        check_interrupted()
        t = time.perf_counter()
        say("running passes")
        rep.passes = run_passes(mg, chosen, ctx)
        rep.timings["passes_s"] = time.perf_counter() - t
        if calibrating:
            check_finite(mg)  # statistics calibration did not replace
        rep.calibration = ctx.artifacts.get("calibration")
        calibrated = [r["layer"] for r in (rep.calibration or {}).get("layers", [])]
        rep.findings = compare(before, audit(mg), calibrated=calibrated)

        t = time.perf_counter()
        target = mg
        if fmt == "keras" and mg.framework == "tf_keras":
            from .build.migrate import migrate

            say("migrating the Keras 2 model to Keras 3")
            target, rep.migration = migrate(mg)
        if fmt == "h5" and target.framework == "keras":
            _check_keras3_h5(target)
        from .build import build_model, builder

        say(f"rebuilding the model in {builder(target).label}")
        model = build_model(target, custom_objects)
        from .verify import check_tensor_bytes

        check_tensor_bytes(model)  # before export or verification allocates anything
        rep.timings["rebuild_s"] = time.perf_counter() - t

        check_interrupted()
        t = time.perf_counter()
        say(f"writing {fmt}")
        tmp = _write(model, dst, fmt, opset, rep)
        rep.output["framework"] = target.framework
        rep.timings["write_s"] = time.perf_counter() - t
        try:
            if verify:
                t = time.perf_counter()
                say("verifying against the original model")

                def verify_tmp():
                    return _verify(mg, model, tmp, fmt, target.framework, atol=atol, rtol=rtol,
                                   custom_objects=custom_objects, unsafe=unsafe, input_shapes=input_shapes,
                                   verify_data=with_options(verify_data, preprocess, tfrecord_feature),
                                   stats=ctx.artifacts.get("calibrated_stats"),
                                   changed_by=ctx.artifacts.get("changes_function"),
                                   allow_no_reference=allow_no_reference)

                v = verify_tmp()
                if not v.ok and v.export_differs and fmt == "onnx":
                    # tf2onnx's layout optimizer (NHWC <-> NCHW transposes, some turned into reshapes) can
                    # write a wrong graph; the export without it is slower but what the model computes
                    check_interrupted()
                    first = v.failure()
                    say("verification failed; exporting again without tf2onnx's transpose optimizer")
                    discard(tmp)
                    tmp = _write(model, dst, fmt, opset, rep, transpose_optimizer=False)
                    v = verify_tmp()
                    if v.ok:
                        rep.notes.append(f"tf2onnx's transpose optimizer wrote a graph that failed verification "
                                         f"({first}); the file was exported without that optimizer and verified")
                    else:
                        v.error = f"{v.failure()} (also without tf2onnx's transpose optimizer; with it: {first})"
                rep.verification = v.to_dict()
                rep.timings["verify_s"] = time.perf_counter() - t
                check_interrupted()
                if not v.ok:
                    raise VerificationError(f"verification failed: {v.failure()}", report=rep)
            place(tmp, dst, force=force)  # refuses to clobber a file that appeared meanwhile
        finally:
            discard(tmp)
        rep.output["path"] = str(dst)
        rep.output["bytes"] = dst.stat().st_size
        rep.ok = True
        return rep
    except VerificationError as e:
        rep.notes.append(str(e))
        raise
    finally:
        scope.close()
        rep.timings["total_s"] = time.perf_counter() - t0
        # Bad input (exit 2) writes nothing here (the CLI writes its own report for it); success and
        # failed verification write the report. The failure carries the report (``e.report``).
        # Nothing more is written once a stop signal (SIGINT/SIGTERM/SIGHUP) arrived.
        import sys

        from .outputs import interrupted
        from .report import finalize_convert

        failure = sys.exc_info()[1]
        if isinstance(failure, Exception) and getattr(failure, "report", None) is None:
            with contextlib.suppress(AttributeError):
                failure.report = rep
        if report is not None and (rep.ok or rep.verification is not None) and interrupted() is None:
            finalize_convert(rep, src, dst, error=failure if isinstance(failure, Exception) else None)
            write_text_atomic(Path(report), rep.to_json(), force=force)


def _tolerances(mg: ModelGraph, atol, rtol, notes: list) -> tuple[float, float]:
    """Verification tolerances: those given, else the default for the precision the model computes in."""
    from .verify import default_tolerance

    default, why = default_tolerance(mg)
    if why and (atol is None or rtol is None):
        notes.append(why)
    return (default if atol is None else atol), (default if rtol is None else rtol)


def _verify(mg: ModelGraph, model, tmp: Path, fmt: str, framework: str, *, atol, rtol, custom_objects, unsafe,
            input_shapes, verify_data, stats, changed_by=None, allow_no_reference=False):
    """Verify the written temp file against the original model (and the rewritten one)."""
    from .errors import root_cause
    from .verify import Verification, keras_runner, onnx_runner, verify

    reference, label, why = _reference(mg, custom_objects, unsafe, stats, changed_by)
    runtime = "onnxruntime" if fmt == "onnx" else ("tf_keras" if framework == "tf_keras" else "keras")
    try:
        run, names = onnx_runner(tmp) if fmt == "onnx" else keras_runner(
            tmp, framework, custom_objects=custom_objects, unsafe=unsafe)
    except Exception as e:
        v = Verification(runtime=runtime, atol=atol, rtol=rtol, batch=4, seed=0, reference=label, no_reference=why)
        v.error = f"{runtime} could not load the written model: {root_cause(e)}"
        return v
    v = verify(run, runtime, model, reference, atol=atol, rtol=rtol, input_shapes=input_shapes,
               verify_data=verify_data, reference_label=label, no_reference=why, names=names,
               index_inputs=embedding_inputs(mg), unsafe=unsafe)
    return _require_reference(v, changed_by, allow_no_reference)


def _require_reference(v, changed_by, allow: bool):
    """No independent reference fails verification, unless allowed or a pass changes the function on purpose:
    the rewritten model alone is bnrewrite's own translation, and comparing with it cannot find its bugs."""
    if v.no_reference and not changed_by and not allow and v.ok:
        v.error = (f"no independent reference ({v.no_reference}): the output matches only bnrewrite's own "
                   "rebuild, which cannot find bnrewrite's bugs; --allow-no-reference (API: allow_no_reference=True) "
                   "accepts that")
    return v


def embedding_inputs(mg: ModelGraph) -> dict[str, int]:
    """Model inputs read by an ``Embedding`` (also inside TimeDistributed): name -> the
    smallest ``input_dim`` among them (valid token ids are below it)."""
    out: dict[str, int] = {}
    for n in mg.inputs:
        for c, _ in mg.consumers(n):
            lay = mg.layer(c)
            cfg = lay.config if lay.class_name == "Embedding" else (lay.inner or {}).get("config", {}) \
                if (lay.inner or {}).get("class_name") == "Embedding" else None
            if cfg and cfg.get("input_dim"):
                name = mg.layer(n).name
                out[name] = min(out.get(name, 1 << 62), int(cfg["input_dim"]))
    return out


def _check_keras3_h5(mg: ModelGraph) -> None:
    """Keras 3's HDF5 format stores layers only: an op node (``keras.ops.*`` recorded in the
    file, or a reshape a pass made) could be written but never loaded back."""
    from .errors import UnsupportedModelError
    from .graph import is_op
    from .io.layercheck import is_keras_op

    for node in mg.topo():
        lay = mg.layer(node)
        if is_op(lay) or is_keras_op(lay.module):
            made = " (made by unwrapping TimeDistributed; --keep-timedistributed avoids it)" if is_op(lay) else ""
            raise UnsupportedModelError(
                f"Keras 3's .h5 format cannot store the op node {lay.name!r} ({lay.class_name}){made}: "
                "Keras could not load the file back; write .keras or .onnx instead")


def _reference(mg: ModelGraph, custom_objects, unsafe, stats, changed_by):
    """``(reference model or None, what it is, why there is none)``."""
    from .reference import NoReference, build_reference, set_statistics

    if changed_by:
        return None, "", f"pass {', '.join(changed_by)} changes the model's function on purpose (changes_function)"
    from .io.budget import graph_budget

    try:
        with graph_budget(mg, getattr(mg.original, "framework", None)):
            reference = build_reference(mg.original, custom_objects=custom_objects, unsafe=unsafe)
    except NoReference as e:
        return None, "", str(e)
    if stats:
        set_statistics(reference, stats)
    who = framework_label(mg.original.framework)
    if mg.original.format == "memory":
        return reference, f"{who} copy of the original in-memory model", None
    if mg.original.format == "savedmodel":
        return reference, f"{who} reading of the original SavedModel (its Keras metadata + variables/)", None
    return reference, f"{who} reading of the original file", None


def _write(model, dst: Path, fmt: str, opset: int, rep: ConvertReport, transpose_optimizer: bool = True) -> Path:
    rep.output = {"path": str(dst), "format": fmt}
    if fmt == "onnx":
        import onnx

        from .io.onnx_writer import onnx_metadata, to_onnx

        proto = to_onnx(model, opset=opset, metadata=onnx_metadata(rep), transpose_optimizer=transpose_optimizer)
        ops: dict[str, int] = {}
        for n in proto.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        rep.output.update(opset=opset, nodes=len(proto.graph.node), ops=dict(sorted(ops.items())),
                          inputs=[i.name for i in proto.graph.input],
                          outputs=[o.name for o in proto.graph.output])
        return atomic_write(dst, lambda p: onnx.save(proto, str(p)))
    rep.output["keras_layers"] = len(model.layers)
    try:
        return atomic_write(dst, lambda p: model.save(str(p)))
    except OSError:
        raise  # the disk, not the model: surfaces as it is
    except Exception as e:
        raise _save_error(model, fmt, e) from e


def _save_error(model, fmt: str, e: Exception):
    """The framework could not write the model in ``fmt`` (e.g. Keras 3's .h5 writer deep-copies each
    layer's config, and some layers' configs hold modules): one line, naming the layer when its
    config alone fails that copy."""
    import copy

    from .errors import UnsupportedModelError, root_cause

    where = ""
    for lay in getattr(model, "layers", []):
        try:
            copy.deepcopy(lay.get_config())
        except Exception:
            where = f" (layer {lay.name!r}, {type(lay).__name__}: its config cannot be copied)"
            break
    other = "write .keras or .onnx instead" if fmt == "h5" else "write .onnx or .h5 instead"
    return UnsupportedModelError(f"the model cannot be written as .{fmt}{where}: {root_cause(e)}; {other}")


def load(path, *, unsafe: bool = False, custom_objects: dict | None = None) -> ModelGraph:
    """Read a Keras model file (or a live Keras 3 / tf_keras model) into a
    :class:`~bnrewrite.graph.ModelGraph` (``.graph`` is networkx)."""
    return read_model(path, unsafe=unsafe, custom_objects=custom_objects)


def rewrite(
    model,
    *,
    passes: Iterable[Pass] | None = None,
    fold: bool = True,
    keep_trainable: bool = False,
    keep_timedistributed: bool = False,
    unsafe: bool = False,
    custom_objects: dict | None = None,
    calibration=None,
    preprocess: str | None = None,
    tfrecord_feature: str | None = None,
    batch_size: int | None = None,
    max_samples: int | None = None,
    variance: str = "unbiased",
    cache_mb: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_spill_gb: float | None = None,
    engine: str = "local",
    shards: int = 1,
    verify: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    input_shapes: dict | None = None,
    verify_data=None,
    allow_no_reference: bool = False,
    return_report: bool = False,
    **extra,
):
    """A new in-memory model of ``model``'s framework with the passes applied (and AdaBN with
    ``calibration``), as :func:`convert` would write it, without a file.

    ``model`` is a live Keras 3 ``keras.Model`` or tf_keras ``Model`` (Functional or
    Sequential), or a model path. It is only read: the caller's model keeps its weights and
    predictions. The new model is verified like a written file, against the framework's own
    copy of the original (call-site ``training`` flags removed, calibrated statistics put in);
    a mismatch raises :class:`~bnrewrite.errors.VerificationError`. With ``return_report``
    the result is ``(new model, ConvertReport)``.
    """
    from .build import build_model, rebuild_options
    from .verify import keras_run
    from .verify import verify as run_verify

    rep = ConvertReport()
    t0 = time.perf_counter()
    if input_shapes is not None:
        input_shapes = {str(k): [int(d) for d in v] for k, v in input_shapes.items()}
    options = {
        "fold": fold, "keep_trainable": keep_trainable, "keep_timedistributed": keep_timedistributed,
        "calibration": calibration, "preprocess": preprocess, "tfrecord_feature": tfrecord_feature,
        "batch_size": batch_size, "max_samples": max_samples, "variance": variance, "cache_mb": cache_mb,
        "cache_dir": cache_dir, "max_spill_gb": max_spill_gb, "engine": engine, "shards": shards,
        "custom_objects": custom_objects, **extra,
    }
    chosen = choose_passes(passes, options)
    calibrating = any(isinstance(p, CalibrateBN) for p in chosen)
    with rebuild_options(custom_objects, unsafe):
        mg = read_model(model, unsafe=unsafe, custom_objects=custom_objects)
        check_finite(mg, skip_bn_stats=calibrating)
        rep.input = {**{k: v for k, v in mg.source.items() if k != "notes"}, **mg.summary()}
        rep.notes.extend(mg.source.get("notes", []))
        atol, rtol = _tolerances(mg, atol, rtol, rep.notes if verify else [])
        ctx = PassContext(options=options)
        from .audit import audit, compare

        before = audit(mg)
        rep.passes = run_passes(mg, chosen, ctx)
        if calibrating:
            check_finite(mg)
        rep.calibration = ctx.artifacts.get("calibration")
        calibrated = [r["layer"] for r in (rep.calibration or {}).get("layers", [])]
        rep.findings = compare(before, audit(mg), calibrated=calibrated)
        new = build_model(mg, custom_objects)
        rep.output = {"format": "memory", "framework": mg.framework, "keras_layers": len(new.layers)}
        if verify:
            reference, label, why = _reference(mg, custom_objects, unsafe, ctx.artifacts.get("calibrated_stats"),
                                               ctx.artifacts.get("changes_function"))
            v = run_verify(keras_run(new), mg.framework, new, reference, atol=atol, rtol=rtol,
                           input_shapes=input_shapes, reference_label=label,
                           verify_data=with_options(verify_data, preprocess, tfrecord_feature),
                           no_reference=why)
            v = _require_reference(v, ctx.artifacts.get("changes_function"), allow_no_reference)
            rep.verification = v.to_dict()
            if not v.ok:
                raise VerificationError(f"verification failed: {v.failure()}", report=rep)
    rep.ok = True
    rep.timings["total_s"] = time.perf_counter() - t0
    return (new, rep) if return_report else new
