"""``--html FILE``: one self-contained HTML page for ``convert`` and ``inspect``.

No network, no script: the styles are inline, every plot is drawn by matplotlib (Agg backend)
and embedded as inline SVG. Every text from the model file, the data or a framework is HTML
escaped (layer names in matplotlib's SVG are escaped by matplotlib, and drawn as paths).

Sections: the model summary; every finding with its fix; the passes (changes, skip reasons);
for every BatchNormalization the per-channel moving mean and variance before (and after, when
calibration gave new values), outliers marked; the ONNX node count and op histogram; the
verification figures (against the original, against the rewritten model, batch independence).
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np

#: most BatchNormalization layers plotted (each one is a small figure); the rest are listed
MAX_BN_PLOTS = 48
#: a channel is an outlier when it is this many robust standard deviations (1.4826 MAD) from the median
OUTLIER_Z = 5.0

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}.error{color:#b00020;font-weight:bold}
.warning{color:#a66300;font-weight:bold}.info{color:#00639b}.ok{color:#1b7f3b;font-weight:bold}
.bad{color:#b00020;font-weight:bold}.muted{color:#666}.plots{display:flex;flex-wrap:wrap;gap:1em}
.plot svg{max-width:100%;height:auto}code{background:#f4f4f4;padding:0 .2em}
"""


def _e(value, limit: int = 2000) -> str:
    s = "" if value is None else str(value)
    if len(s) > limit:
        s = s[:limit] + f"... ({len(s):,} chars)"
    return html.escape(s, quote=True)


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return _e(x)


# ---------------------------------------------------------------- plots (matplotlib -> inline SVG)
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "font.size": 8, "svg.hashsalt": "bnrewrite"})
    return plt


def _svg(fig) -> str:
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline in HTML
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)  # RDF block: nothing to show


def outliers(a: np.ndarray, variance: bool = False) -> np.ndarray:
    """Channels far from the rest (robust z-score above :data:`OUTLIER_Z`), non-finite values, and
    for a variance, channels at or below 0."""
    a = np.asarray(a, dtype=np.float64).ravel()
    bad = ~np.isfinite(a)
    fin = a[~bad]
    if fin.size:
        med = np.median(fin)
        mad = 1.4826 * np.median(np.abs(fin - med))
        scale = mad if mad > 0 else (np.std(fin) or 1.0)
        with np.errstate(invalid="ignore"):
            far = np.abs(a - med) / scale > OUTLIER_Z
        if mad == 0:  # all but a few equal: only values off the common one are outliers
            far = np.isfinite(a) & (a != med) & (fin.size > 2)
        bad |= np.where(np.isfinite(a), far, False)
    if variance:
        with np.errstate(invalid="ignore"):
            bad |= np.isfinite(a) & (a <= 0)
    return bad


def bn_figure(name: str, before: dict, after: dict | None = None) -> str:
    """Per-channel moving mean and variance of one BN (before, and after when given); outliers in red."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.2))
    for ax, key, title in ((axes[0], "moving_mean", "moving mean"), (axes[1], "moving_variance", "moving variance")):
        series = [("before", before.get(key), "#1f77b4")]
        if after is not None and after.get(key) is not None:
            series.append(("after", after.get(key), "#2ca02c"))
        for label, values, color in series:
            if values is None:
                continue
            v = np.asarray(values, dtype=np.float64).ravel()
            ch = np.arange(v.size)
            shown = np.where(np.isfinite(v), v, np.nan)
            ax.plot(ch, shown, ".-" if v.size <= 64 else "-", color=color, lw=0.8, ms=3, label=label)
            out = outliers(v, variance=key == "moving_variance")
            if out.any():
                y = np.where(np.isfinite(v), v, np.nanmean(shown) if np.isfinite(shown).any() else 0.0)
                ax.plot(ch[out], y[out], "x", color="#d62728", ms=6, mew=1.5,
                        label=f"outlier ({int(out.sum())})" if label == series[-1][0] else None)
        ax.set_title(f"{name}: {title}", fontsize=8)
        ax.set_xlabel("channel")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _svg(fig)


def op_histogram(ops: dict) -> str:
    plt = _pyplot()
    items = sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 0.8))
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#1f77b4")
    ax.set_xlabel("nodes")
    ax.set_title("ONNX op histogram")
    fig.tight_layout()
    return _svg(fig)


def verification_figure(v: dict) -> str:
    """Per output: max abs error against the original and against the rewritten model (log scale), atol."""
    plt = _pyplot()
    orig = {o["name"]: o["max_abs"] for o in v.get("outputs") or []}
    rew = {o["name"]: o["max_abs"] for o in v.get("outputs_vs_rewritten") or []}
    names = list(dict.fromkeys([*orig, *rew]))
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))
    floor = 1e-12
    ax.barh(y - 0.2, [max(orig.get(n, 0.0), floor) for n in names], height=0.4, label="vs original", color="#1f77b4")
    ax.barh(y + 0.2, [max(rew.get(n, 0.0), floor) for n in names], height=0.4, label="vs rewritten", color="#ff7f0e")
    ax.axvline(max(v.get("atol") or floor, floor), color="#d62728", ls="--", lw=1, label=f"atol {v.get('atol')}")
    ax.set_xscale("log")
    ax.set_yticks(y, names)
    ax.set_xlabel(f"max abs error (values below {floor:g} drawn at {floor:g})")
    ax.set_title("verification")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


# ---------------------------------------------------------------- data
def bn_channels(path, **read_options) -> dict[str, dict]:
    """layer name -> ``{"moving_mean": array, "moving_variance": array}`` for every BN of the model file
    (read as data, as ``inspect`` reads it); empty when the file cannot be read."""
    from .errors import BnrewriteError
    from .io import read_model

    try:
        mg = read_model(path, **read_options)
    except (BnrewriteError, OSError):
        return {}
    out: dict[str, dict] = {}
    for n in mg.bn_nodes(include_wrapped=True):
        lay = mg.layer(n)
        if lay.name in out:
            continue
        out[lay.name] = {k: np.asarray(lay.weights[k]) for k in ("moving_mean", "moving_variance")
                         if k in lay.weights}
    return out


def _hint(code: str) -> str:
    from .audit import CODES, SAFETY_CODES

    return (CODES.get(code) or SAFETY_CODES.get(code) or ("", ""))[1]


# ---------------------------------------------------------------- sections
def _table(headers, rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(kind: str, record: dict) -> str:
    inp = record.get("input") or {}
    rows = [[_e(k), _num(v)] for k, v in inp.items() if not isinstance(v, (dict, list))]
    out = record.get("output") or {}
    rows += [[_e(f"output {k}"), _num(v)] for k, v in out.items() if not isinstance(v, (dict, list))]
    vers = record.get("versions") or {}
    rows.append(["versions", _e(", ".join(f"{k} {v}" for k, v in vers.items() if v))])
    code = record.get("exit_code")
    status = ('<span class="ok">ok</span>' if code == 0 else f'<span class="bad">exit {_e(code)}</span>')
    err = record.get("error")
    err_html = f'<p class="bad">{_e(err.get("code"))}: {_e(err.get("message"))}</p>' if err else ""
    return f"<h2>Model</h2><p>{_e(kind)}: {status}</p>{err_html}" + _table(["", ""], rows)


def _findings_section(findings: list[dict], title: str = "Findings") -> str:
    if not findings:
        return f"<h2>{_e(title)}</h2><p class='ok'>no findings</p>"
    rows = []
    for f in findings:
        sev = f.get("severity") or "warning"
        rows.append([f'<span class="{_e(sev)}">{_e(sev)}</span>', _e(f.get("status", "")), f"<code>{_e(f['code'])}</code>",
                     _e(f.get("layer")), _e(f.get("message")), _e(f.get("hint") or _hint(f["code"]))])
    return f"<h2>{_e(title)}</h2>" + _table(["severity", "status", "code", "layer", "message", "fix"], rows)


def _passes_section(passes: list[dict]) -> str:
    if not passes:
        return ""
    rows = []
    for p in passes:
        changed = ", ".join(p.get("changed") or []) or "-"
        skipped = "<br>".join(f"{_e(s.get('layer'))}: {_e(s.get('reason'))}" for s in p.get("skipped") or []) or "-"
        rows.append([_e(p["name"]), _e(len(p.get("changed") or [])), _e(changed), skipped])
    return "<h2>Passes</h2>" + _table(["pass", "changed", "layers changed", "skipped (reason)"], rows)


def _bn_section(before: dict[str, dict], after: dict[str, dict] | None, notes: dict[str, str]) -> str:
    if not before:
        return "<h2>BatchNormalization statistics</h2><p class='muted'>no BatchNormalization layer read</p>"
    parts = ["<h2>BatchNormalization statistics per channel</h2>",
             f"<p class='muted'>red x: outlier channel (more than {OUTLIER_Z:g} robust standard deviations from "
             "the median, non-finite, or a variance at or below 0)</p><div class='plots'>"]
    rows = []
    for i, (name, stats) in enumerate(before.items()):
        new = (after or {}).get(name)
        n_out = sum(int(outliers(stats[k], variance=k == "moving_variance").sum()) for k in stats)
        rows.append([_e(name), _e(next((int(np.size(a)) for a in stats.values()), 0)), _e(n_out),
                     _e(notes.get(name, "calibrated" if new is not None else ""))])
        if i < MAX_BN_PLOTS:
            parts.append(f"<div class='plot' data-layer='{_e(name)}'>{bn_figure(name, stats, new)}</div>")
    parts.append("</div>")
    if len(before) > MAX_BN_PLOTS:
        parts.append(f"<p class='muted'>{len(before) - MAX_BN_PLOTS} more layers in the table, not plotted</p>")
    parts.append(_table(["layer", "channels", "outlier channels (before)", "after the conversion"], rows))
    return "".join(parts)


def _onnx_section(out: dict) -> str:
    if "nodes" not in out:
        return ""
    ops = out.get("ops") or {}
    return ("<h2>ONNX</h2>" + f"<p>{_e(out['nodes'])} nodes, opset {_e(out.get('opset'))}, inputs "
            f"{_e(', '.join(out.get('inputs') or []))}, outputs {_e(', '.join(out.get('outputs') or []))}</p>"
            + _table(["op", "nodes"], [[_e(k), _e(v)] for k, v in sorted(ops.items())])
            + (f"<div class='plot'>{op_histogram(ops)}</div>" if ops else ""))


def _second_size(second: dict | None) -> str:
    if not second:
        return "-"
    shapes = ", ".join(f"{_e(k)} {tuple(s)}" for k, s in (second.get("input_shapes") or {}).items())
    verdict = "<span class='ok'>ok</span>" if second.get("ok") else "<span class='bad'>failed</span>"
    return f"{shapes}: {verdict}, max abs error {_num(second.get('max_abs'))}"


def _verification_section(v: dict | None) -> str:
    if not v:
        return "<h2>Verification</h2><p class='muted'>not verified</p>"
    bi = v.get("batch_independent")
    rows = [["runtime", _e(v.get("runtime"))], ["reference", _e(v.get("reference") or v.get("no_reference"))],
            ["max abs error vs original", _num(v.get("max_abs"))], ["max rel error", _num(v.get("max_rel"))],
            ["max abs error vs rewritten", _num(v.get("max_abs_vs_rewritten"))],
            ["atol / rtol", f"{_num(v.get('atol'))} / {_num(v.get('rtol'))}"],
            ["batch-independent", ("-" if bi is None else ("<span class='ok'>yes</span>" if bi else
                                                           "<span class='bad'>NO</span>"))],
            ["batch independence max abs", _num(v.get("batch_independence_max_abs"))],
            ["inputs from", _e(v.get("inputs_from"))],
            ["reference ran", "eager" if v.get("reference_mode", "eager") == "eager" else
             "graph mode: the framework's eager call differs from it by "
             f"{_num(v.get('eager_graph_max_abs'))} (a framework bug); the written model matches graph mode"],
            ["second size (open dimensions)", _second_size(v.get("second_size"))], ["result", "<span class='ok'>ok</span>" if v.get("ok")
                                                         else "<span class='bad'>failed</span>"]]
    if v.get("error"):
        rows.append(["error", _e(v["error"])])
    fig = verification_figure(v) if (v.get("outputs") or v.get("outputs_vs_rewritten")) else ""
    return "<h2>Verification</h2>" + _table(["", ""], rows) + (f"<div class='plot'>{fig}</div>" if fig else "")


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><h1>{_e(title)}</h1>{body}</body></html>\n")


# ---------------------------------------------------------------- entry points
def convert_html(rep, before: dict[str, dict] | None = None, after: dict[str, dict] | None = None) -> str:
    """The page of a conversion (``rep``: a finalized :class:`~bnrewrite.convert.ConvertReport`)."""
    d = rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)
    findings = []
    for status in ("new", "remaining", "fixed"):
        for f in (d.get("findings") or {}).get(status, []):
            from .report import severity_of

            findings.append({**f, "status": status, "severity": severity_of(f)})
    notes: dict[str, str] = {}
    for p in d.get("passes") or []:
        for name in p.get("changed") or []:
            notes[name] = (notes.get(name, "") + ", " if name in notes else "") + p["name"]
    after = after if after is not None else _calibrated_after(d, before or {})
    body = (_summary("convert", d) + _findings_section(findings) + _passes_section(d.get("passes") or [])
            + _bn_section(before or {}, after, notes) + _onnx_section(d.get("output") or {})
            + _verification_section(d.get("verification")))
    return _page(f"bnrewrite convert: {Path(str((d.get('input') or {}).get('path', ''))).name}", body)


def _calibrated_after(d: dict, before: dict) -> dict | None:
    """Per-channel calibrated statistics when the report carries them (``calibration.per_channel``)."""
    per = (d.get("calibration") or {}).get("per_channel")
    return {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in per.items()} if per else None


def inspect_html(record: dict, before: dict[str, dict] | None = None) -> str:
    body = (_summary("inspect", record) + _findings_section(record.get("findings") or [])
            + _bn_section(before or {}, None, {}))
    return _page(f"bnrewrite inspect: {Path(str((record.get('input') or {}).get('path', ''))).name}", body)


def write_convert_html(rep, path, *, force: bool = False) -> None:
    from .outputs import write_text

    src = (rep.input or {}).get("path")
    before = bn_channels(src) if src and Path(src).is_file() and rep.input.get("format") else {}
    write_text(path, convert_html(rep, before), force=force)


def write_inspect_html(record: dict, result, path, *, force: bool = False, **read_options) -> None:
    from .outputs import write_text

    src = (record.get("input") or {}).get("path")
    before = bn_channels(src, **read_options) if result is not None and result.bn_layers else {}
    write_text(path, inspect_html(record, before), force=force)


__all__ = ["convert_html", "inspect_html", "write_convert_html", "write_inspect_html", "bn_channels", "outliers"]
