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

from .errors import EXIT_BAD_INPUT, BnrewriteError
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
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    click.echo(f"bnrewrite: interrupted ({name}); temporary files removed", err=True)
    sys.exit(128 + signum)


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
            _fail(RuntimeError(f"unexpected {type(e).__name__}: {e}"), EXIT_BAD_INPUT)
        finally:
            outputs.exiting()  # a signal from here on is too late to stop anything
            outputs.remove_temps()  # anything left registered is a leftover


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bnrewrite")
def main():
    """Make Keras models safe to deploy where BatchNormalization is concerned."""


def _progress(console):
    """A transient rich progress line: a spinner for stages, a bar while calibrating."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True,
                    disable=console.quiet or not console.is_terminal)  # no bar in logs or with -q


def _console(quiet: bool):
    from rich.console import Console

    return Console(quiet=quiet, highlight=False, soft_wrap=True)


@main.command()
@click.argument("src", type=click.Path(dir_okay=True, path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option("--opset", default=17, show_default=True, type=click.IntRange(9, 21), help="ONNX opset.")
@click.option("--atol", default=1e-4, show_default=True, type=float, help="Verification absolute tolerance.")
@click.option("--rtol", default=1e-4, show_default=True, type=float, help="Verification relative tolerance.")
@click.option("--no-verify", is_flag=True, help="Skip verification of the written file.")
@click.option("--no-fold", is_flag=True, help="Keep BatchNormalization layers instead of folding them.")
@click.option("--keep-trainable", is_flag=True, help="Do not freeze BN layers in Keras outputs.")
@click.option("--keep-timedistributed", is_flag=True, help="Do not unwrap TimeDistributed layers.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the conversion report as JSON to this file.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers that carry Python code (trusted files only).")
@click.option("--custom-objects", "custom_path", type=click.Path(dir_okay=False, path_type=str),
              help="Python file defining the model's custom layer classes (the file is executed).")
@click.option("--calibration", "calibration", type=click.Path(path_type=str),
              help="Re-estimate every BN's statistics (AdaBN) on this .npy/.npz file or folder of shards.")
@click.option("--variance", type=click.Choice(["unbiased", "biased"]), default="unbiased", show_default=True,
              help="Calibrated variance: unbiased (n-1, Bessel) or biased (n).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1),
              help="Calibration batch size (the result does not depend on it).")
@click.option("--max-samples", type=click.IntRange(1), help="Use at most this many calibration samples.")
@click.option("--cache-mb", default=1024, show_default=True, type=click.FloatRange(0),
              help="RAM for activations cached during calibration; beyond it they spill to a temp folder.")
@click.option("--cache-dir", "cache_dir", type=click.Path(path_type=str),
              help="Folder for the calibration spill files (default: the system temp folder, $TMPDIR).")
@click.option("--max-spill-gb", "max_spill_gb", type=click.FloatRange(0),
              help="Most disk space calibration may spill to, in GB (default: 4x the calibration data, "
                   "at least 8).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,...",
              help="Verify with these sizes for an input's open dimensions (sample dims, no batch); "
                   "repeat per input. Default: a size the model's own pooling/striding accepts.")
@click.option("--verify-data", "verify_data", type=click.Path(path_type=str),
              help="Verify on the first samples of this .npy/.npz file (or folder) instead of random inputs.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks and TensorFlow logging on errors.")
def convert(src, dst, opset, atol, rtol, no_verify, no_fold, keep_trainable, keep_timedistributed,
            report_path, force, unsafe, custom_path, calibration, variance, batch_size, max_samples,
            cache_mb, cache_dir, max_spill_gb, input_shapes, verify_data, quiet, verbose):
    """Convert SRC (.h5/.keras) to DST (.onnx, .keras or .h5), verified."""
    global _VERBOSE
    _VERBOSE = verbose

    def body():
        from .convert import check_paths
        from .io.data import check_data_path
        from .outputs import check_folder

        # Fail fast, before the TF import: every path we will write (OUT, --report) is checked
        # against the inputs (model, calibration data, --custom-objects), each other and its folder.
        check_paths(src, dst, force, report_path, inputs=[calibration, custom_path, verify_data])
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
        from .report import print_convert_report

        console = _console(quiet)
        with _progress(console) as bar:
            task = bar.add_task("converting", total=None)

            def calibrating(done, total):
                bar.update(task, description="calibrating BatchNormalization statistics",
                           completed=done, total=total)

            def stage(msg):
                bar.update(task, description=for_console(msg), total=None, completed=0)

            rep = run(
                src, dst, opset=opset, atol=atol, rtol=rtol, verify=not no_verify, force=force,
                fold=not no_fold, keep_trainable=keep_trainable,
                keep_timedistributed=keep_timedistributed, unsafe=unsafe,
                custom_objects=custom_objects, report=report_path,
                calibration=calibration, variance=variance, batch_size=batch_size,
                max_samples=max_samples, cache_mb=cache_mb, cache_dir=cache_dir, max_spill_gb=max_spill_gb,
                input_shapes=shapes, verify_data=verify_data,
                progress=stage, calibration_progress=calibrating,
            )
        try:
            print_convert_report(console, rep)
        except Exception as e:  # OUT is written and verified: a display problem must not fail the run
            click.echo(f"bnrewrite: warning: could not print the summary ({type(e).__name__}: "
                       f"{clean(e)}); {clean(dst)} was written and verified", err=True)

    _run(body)


@main.command("inspect")
@click.argument("src", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the audit as JSON on stdout (nothing else).")
@click.option("--strict", is_flag=True, help="Exit 4 if there is any warning or error finding.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers that carry Python code (trusted files only).")
@click.option("--custom-objects", "custom_path", type=click.Path(dir_okay=False, path_type=str),
              help="Python file defining the model's custom layer classes (the file is executed).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (and the JSON with --json).")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks and TensorFlow logging on errors.")
def inspect_cmd(src, as_json, strict, unsafe, custom_path, quiet, verbose):
    """Audit the BatchNormalization layers of SRC (.h5/.keras): a table, then findings with fixes."""
    global _VERBOSE
    _VERBOSE = verbose

    def body():
        import json
        from pathlib import Path

        from .errors import EXIT_OK, EXIT_STRICT, InputError

        p = Path(src)
        if not p.exists():  # fail fast, before the TF import
            raise InputError(f"{p}: no such file")
        _prepare_runtime(verbose)
        from .audit import inspect as run

        result = run(src, unsafe=unsafe, custom_objects=_custom_objects(custom_path))
        if as_json:
            click.echo(json.dumps(result.to_dict(), indent=2))
        elif not quiet:
            _print_audit(_console(False), result, src)
        return EXIT_STRICT if strict and result.has("warning") else EXIT_OK

    sys.exit(_run(body))


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
    counts = {s: sum(f["severity"] == s for f in result.findings) for s in ("error", "warning", "info")}
    console.print("[bold]findings[/]: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for f in result.findings:
        s = f["severity"]
        console.print(f"  [{style[s]}]{s:<7}[/] [bold]{for_console(f['code'])}[/] on {for_console(f['layer'])}: "
                      f"{for_console(f['message'], 500)}")
        console.print(f"          [dim]fix: {for_console(f['hint'], 500)}[/]")


if __name__ == "__main__":  # pragma: no cover
    main()
