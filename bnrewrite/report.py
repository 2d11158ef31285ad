"""Human-readable rendering of reports with rich (the JSON form is ``report.to_json()``).

Every value that comes from the model file, the data or a framework (paths,
layer names, reasons, notes, findings) goes through :func:`_t`: control
characters escaped, rich markup escaped, cut to a bounded length -- a layer
named ``"x\x1b[2J[/]ALL CHECKS PASSED"`` or a 100 MB config value in a note
prints as one short inert line, never as terminal codes or markup.
"""

from __future__ import annotations

from rich.table import Table

from .io.safe_files import sha256_file  # noqa: F401 (part of the report API)
from .textsafe import for_console

NAME_LIMIT = 120  # a layer name, a path
TEXT_LIMIT = 300  # a reason, a note, a finding's message


def _t(value, limit: int = NAME_LIMIT) -> str:
    return for_console("" if value is None else value, limit)


def print_convert_report(console, rep) -> None:
    if rep is None:
        return
    i, o = rep.input, rep.output
    console.print(
        f"[bold]read[/] {_t(i.get('path'))} ({_t(i.get('format'))}, Keras {_t(i.get('keras_version'), 40)}): "
        f"{_t(i.get('layers'))} layers, {_t(i.get('calls'))} calls, {_t(i.get('batch_norm_layers'))} "
        "BatchNormalization"
    )
    if rep.passes:
        t = Table(title="passes", show_lines=False)
        t.add_column("pass")
        t.add_column("changed", justify="right")
        t.add_column("layers changed")
        t.add_column("skipped", justify="right")
        for p in rep.passes:
            t.add_row(_t(p["name"]), str(len(p["changed"])), _names(p["changed"]), str(len(p["skipped"])))
        console.print(t)
        for p in rep.passes:
            for s in p["skipped"]:
                console.print(f"  [dim]{_t(p['name'])}: skipped {_t(s['layer'])}: {_t(s['reason'], TEXT_LIMIT)}[/]")
    if rep.calibration:
        print_calibration(console, rep.calibration)
    if rep.findings:
        fixed, left = rep.findings.get("fixed", []), rep.findings.get("remaining", [])
        for f in fixed:
            console.print(f"  [green]fixed[/] {_t(f['code'])} on {_t(f['layer'])}")
        for f in left:
            console.print(f"  [yellow]remains[/] {_t(f['code'])} on {_t(f['layer'])}: {_t(f['message'], TEXT_LIMIT)}")
        for f in rep.findings.get("new", []):  # made by the conversion (e.g. calibrating on constant data)
            console.print(f"  [bold red]new[/] {_t(severity_of(f))} {_t(f['code'])} on {_t(f['layer'])}: "
                          f"{_t(f['message'], TEXT_LIMIT)}")
    if rep.migration:
        console.print(f"[bold]migrated[/] to Keras 3: {len(rep.migration)} translation"
                      f"{'s' if len(rep.migration) != 1 else ''} (docs/migration.md)")
        for n in rep.migration:
            console.print(f"  [dim]{_t(n, TEXT_LIMIT)}[/]")
    v = rep.verification
    if v:
        bi = v.get("batch_independent")
        shapes = ", ".join(f"{_t(k)} {tuple(s)}" for k, s in (v.get("input_shapes") or {}).items())
        if v.get("no_reference"):
            console.print(f"[yellow]no independent reference[/]: {_t(v['no_reference'], TEXT_LIMIT)}")
            against = "the rewritten model"
        else:
            against = f"the original model ({_t(v.get('reference'))})"
        console.print(
            f"[bold]verified[/] with {_t(v['runtime'])} against {against}: max abs error {v['max_abs']:.3g}, "
            f"max rel error {v['max_rel']:.3g} (atol {v['atol']:g}, rtol {v['rtol']:g}); against the rewritten "
            f"model: {v.get('max_abs_vs_rewritten', 0.0):.3g}"
            + ("" if bi is None else f"; batch-independent: {'yes' if bi else 'NO'}")
            + (f"; inputs {shapes}" if shapes else "")
            + _second_size(v.get("second_size"))
        )
        if v.get("input_scale") is not None:
            console.print(
                f"  [yellow]note[/]: on unit-variance inputs every output was the same for every sample (the model "
                f"saturates); verified on those inputs scaled by {v['input_scale']:g}")
        if v.get("constant_outputs"):
            console.print(
                "  [yellow]warning[/]: every output is the same for every verification input, at every scale "
                "tried: this check cannot tell a wrong model from a right one; give real inputs with --verify-data")
        if v.get("reference_mode") == "graph":
            console.print(
                f"  [yellow]note[/]: the references ran in graph mode (as model.predict does): the framework's own "
                f"eager call of these models differs from its graph mode by {v.get('eager_graph_max_abs', 0.0):.3g} "
                "(a framework bug), and the written model matches graph mode")
    else:
        console.print("[yellow]not verified[/] (--no-verify)")
    extra = f", {o['nodes']} ONNX nodes, opset {o['opset']}" if "nodes" in o else ""
    console.print(f"[bold]wrote[/] {_t(o.get('path'))} ({o.get('bytes', 0):,} bytes{extra})")
    for n in rep.notes:
        console.print(f"  [dim]note: {_t(n, TEXT_LIMIT)}[/]")


def _names(names, limit: int = 6) -> str:
    shown = ", ".join(_t(n) for n in names[:limit])
    return shown if len(names) <= limit else shown + f", ... (+{len(names) - limit})"


def _range(d: dict) -> str:
    return f"{d['min']:.4g} .. {d['max']:.4g}" if d["min"] != d["max"] else f"{d['min']:.4g}"


def _mb(n) -> str:
    return f"{(n or 0) / 2**20:,.0f} MB"


def print_calibration(console, c: dict) -> None:
    """Per calibrated layer: values seen per channel, old -> new mean and variance (range over channels)."""
    layers = c.get("layers", [])
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console.width = max(console.width, 160)
    console.print(
        f"[bold]calibrated[/] {len(layers)} BatchNormalization layer{'s' if len(layers) != 1 else ''} "
        f"on {c.get('samples'):,} samples from {_t(c.get('data'))} ({_t(c.get('variance'))} variance, "
        f"{c.get('levels')} level{'s' if c.get('levels') != 1 else ''}"
        + (f" in {c['functions']} traced function{'s' if c['functions'] != 1 else ''}" if c.get("functions") else "")
        + f", {c.get('seconds', 0):.1f} s)"
    )
    cache, shards = c.get("cache") or {}, c.get("shards") or []
    if cache:  # where the activations lived, and where the work ran
        where = (f"{len(shards)} shards on {c.get('engine')} ("
                 + ", ".join(f"{s.get('samples', 0):,}" for s in shards) + " samples)") if len(shards) > 1 else ""
        console.print(f"  batch {c.get('batch_size')}, live activation cache {_mb(cache.get('peak_live_bytes'))}"
                      f", spilled {_mb(cache.get('spilled_bytes'))}" + (f"; {where}" if where else ""))
    bad = c.get("bad_images") or 0
    if bad:  # never dropped silently: counted, and the first ones named
        names = "; ".join(_t(n, TEXT_LIMIT) for n in (c.get("bad_image_names") or [])[:3])
        console.print(f"  [yellow]skipped {bad} unreadable image{'s' if bad != 1 else ''}[/]" + (f": {names}" if names else ""))
    if layers:
        t = Table(show_lines=False)
        for col in ("layer", "values/channel", "mean before", "mean after", "variance before", "variance after"):
            t.add_column(col, justify="left" if col == "layer" else "right")
        for r in layers:
            t.add_row(_t(r["layer"]), f"{r['values_per_channel']:,}", _range(r["old_mean"]), _range(r["new_mean"]),
                      _range(r["old_variance"]), _range(r["new_variance"]))
        console.print(t)
    for s in c.get("skipped", []):
        console.print(f"  [yellow]not calibrated[/] {_t(s['layer'])}: {_t(s['reason'], TEXT_LIMIT)}")


# ---------------------------------------------------------------- the JSON report (CI)
#: version of the JSON layout of ``convert --report`` and ``inspect --json`` (docs/report-schema.md)
SCHEMA_VERSION = 1

#: the packages whose versions every JSON report records
VERSION_PACKAGES = ("bnrewrite", "tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime")

#: ``error.code`` for failures without a content code (``BnrewriteError.code``)
ERROR_CODES = {
    "VerificationError": "VERIFICATION_FAILED",
    "UnsupportedModelError": "UNSUPPORTED_MODEL",
    "InputError": "BAD_INPUT",
    "UsageError": "USAGE_ERROR",
}

SEVERITIES = ("info", "warning", "error")


def versions() -> dict:
    """Installed versions of bnrewrite and the frameworks (package metadata: nothing is imported)."""
    from importlib import metadata

    out = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def error_record(e: BaseException | None, exit_code: int | None = None) -> dict | None:
    """``{"code", "message", "exit_code"}`` for a failure (None for success)."""
    if e is None:
        return None
    from .errors import EXIT_BAD_INPUT

    code = getattr(e, "code", None)
    if not code:
        code = next((c for cls, c in ERROR_CODES.items() if cls in {k.__name__ for k in type(e).__mro__}), None)
    if not code:
        code = "INTERNAL_ERROR"
    msg = str(e).strip() or type(e).__name__
    if exit_code is None:
        exit_code = getattr(e, "exit_code", EXIT_BAD_INPUT)
    return {"code": code, "type": type(e).__name__, "message": msg, "exit_code": exit_code}


def finalize_convert(rep, src, dst, error: BaseException | None = None, exit_code: int | None = None):
    """Fill the CI fields of a :class:`~bnrewrite.convert.ConvertReport`: schema version, versions,
    input/output paths with sha256, the error (code, message, exit code). Returns ``rep``."""
    from .errors import EXIT_OK

    rep.schema_version = SCHEMA_VERSION
    rep.versions = versions()
    rep.input = dict(rep.input or {})
    import os

    if isinstance(src, (str, os.PathLike)):
        rep.input.setdefault("path", str(src))
    rep.input["sha256"] = sha256_file(src)
    rep.output = dict(rep.output or {})
    rep.output.setdefault("path", str(dst))
    rep.output["sha256"] = sha256_file(dst) if rep.ok else None
    rep.error = error_record(error, exit_code)
    rep.exit_code = rep.error["exit_code"] if rep.error else (exit_code if exit_code is not None else EXIT_OK)
    if rep.findings is not None:
        for key in ("fixed", "remaining", "new"):
            for f in rep.findings.get(key, []):
                f.setdefault("severity", severity_of(f))
    return rep


def severity_of(f: dict) -> str:
    """The severity of a finding from :func:`bnrewrite.audit.compare` (which leaves it out):
    its own, else the code's default (a negative variance is an error)."""
    from .audit import CODES, SAFETY_CODES

    if f.get("severity") in SEVERITIES:
        return f["severity"]
    if f.get("code") == "DEGENERATE_VARIANCE" and "negative" in str(f.get("message", "")):
        return "error"
    return (CODES.get(f.get("code")) or SAFETY_CODES.get(f.get("code")) or ("warning",))[0]


def findings_at_least(findings: dict | None, level: str) -> list[dict]:
    """Remaining and new findings of a conversion at ``level`` or worse (``--fail-on``)."""
    if not findings:
        return []
    rank = SEVERITIES.index(level)
    return [f for key in ("remaining", "new") for f in findings.get(key, [])
            if SEVERITIES.index(severity_of(f)) >= rank]


def plural(n: int, word: str) -> str:
    """``1 warning``, ``2 warnings``; ``info`` does not take an s."""
    return f"{n} {word}" if n == 1 or word == "info" else f"{n} {word}s"


def _second_size(second: dict | None) -> str:
    """The second-size check of a model with open dimensions, for the verification line."""
    if not second:
        return ""
    shapes = ", ".join(f"{_t(k)} {tuple(s)}" for k, s in (second.get("input_shapes") or {}).items())
    error = second.get("max_abs")
    return f"; and at {shapes}: " + ("ok" if second.get("ok") else "FAILED") + (
        f" (max abs error {error:.3g})" if error is not None else "")
