"""Human-readable rendering of reports with rich (the JSON form is ``report.to_json()``).

Every value that comes from the model file, the data or a framework (paths,
layer names, reasons, notes, findings) goes through :func:`_t`: control
characters escaped, rich markup escaped, cut to a bounded length -- a layer
named ``"x\x1b[2J[/]ALL CHECKS PASSED"`` or a 100 MB config value in a note
prints as one short inert line, never as terminal codes or markup.
"""

from __future__ import annotations

from rich.table import Table

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
        )
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


def print_calibration(console, c: dict) -> None:
    """Per calibrated layer: values seen per channel, old -> new mean and variance (range over channels)."""
    layers = c.get("layers", [])
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console.width = max(console.width, 160)
    console.print(
        f"[bold]calibrated[/] {len(layers)} BatchNormalization layer{'s' if len(layers) != 1 else ''} "
        f"on {c.get('samples'):,} samples from {_t(c.get('data'))} ({_t(c.get('variance'))} variance, "
        f"{c.get('levels')} level{'s' if c.get('levels') != 1 else ''}, {c.get('seconds', 0):.1f} s)"
    )
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
