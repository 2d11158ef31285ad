"""Human-readable rendering of reports with rich (the JSON form is ``report.to_json()``)."""

from __future__ import annotations

from rich.table import Table


def print_convert_report(console, rep) -> None:
    if rep is None:
        return
    i, o = rep.input, rep.output
    console.print(
        f"[bold]read[/] {i.get('path')} ({i.get('format')}, Keras {i.get('keras_version')}): "
        f"{i.get('layers')} layers, {i.get('calls')} calls, {i.get('batch_norm_layers')} BatchNormalization"
    )
    if rep.passes:
        t = Table(title="passes", show_lines=False)
        t.add_column("pass")
        t.add_column("changed", justify="right")
        t.add_column("layers changed")
        t.add_column("skipped", justify="right")
        for p in rep.passes:
            t.add_row(p["name"], str(len(p["changed"])), _names(p["changed"]), str(len(p["skipped"])))
        console.print(t)
        for p in rep.passes:
            for s in p["skipped"]:
                console.print(f"  [dim]{p['name']}: skipped {s['layer']}: {s['reason']}[/]")
    if rep.calibration:
        print_calibration(console, rep.calibration)
    if rep.findings:
        fixed, left = rep.findings.get("fixed", []), rep.findings.get("remaining", [])
        for f in fixed:
            console.print(f"  [green]fixed[/] {f['code']} on {f['layer']}")
        for f in left:
            console.print(f"  [yellow]remains[/] {f['code']} on {f['layer']}: {f['message']}")
    v = rep.verification
    if v:
        bi = v.get("batch_independent")
        console.print(
            f"[bold]verified[/] with {v['runtime']}: max abs error {v['max_abs']:.3g}, max rel error "
            f"{v['max_rel']:.3g} (atol {v['atol']:g}, rtol {v['rtol']:g})"
            + ("" if bi is None else f", batch-independent: {'yes' if bi else 'NO'}")
        )
    else:
        console.print("[yellow]not verified[/] (--no-verify)")
    extra = f", {o['nodes']} ONNX nodes, opset {o['opset']}" if "nodes" in o else ""
    console.print(f"[bold]wrote[/] {o.get('path')} ({o.get('bytes', 0):,} bytes{extra})")
    for n in rep.notes:
        console.print(f"  [dim]note: {n}[/]")


def _names(names, limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... (+{len(names) - limit})"


def _range(d: dict) -> str:
    return f"{d['min']:.4g} .. {d['max']:.4g}" if d["min"] != d["max"] else f"{d['min']:.4g}"


def print_calibration(console, c: dict) -> None:
    """Per calibrated layer: values seen per channel, old -> new mean and variance (range over channels)."""
    layers = c.get("layers", [])
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console.width = max(console.width, 160)
    console.print(
        f"[bold]calibrated[/] {len(layers)} BatchNormalization layer{'s' if len(layers) != 1 else ''} "
        f"on {c.get('samples'):,} samples from {c.get('data')} ({c.get('variance')} variance, "
        f"{c.get('levels')} level{'s' if c.get('levels') != 1 else ''}, {c.get('seconds', 0):.1f} s)"
    )
    if layers:
        t = Table(show_lines=False)
        for col in ("layer", "values/channel", "mean before", "mean after", "variance before", "variance after"):
            t.add_column(col, justify="left" if col == "layer" else "right")
        for r in layers:
            t.add_row(r["layer"], f"{r['values_per_channel']:,}", _range(r["old_mean"]), _range(r["new_mean"]),
                      _range(r["old_variance"]), _range(r["new_variance"]))
        console.print(t)
    for s in c.get("skipped", []):
        console.print(f"  [yellow]not calibrated[/] {s['layer']}: {s['reason']}")
