"""Command line: ``bnrewrite convert`` and ``bnrewrite inspect``.

Exit codes: 0 ok, 2 usage or bad input, 3 verification failed, 4 ``inspect
--strict`` found warnings/errors, 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP
(temporary files removed). Errors are one line on stderr; ``-v`` adds the
traceback and TensorFlow's own logging.

Text from model files, data and frameworks (layer names, config values,
paths, error messages) is printed through :func:`bnrewrite.textsafe.clean`:
control characters escaped, rich markup escaped, long values cut.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
import warnings

import click

from .errors import EXIT_BAD_INPUT, BnrewriteError, Interrupted, unexpected
from .textsafe import clean, for_console

_VERBOSE = False
ERROR_LIMIT = 1000  # characters of an error message shown (file-controlled text can be huge)


@contextlib.contextmanager
def _stderr_silenced(active: bool):
    """Silence C-level stderr (TensorFlow's start-up logging) while importing it."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _prepare_runtime(verbose: bool) -> None:
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore")
    with _stderr_silenced(not verbose):
        import logging

        import keras  # noqa: F401  (imports TensorFlow)
        import tensorflow as tf

        if not verbose:
            tf.get_logger().setLevel(logging.ERROR)
            logging.getLogger("tf2onnx").setLevel(logging.ERROR)
            try:
                import absl.logging

                absl.logging.set_verbosity(absl.logging.ERROR)
            except ImportError:
                pass


def _fail(e: BaseException, code: int) -> None:
    if _VERBOSE:
        traceback.print_exc()
    text = str(e).strip()
    # The first line of a framework's multi-line message; only a real newline ends it: a CR or
    # other control character inside a file-controlled name stays, escaped by clean().
    msg = text.split("\n", 1)[0].rstrip("\r") if text else type(e).__name__
    click.echo(f"bnrewrite: error: {clean(msg, ERROR_LIMIT, tail=300)}", err=True)
    sys.exit(code)


def _stopped(signum: int | None) -> None:
    """A stop signal (or Ctrl-C): temporaries are gone; one line; exit 128 + signal number."""
    signum = int(signum or signal.SIGINT)
    if _VERBOSE:
        traceback.print_exc()
    else:  # objects the stop cut short (a ZipFile mid-__init__) report their cleanup at gc: not news
        sys.unraisablehook = lambda unraisable: None
    stop = Interrupted(signum)
    click.echo(stop.stop_line, err=True)
    sys.exit(stop.exit_code)


def _run(fn):
    """Run a command body, mapping errors to one line and an exit code.

    SIGINT, SIGTERM and SIGHUP raise :class:`~bnrewrite.errors.Interrupted`
    while it runs; on any failure every temporary file and folder bnrewrite
    made is removed (:func:`bnrewrite.outputs.remove_temps`) before exiting.
    """
    from . import outputs

    with outputs.handle_signals():
        try:
            return fn()
        except KeyboardInterrupt as e:  # Interrupted (a stop signal) or a plain Ctrl-C
            outputs.exiting()
            outputs.remove_temps()
            _stopped(getattr(e, "signum", None) or outputs.interrupted())
        except BnrewriteError as e:
            outputs.exiting()
            outputs.remove_temps()
            if outputs.interrupted():
                _stopped(outputs.interrupted())
            _fail(e, e.exit_code)
        except Exception as e:  # a bug or an unforeseen input: still one line, exit 2
            outputs.exiting()
            outputs.remove_temps()
            if outputs.interrupted():  # a framework turned our interrupt into its own error
                _stopped(outputs.interrupted())
            _fail(unexpected(e), EXIT_BAD_INPUT)
        finally:
            outputs.exiting()  # a signal from here on is too late to stop anything
            outputs.remove_temps()  # anything left registered is a leftover


def _on_failure(body, record):
    """``body`` calling ``record(e)`` on a failure (not on a stop signal) before :func:`_run` reports it."""
    def run():
        try:
            return body()
        except Exception as e:
            record(e)
            raise

    return run


class _Group(click.Group):
    """Usage errors (bad option, bad value, missing argument) as one ``bnrewrite: error:`` line, exit 2."""

    def main(self, args=None, prog_name="bnrewrite", **extra):
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError:
            _usage_error("missing command (convert or inspect); see bnrewrite --help")
        except click.UsageError as e:
            _usage_error(e.format_message())
        except click.ClickException as e:  # e.g. click.FileError
            _usage_error(e.format_message())
        except click.exceptions.Abort:
            click.echo("bnrewrite: interrupted (SIGINT)", err=True)
            sys.exit(128 + signal.SIGINT)
        sys.exit(rv if isinstance(rv, int) else 0)


def _usage_error(message: str) -> None:
    from .errors import EXIT_BAD_INPUT

    text = " ".join(str(message).split("\n")[0].split()) or "usage error"
    click.echo(f"bnrewrite: error: {clean(text, ERROR_LIMIT)} (see --help)", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _version_option(f):
    return click.version_option(package_name="bnrewrite", prog_name="bnrewrite", message="%(prog)s %(version)s")(f)


def _verbosity_options(f):
    f = click.option("-v", "--verbose", is_flag=True, help="Tracebacks and TensorFlow logging on errors.")(f)
    return click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")(f)


def _flags(quiet: bool, verbose: bool) -> tuple[bool, bool]:
    """-q/-v given before the subcommand (``bnrewrite -v convert ...``) or after it."""
    root = click.get_current_context().find_root().params
    return bool(quiet or root.get("quiet")), bool(verbose or root.get("verbose"))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@_version_option
@_verbosity_options
def main(quiet, verbose):
    """Make Keras models safe to deploy where BatchNormalization is concerned.

    -q/-v/--version work before or after the command.
    """


# ---------------------------------------------------------------- option checks (usage errors, exit 2)
def _max_opset() -> tuple[int, str]:
    """The highest ONNX opset the installed tf2onnx can export, and its version."""
    from .io.onnx_writer import tf2onnx_max_opset

    return tf2onnx_max_opset()


MIN_OPSET = 9


def _check_opset(ctx, param, value):
    if value is None:
        return value
    top, version = _max_opset()
    if not MIN_OPSET <= value <= top:
        raise click.BadParameter(f"{value} is not in {MIN_OPSET}..{top} (the opsets tf2onnx {version} exports)")
    return value


def _check_tolerance(ctx, param, value):
    import math

    if value is None:
        return None  # not given: chosen from the model's compute precision (verify.default_tolerance)
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(f"{value} is not a tolerance (a finite number >= 0)")
    return value


def _progress(console):
    """A transient rich progress line: a spinner for stages, a bar while calibrating."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    # done/total and the time left (ETA) when the calibration data's size is known; rich shows "-:--:--"
    # for the ETA and "n/?" while the total is unknown (a generator, a tf.data.Dataset of unknown size)
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    transient=True, disable=console.quiet or not console.is_terminal)  # no bar in logs or with -q


def _check_cache_mb(value) -> float | None:
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise click.BadParameter(f"{value!r} is not 'auto' or a number of MB >= 0")
    return mb


def _check_engine(value: str) -> str:
    from .engines import parse_engine
    from .errors import InputError

    try:
        parse_engine(value)
    except InputError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _console(quiet: bool, stderr: bool = False):
    from rich.console import Console

    return Console(quiet=quiet, highlight=False, soft_wrap=True, stderr=stderr)


@main.command()
@click.argument("src", type=click.Path(dir_okay=True, path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option("--opset", default=17, show_default=True, type=int, callback=_check_opset,
              help="ONNX opset (9 up to the highest the installed tf2onnx exports, 18 for tf2onnx 1.17).")
@click.option("--atol", default=None, type=float, callback=_check_tolerance,
              help="Verification absolute tolerance (>= 0). Default: 1e-4; 1e-2 for a model that computes in "
                   "float16 (e.g. the mixed_float16 policy), 5e-2 in bfloat16.")
@click.option("--rtol", default=None, type=float, callback=_check_tolerance,
              help="Verification relative tolerance (>= 0). Default: as --atol.")
@click.option("--no-verify", is_flag=True, help="Skip verification of the written file.")
@click.option("--no-fold", is_flag=True, help="Keep BatchNormalization layers instead of folding them.")
@click.option("--keep-trainable", is_flag=True, help="Do not freeze BN layers in Keras outputs.")
@click.option("--keep-timedistributed", is_flag=True, help="Do not unwrap TimeDistributed layers.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
              help="Write the conversion report as JSON to this file ('-': stdout, and nothing else goes "
                   "there). Written for failures too (exit 2, 3, 4) once the report path itself is checked.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write a self-contained HTML report (plots inline, no network) to this file.")
@click.option("--fail-on", "fail_on", type=click.Choice(["warning", "error"]),
              help="Exit 4 when findings of this severity (or worse) remain after the conversion or were "
                   "created by it.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers that carry Python code (trusted files only).")
@click.option("--custom-objects", "custom_path", type=click.Path(dir_okay=False, path_type=str),
              help="Python file defining the model's custom layer classes (the file is executed).")
@click.option("--calibration", "calibration", type=click.Path(path_type=str),
              help="Re-estimate every BN's statistics (AdaBN) on this .npy/.npz file, folder of shards, "
                   "folder of .png/.jpg images, or .tfrecord file (with --tfrecord-feature).")
@click.option("--preprocess", type=click.Choice(["scale", "tf", "torch", "caffe", "none"]),
              help="For a --calibration folder of images: scale (default, x/255), or as keras.applications: "
                   "tf ([-1, 1]), torch (x/255, ImageNet mean/std), caffe (BGR minus ImageNet means); "
                   "none: raw 0-255.")
@click.option("--tfrecord-feature", "tfrecord_feature", metavar="NAME",
              help="For --calibration .tfrecord/.tfrec data: the tf.train.Example feature to read "
                   "(float_list/int64_list reshaped to the input, PNG/JPEG bytes as images with --preprocess, "
                   "or tf.io.serialize_tensor bytes).")
@click.option("--variance", type=click.Choice(["unbiased", "biased"]), default="unbiased", show_default=True,
              help="Calibrated variance: unbiased (n-1, Bessel) or biased (n).")
@click.option("--batch-size", type=click.IntRange(1),
              help="Calibration batch size (the result does not depend on it). Default: the power of two (32 to "
                   "256) that brings the largest activation of a batch nearest to 128 MiB.")
@click.option("--max-samples", type=click.IntRange(1), help="Use at most this many calibration samples.")
@click.option("--cache-mb", default="auto", show_default=True, callback=lambda c, p, v: _check_cache_mb(v),
              help="RAM (MB) for activations cached during calibration, per shard; beyond it they spill to a "
                   "temp folder. auto: half the memory available (split between shards), at least 1024.")
@click.option("--cache-dir", "cache_dir", type=click.Path(path_type=str),
              help="Folder for the calibration spill files (default: the system temp folder, $TMPDIR).")
@click.option("--max-spill-gb", "max_spill_gb", type=click.FloatRange(0),
              help="Most disk space calibration may spill to, in GB (default: 4x the calibration data, "
                   "at least 8).")
@click.option("--engine", default="local", show_default=True, metavar="local|ray[:ADDRESS]",
              callback=lambda ctx, param, value: _check_engine(value),
              help="Where calibration shards run: this process, or Ray actors (a local Ray instance, or the "
                   "cluster at ADDRESS; needs the extra: pip install \"bnrewrite[ray]\").")
@click.option("--shards", default=1, show_default=True, type=click.IntRange(1),
              help="Split the calibration batches over this many shards (the statistics do not depend on it).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,...",
              help="Verify with these sizes for an input's open dimensions (sample dims, no batch); "
                   "repeat per input. Default: a size the model's own pooling/striding accepts.")
@click.option("--verify-data", "verify_data", type=click.Path(path_type=str),
              help="Verify on the first samples of this .npy/.npz file (or folder), image folder or TFRecord data "
                   "(read with --preprocess/--tfrecord-feature) instead of random inputs.")
@click.option("--allow-no-reference", "allow_no_reference", is_flag=True,
              help="When the framework that wrote SRC cannot rebuild it, accept verification against "
                   "bnrewrite's own rebuild only (by default that is a verification failure, exit 3).")
@_verbosity_options
@_version_option
def convert(src, dst, opset, atol, rtol, no_verify, no_fold, keep_trainable, keep_timedistributed,
            report_path, html_path, fail_on, force, unsafe, custom_path, calibration, preprocess, tfrecord_feature,
            variance, batch_size,
            max_samples, cache_mb, cache_dir, max_spill_gb, engine, shards, input_shapes, verify_data,
            allow_no_reference, quiet, verbose):
    """Convert SRC (.h5/.keras) to DST (.onnx, .keras or .h5), verified."""
    global _VERBOSE
    quiet, verbose = _flags(quiet, verbose)
    _VERBOSE = verbose
    to_stdout = report_path == "-"
    report_file = None if to_stdout else report_path
    inputs = [calibration, custom_path, verify_data]
    state = {"report_ok": False, "html_ok": False, "t0": None}

    def body():
        import time

        from .convert import check_paths
        from .errors import EXIT_OK, EXIT_STRICT
        from .io.data import check_data_path
        from .outputs import check_folder

        state["t0"] = time.perf_counter()
        # The report's own path first: once it is known to be writable, every later failure
        # (exit 2 or 3) is recorded in it.
        _check_side_outputs(src, dst, [(report_file, "--report"), (html_path, "--html")], inputs, force)
        state["report_ok"] = state["html_ok"] = True
        # Fail fast, before the TF import: every path we will write (OUT, --report) is checked
        # against the inputs (model, calibration data, --custom-objects), each other and its folder.
        check_paths(src, dst, force, report_file, inputs=inputs)
        if html_path is not None:
            check_paths(src, dst, force, html_path, inputs=inputs)
        for data in (calibration, verify_data):
            if data is not None:
                check_data_path(data)  # a FIFO or device would block forever
        from .verify import parse_input_shapes

        shapes = parse_input_shapes(input_shapes) or None
        if cache_dir is not None:
            check_folder(cache_dir, "--cache-dir")
        _prepare_runtime(verbose)
        custom_objects = _custom_objects(custom_path)
        from .convert import convert as run
        from .report import findings_at_least, print_convert_report

        console = _console(quiet, stderr=to_stdout)
        with _progress(console) as bar:
            task = bar.add_task("converting", total=None)

            def calibrating(done, total, where):
                batches = where["batches"]
                bar.update(task, description=f"calibrating: level {where['level']}/{where['levels']}, "
                           f"batch {where['batch']}/{'?' if batches is None else batches}",
                           completed=done, total=total)

            def stage(msg):
                bar.update(task, description=for_console(msg), total=None, completed=0)

            rep = run(
                src, dst, opset=opset, atol=atol, rtol=rtol, verify=not no_verify, force=force,
                fold=not no_fold, keep_trainable=keep_trainable,
                keep_timedistributed=keep_timedistributed, unsafe=unsafe,
                custom_objects=custom_objects, report=None,
                calibration=calibration, preprocess=preprocess, tfrecord_feature=tfrecord_feature,
                variance=variance, batch_size=batch_size,
                max_samples=max_samples, cache_mb=cache_mb, cache_dir=cache_dir, max_spill_gb=max_spill_gb,
                engine=engine, shards=shards,
                input_shapes=shapes, verify_data=verify_data, allow_no_reference=allow_no_reference,
                progress=stage, calibration_progress=calibrating,
            )
        code, failing = EXIT_OK, []
        if fail_on is not None:
            failing = findings_at_least(rep.findings, fail_on)
            if failing:
                code = EXIT_STRICT
        _write_convert_reports(rep, src, dst, report_path, html_path, force, state, exit_code=code, fail_on=fail_on)
        try:
            print_convert_report(console, rep)
        except Exception as e:  # OUT is written and verified: a display problem must not fail the run
            click.echo(f"bnrewrite: warning: could not print the summary ({type(e).__name__}: "
                       f"{clean(e)}); {clean(dst)} was written and verified", err=True)
        if failing:
            codes = sorted({f"{f['code']} on {f['layer']}" for f in failing})
            shown = ", ".join(codes[:5]) + (f", ... (+{len(codes) - 5})" if len(codes) > 5 else "")
            click.echo(f"bnrewrite: error: --fail-on {fail_on}: {len(failing)} finding"
                       f"{'s' if len(failing) != 1 else ''} at or above {fail_on}: {clean(shown, ERROR_LIMIT)}",
                       err=True)
        return code

    sys.exit(_run(_on_failure(body, lambda e: _failure_reports(e, src, dst, report_path, html_path, force,
                                                                state))))


def _same_name(a, b) -> bool:
    try:
        return os.path.abspath(a) == os.path.abspath(b) or (os.path.exists(a) and os.path.exists(b)
                                                             and os.path.samefile(a, b))
    except OSError:
        return False


def _check_side_outputs(src, dst, outputs, inputs, force) -> None:
    """``--report``/``--html`` paths on their own: not an input, not OUT, not each other, folder writable."""
    from .errors import InputError
    from .outputs import check_outputs

    outputs = [(p, what) for p, what in outputs if p is not None]
    if not outputs:
        return
    for p, what in outputs:
        if dst is not None and _same_name(p, dst):
            raise InputError(f"{p}: {what} is the same file as the output {dst}")
    check_outputs(outputs, inputs=[src, *inputs], force=force)


def _write_json_report(text: str, report_path, force: bool) -> None:
    if report_path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    from .outputs import write_text

    write_text(report_path, text, force=force)


def _write_convert_reports(rep, src, dst, report_path, html_path, force, state, exit_code=0, error=None,
                           fail_on=None):
    import time

    from .report import finalize_convert

    if state.get("t0") is not None:
        rep.timings.setdefault("cli_total_s", time.perf_counter() - state["t0"])
    finalize_convert(rep, src, dst, error=error, exit_code=exit_code)
    if exit_code == 4 and error is None:
        from .report import findings_at_least

        bad = findings_at_least(rep.findings, fail_on or "warning")
        rep.error = {"code": "FAIL_ON", "type": "FailOn", "exit_code": 4,
                     "message": f"--fail-on {fail_on}: {len(bad)} finding(s) at or above {fail_on} remain or were "
                                "created: " + ", ".join(sorted({f"{f['code']} on {f['layer']}" for f in bad}))}
    if report_path is not None and state.get("report_ok"):
        _write_json_report(rep.to_json(), report_path, force)
    if html_path is not None and state.get("html_ok"):
        from .html_report import write_convert_html

        write_convert_html(rep, html_path, force=force)


def _failure_reports(e, src, dst, report_path, html_path, force, state) -> None:
    """The report of a failed run (exit 2 or 3), when its path was checked; never a second error."""
    from .errors import EXIT_BAD_INPUT
    from .outputs import interrupted

    if interrupted() is not None or not (state.get("report_ok") or state.get("html_ok")):
        return
    if report_path is None and html_path is None:
        return
    try:
        from .convert import ConvertReport

        rep = getattr(e, "report", None)
        if not isinstance(rep, ConvertReport):
            rep = ConvertReport()
        rep.ok = False
        code = getattr(e, "exit_code", EXIT_BAD_INPUT)
        if not isinstance(e, BnrewriteError):
            e = unexpected(e)
        _write_convert_reports(rep, src, dst, report_path, html_path, force, state, exit_code=code, error=e)
    except Exception as w:  # the run's own error is what matters; say why there is no report
        click.echo(f"bnrewrite: warning: could not write the report ({type(w).__name__}: {clean(w)})", err=True)


@main.command("inspect")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--jobs", type=click.IntRange(1), default=None,
              help="Files inspected at once, each in its own process (default: the core count).")
@click.option("--json", "as_json", is_flag=True, help="Print the audit as JSON on stdout (nothing else).")
@click.option("--strict", is_flag=True, help="Exit 4 if there is any warning or error finding.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write a self-contained HTML report (plots inline, no network) to this file.")
@click.option("--force", is_flag=True, help="Overwrite an existing --html file.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers that carry Python code (trusted files only).")
@click.option("--custom-objects", "custom_path", type=click.Path(dir_okay=False, path_type=str),
              help="Python file defining the model's custom layer classes (the file is executed).")
@_verbosity_options
@_version_option
def inspect_cmd(paths, jobs, as_json, strict, html_path, force, unsafe, custom_path, quiet, verbose):
    """Audit the BatchNormalization layers (and unsafe content) of model files: a table, then
    findings with fixes. PATHS are files, folders (searched recursively) or globs; several files
    are inspected in parallel, each in its own process (--jobs), one record each with --json."""
    global _VERBOSE
    quiet, verbose = _flags(quiet, verbose)
    _VERBOSE = verbose
    state = {"started": False}
    import os

    first = paths[0]
    one_model = os.path.isfile(first) or os.path.isfile(os.path.join(first, "saved_model.pb")) \
        or not os.path.exists(first)
    if len(paths) > 1 or jobs is not None or not one_model or any(c in first for c in "*?["):
        sys.exit(_run(lambda: _inspect_many(paths, jobs, as_json, strict, html_path, unsafe, custom_path, quiet)))
    src = paths[0]

    def body():
        import json
        from pathlib import Path

        from .errors import EXIT_OK, EXIT_STRICT, InputError

        p = Path(src)
        if html_path is not None:
            _check_side_outputs(src, None, [(html_path, "--html")], [custom_path], force)
        if not p.exists():  # fail fast, before the TF import
            raise InputError(f"{p}: no such file")
        state["started"] = True
        _prepare_runtime(verbose)
        from .audit import inspect_record

        record, result = inspect_record(src, unsafe=unsafe, custom_objects=_custom_objects(custom_path))
        code = EXIT_STRICT if strict and result.has("warning") else EXIT_OK
        record["exit_code"] = code
        if as_json:
            click.echo(json.dumps(record, indent=2))
        elif not quiet:
            _print_audit(_console(False), result, src)
        if html_path is not None:
            from .html_report import write_inspect_html

            write_inspect_html(record, result, html_path, force=force)
        return code

    def json_record(e: Exception) -> None:
        if as_json:  # CI reads stdout: one record with the error
            import json

            from .audit import failed_record

            click.echo(json.dumps(failed_record(src, e), indent=2))

    sys.exit(_run(_on_failure(body, json_record)))


def _inspect_many(paths, jobs, as_json, strict, html_path, unsafe, custom_path, quiet) -> int:
    """``inspect`` over many files (bnrewrite.inspect_many): one isolated process per file."""
    import json

    from .errors import InputError
    from .inspect_many import exit_code, expand, inspect_files

    try:
        if html_path is not None:
            raise InputError("--html takes one model file; inspect the files one at a time for HTML reports")
        files, missing = expand(paths)
        if missing:
            raise InputError(f"{clean(missing[0])}: no such file (or no match)")
        if not files:
            raise InputError(f"{clean(paths[0])}: no model files (.h5, .hdf5, .keras, SavedModel folders) in it")
    except InputError as e:
        if as_json:  # CI reads stdout: one record with the error, as for one file
            from .audit import failed_record

            click.echo(json.dumps(failed_record(paths[0], e), indent=2))
        raise
    records = inspect_files(files, jobs=jobs, unsafe=unsafe, custom_objects_path=custom_path)
    code = exit_code(records, strict)
    if as_json:
        click.echo(json.dumps(records, indent=2))
    elif not quiet:
        _print_many(_console(False), records)
    return code


def _print_many(console, records) -> None:
    from rich import box
    from rich.table import Table

    if not console.is_terminal:
        console.width = max(console.width, 160)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in ("file", "BN", "errors", "warnings", "info", "result"):
        t.add_column(col, justify="right" if col in ("BN", "errors", "warnings", "info") else "left")
    for r in records:
        c = r.get("counts") or {}
        result = (f"[red]{clean(r['error']['message'], 120, markup=True)}[/]" if r.get("error")
                  else (r.get("worst_severity") or "no findings"))
        t.add_row(clean(r["input"]["path"], 80, markup=True), str(c.get("bn_layers", "-")), str(c.get("error", "-")),
                  str(c.get("warning", "-")), str(c.get("info", "-")), result)
    console.print(t)
    failed = sum(1 for r in records if r.get("error"))
    console.print(f"{len(records)} file{'s' if len(records) != 1 else ''}, {failed} unreadable")


def _custom_objects(path):
    """``--custom-objects FILE`` -> dict (runs FILE: the user asked for it), or None."""
    if path is None:
        return None
    from .custom import load_custom_objects

    return load_custom_objects(path)


def _fmt_num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return for_console(x, 60)  # config values come from the file


def _yes(b) -> str:
    return "yes" if b else "no"


def _print_audit(console, result, src) -> None:
    from rich import box
    from rich.table import Table

    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console.width = max(console.width, 160)
    rows = result.bn_layers
    console.print(f"[bold]{for_console(src)}[/]: {len(rows)} BatchNormalization layer{'s' if len(rows) != 1 else ''}")
    if rows:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for col, just in [("layer", "left"), ("path", "left"), ("wrapper", "left"), ("axis", "right"),
                          ("momentum", "right"), ("epsilon", "right"), ("center", "left"), ("scale", "left"),
                          ("trainable", "left"), ("training", "left"), ("mean min, max", "right"),
                          ("variance min, max", "right"), ("channels", "right")]:
            t.add_column(col, justify=just, no_wrap=col != "layer")
        for r in rows:
            t.add_row(
                for_console(r["name"]), for_console(r["path"] or "-"), for_console(r["wrapper"] or "-"),
                _fmt_num(r["axis"]),
                _fmt_num(r["momentum"]), _fmt_num(r["epsilon"]), _yes(r["center"]), _yes(r["scale"]),
                _yes(r["trainable"]), _fmt_num(r["training"]),
                f"{_fmt_num(r['moving_mean_min'])}, {_fmt_num(r['moving_mean_max'])}",
                f"{_fmt_num(r['moving_variance_min'])}, {_fmt_num(r['moving_variance_max'])}",
                _fmt_num(r["channels"]),
            )
        console.print(t)
    style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    if not result.findings:
        console.print("[green]no findings[/]")
        return
    from .report import plural

    counts = {s: sum(f["severity"] == s for f in result.findings) for s in ("error", "warning", "info")}
    console.print("[bold]findings[/]: " + ", ".join(plural(n, s) for s, n in counts.items() if n))
    for f in result.findings:
        s = f["severity"]
        console.print(f"  [{style[s]}]{s:<7}[/] [bold]{for_console(f['code'])}[/] on {for_console(f['layer'])}: "
                      f"{for_console(f['message'], 500)}")
        console.print(f"          [dim]fix: {for_console(f['hint'], 500)}[/]")


if __name__ == "__main__":  # pragma: no cover
    main()
