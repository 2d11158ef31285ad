"""bnrewrite benchmarks: bnrewrite against plain tf2onnx and model.predict, as ratios in one run.

    python3 bench/run.py                      # full run, writes docs/benchmarks.md
    python3 bench/run.py --quick              # smoke run: small inputs, few repeats
    python3 bench/run.py --only video_td,training_true --out /tmp/b.md

Models are built offline into ``bench/.cache/`` (once; seeded). Every
measurement runs in a fresh subprocess: each conversion (bnrewrite and each
baseline, interleaved, ``--rounds`` times), then one onnxruntime process that
checks every output against the framework's inference output and times the
ONNX files with interleaved runs. Results are ratios bnrewrite / baseline
measured in the same run, because the machines are shared and noisy. Raw
numbers go to ``bench/results/latest.json`` (for ``--quick``/``--only``/``--out``
runs: beside the markdown, ``.json``), the subprocesses' stderr to ``.log``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, BNREWRITE, DEFAULT_CACHE, ROOT, ModelSpec, model_specs, run_py, settings  # noqa: E402

TIMEOUT = 3600.0
AA = "aa_control"  # the goal baseline's file in a second onnxruntime session
GOALS_TEXT = {
    "td_nodes": "video_td: at least 50x fewer ONNX nodes than tf2onnx alone (node ratio <= 0.02)",
    "td_convert": "video_td: at least 10x faster conversion (time ratio <= 0.1)",
    "td_latency": "video_td: at least 1.3x faster onnxruntime inference (latency ratio <= 0.769) at batch 1 and {bl}",
    "zoo_convert": "zoo: total convert time with verification at most 1.3x tf2onnx alone (ratio <= 1.3)",
    "zoo_latency": "zoo: onnxruntime latency no worse than tf2onnx's output (ratio <= 1.05) at batch 1 and {bl}",
}


# --------------------------------------------------------------------------- machine


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 2**20
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "bnrewrite"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = "not installed"
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "bnrewrite"))
    return {
        "cpu": cpu, "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(mem_gib, 1), "os": f"{platform.system()} {platform.release()}",
        "versions": versions, "commit": commit + (" (bnrewrite/ modified)" if dirty else ""),
        "loadavg_start": os.getloadavg(), "date": dt.datetime.now().isoformat(timespec="seconds"),
    }


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


# --------------------------------------------------------------------------- measuring


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_built(spec: ModelSpec, cache: Path, quick: bool, log) -> dict:
    stamp = cache / (Path(spec.file).stem + ".build.json")
    recipe = hashlib.sha256((BENCH / "models.py").read_bytes()).hexdigest()[:16]  # rebuild when it changes
    if stamp.exists() and all((cache / f).exists() for f in spec.files):
        built = json.loads(stamp.read_text())
        if built.get("recipe") == recipe:
            return built
    say(f"building {spec.name} into {cache}")
    args = ["bench/models.py", spec.name, "--cache", str(cache)] + (["--quick"] if quick else [])
    p = run_py(args, timeout=TIMEOUT, log=log)
    if p.rc != 0 or p.result is None:
        raise SystemExit(f"building {spec.name} failed:\n{p.stderr[-3000:]}")
    built = {**p.result, "recipe": recipe}
    stamp.write_text(json.dumps(built, indent=1))
    return built


def convert_once(kind: str, src: Path, dst: Path, log) -> dict:
    dst.unlink(missing_ok=True)
    p = run_py(["bench/worker.py", kind, str(src), str(dst)], timeout=TIMEOUT, log=log)
    if p.rc != 0 or p.result is None:
        lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
        return {"ok": False, "wall_s": p.wall_s, "error": (lines[-1] if lines else f"exit {p.rc}")[:300]}
    return {"ok": True, "wall_s": p.wall_s, **p.result}


def measure_model(spec: ModelSpec, cache: Path, st: dict, threads: int, log) -> dict:
    out_dir = cache / "out"
    out_dir.mkdir(exist_ok=True)
    sides = [(BNREWRITE, BNREWRITE, spec.file)] + [(b.key, b.kind, b.file) for b in spec.baselines]
    runs: dict[str, list[dict]] = {k: [] for k, _, _ in sides}
    for r in range(st["rounds"]):
        order = sides[r % len(sides):] + sides[:r % len(sides)]  # alternate who goes first
        for key, kind, f in order:
            say(f"{spec.name}: round {r + 1}/{st['rounds']}: {key}")
            res = convert_once(kind, cache / f, out_dir / f"{Path(spec.file).stem}.{key}.onnx", log)
            if not res["ok"]:
                say(f"  {key} failed: {res['error']}")
            runs[key].append(res)
    files = {k: str(out_dir / f"{Path(spec.file).stem}.{k}.onnx") for k in runs if all(x["ok"] for x in runs[k])}
    goal = next((b.key for b in spec.baselines if b.goal), None)
    if goal in files:  # A/A control: a second session of the same baseline file, to show the noise floor
        files[AA] = files[goal]
    ort = {}
    if files:
        say(f"{spec.name}: onnxruntime errors and latency ({', '.join(files)})")
        p = run_py(["bench/worker.py", "ort", str(cache / spec.ref_file), *[f"{k}={v}" for k, v in files.items()],
                    "--threads", str(threads), "--runs-b1", str(st["runs_b1"]), "--runs-bl", str(st["runs_b32"]),
                    "--batch-large", str(st["batch_large"]), "--warmup", str(st["warmup"])],
                   timeout=TIMEOUT, log=log)
        if p.rc != 0 or p.result is None:
            say(f"  onnxruntime worker failed: {p.stderr.strip().splitlines()[-1:]}")
        else:
            ort = p.result["results"]
    return {"name": spec.name, "runs": runs, "ort": ort}


def summarize_side(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if r["ok"]]
    if not ok or len(ok) != len(runs):
        return None
    med = lambda xs: statistics.median(xs)  # noqa: E731
    s = {"wall_s": med([r["wall_s"] for r in ok]), "call_s": med([r["call_s"] for r in ok]),
         "import_s": med([r["import_s"] for r in ok]), "maxrss_mb": max(r["maxrss_mb"] for r in ok),
         "nodes": ok[-1]["nodes"], "bytes": ok[-1]["bytes"], "ops": ok[-1]["ops"], "rounds": len(ok),
         "walls": [round(r["wall_s"], 2) for r in ok]}
    s["timings"] = {k: med([r["timings"][k] for r in ok]) for k in ok[0]["timings"]}
    for k in ("verification", "passes"):
        if k in ok[-1]:
            s[k] = ok[-1][k]
    return s


def ratio(a, b):
    try:
        return a / b if b else float("nan")
    except TypeError:
        return float("nan")


def paired_ratio(a: dict, b: dict, tag: str) -> float:
    """Median over rounds of (a's run / b's run in the same round): the two runs of a round are
    back to back, so load that comes and goes on the machine cancels; falls back to the ratio of medians."""
    xs, ys = a.get(f"lat_{tag}_all_ms"), b.get(f"lat_{tag}_all_ms")
    if not xs or not ys or len(xs) != len(ys):
        return ratio(a.get(f"lat_{tag}_ms"), b.get(f"lat_{tag}_ms"))
    return statistics.median(x / y for x, y in zip(xs, ys))


# --------------------------------------------------------------------------- report


def fmt_r(x: float) -> str:
    if x != x:
        return "n/a"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_e(x) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def fmt_mb(b) -> str:
    return f"{b / 1e6:.2f}" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def build_rows(specs: list[ModelSpec], measured: dict, bl: int) -> list[dict]:
    rows = []
    for spec in specs:
        m = measured.get(spec.name)
        if not m:
            continue
        bn = summarize_side(m["runs"][BNREWRITE])
        for b in spec.baselines:
            base = summarize_side(m["runs"][b.key])
            o_bn, o_b = m["ort"].get(BNREWRITE, {}), m["ort"].get(b.key, {})
            o_aa = m["ort"].get(AA, {}) if b.goal else {}
            row = {"model": spec.name, "group": spec.group, "baseline": b.label, "goal_baseline": b.goal,
                   "bn": bn, "base": base, "ort_bn": o_bn, "ort_base": o_b,
                   "bn_error": None if bn else m["runs"][BNREWRITE][-1].get("error"),
                   "base_error": None if base else m["runs"][b.key][-1].get("error")}
            if bn and base:
                row.update(
                    wall_ratio=ratio(bn["wall_s"], base["wall_s"]), call_ratio=ratio(bn["call_s"], base["call_s"]),
                    node_ratio=ratio(bn["nodes"], base["nodes"]), size_ratio=ratio(bn["bytes"], base["bytes"]),
                    lat_b1_ratio=paired_ratio(o_bn, o_b, "b1"), lat_bL_ratio=paired_ratio(o_bn, o_b, "bL"),
                    aa_b1_ratio=paired_ratio(o_aa, o_b, "b1") if o_aa else None,
                    aa_bL_ratio=paired_ratio(o_aa, o_b, "bL") if o_aa else None,
                    lat_b1_ratio_of_medians=ratio(o_bn.get("lat_b1_ms"), o_b.get("lat_b1_ms")),
                    lat_bL_ratio_of_medians=ratio(o_bn.get("lat_bL_ms"), o_b.get("lat_bL_ms")))
            rows.append(row)
    return rows


def evaluate_goals(rows: list[dict], bl: int) -> list[dict]:
    goals = []

    def add(key, value, passed, detail):
        goals.append({"goal": GOALS_TEXT[key].format(bl=bl), "value": value, "pass": passed, "detail": detail})

    td = [r for r in rows if r["model"] == "video_td" and r["goal_baseline"] and "wall_ratio" in r]
    if td:
        r = td[0]
        add("td_nodes", f"{r['node_ratio']:.4f} ({r['base']['nodes']} -> {r['bn']['nodes']} nodes, "
                        f"{1 / r['node_ratio']:.0f}x fewer)", r["node_ratio"] <= 0.02, "")
        add("td_convert", f"process wall {r['wall_ratio']:.3f} ({1 / r['wall_ratio']:.1f}x faster); conversion call "
                          f"{r['call_ratio']:.3f} ({1 / r['call_ratio']:.1f}x faster)",
            r["wall_ratio"] <= 0.1, "judged on process wall time (imports included on both sides)")
        lat = max(r["lat_b1_ratio"], r["lat_bL_ratio"])
        add("td_latency", f"batch 1: {r['lat_b1_ratio']:.3f} ({1 / r['lat_b1_ratio']:.1f}x faster); batch {bl}: "
                          f"{r['lat_bL_ratio']:.3f} ({1 / r['lat_bL_ratio']:.1f}x faster)", lat <= 1 / 1.3, "")
    zoo = [r for r in rows if r["group"] == "zoo" and r["goal_baseline"] and "wall_ratio" in r]
    if zoo:
        tot_bn = sum(r["bn"]["wall_s"] for r in zoo)
        tot_b = sum(r["base"]["wall_s"] for r in zoo)
        call_bn = sum(r["bn"]["call_s"] for r in zoo)
        call_b = sum(r["base"]["call_s"] for r in zoo)
        worst = max(zoo, key=lambda r: r["wall_ratio"])
        add("zoo_convert", f"process wall {tot_bn / tot_b:.3f} (conversion call {call_bn / call_b:.3f}); worst model "
                           f"{worst['model']} {worst['wall_ratio']:.3f}", tot_bn / tot_b <= 1.3,
            f"{len(zoo)} models, sums of per-model medians")
        lats = [(r["model"], tag, r[f"lat_{tag}_ratio"]) for r in zoo for tag in ("b1", "bL")]
        worst = max(lats, key=lambda t: t[2])
        aa = [r[f"aa_{tag}_ratio"] for r in zoo for tag in ("b1", "bL") if r.get(f"aa_{tag}_ratio") is not None]
        noise = f"A/A control {min(aa):.3f}–{max(aa):.3f}" if aa else ""
        add("zoo_latency", "worst " + f"{worst[0]} batch {1 if worst[1] == 'b1' else bl}: {worst[2]:.3f}; all: " +
            ", ".join(f"{m} {'b1' if t == 'b1' else 'b' + str(bl)} {v:.3f}" for m, t, v in lats),
            all(v <= 1.05 for _, _, v in lats), noise)
    return goals


def render(info: dict, specs: list[ModelSpec], builds: dict, rows: list[dict], goals: list[dict],
           adabn: dict | None, adabn_note: str, args, st: dict, wall_total: float) -> str:
    bl = st["batch_large"]
    L = []
    w = L.append
    w("# Benchmarks\n")
    w("bnrewrite against plain `tf2onnx.convert.from_keras` and `model.predict`, as **ratios measured in one run** "
      "(bnrewrite ÷ baseline: below 1 means bnrewrite is smaller or faster). The machines are shared and noisy, "
      "so absolute times are given only as context.\n")
    if args.quick:
        w("> **This is a `--quick` smoke run** (small inputs, too few repeats): not a measurement.\n")
    w("Regenerate with (from the repository root):\n")
    w("```sh\npython3 bench/run.py" + (" --quick" if args.quick else "") +
      (f" --only {args.only}" if args.only else "") + "\n```\n")
    w("## Machine\n")
    v = info["versions"]
    w(f"* CPU: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), {info['ram_gib']} GiB RAM, "
      f"no GPU; {info['os']}")
    w(f"* Python {v['python']}, tensorflow {v['tensorflow']}, keras {v['keras']}, tf_keras {v['tf_keras']}, "
      f"tf2onnx {v['tf2onnx']}, onnx {v['onnx']}, onnxruntime {v['onnxruntime']}, numpy {v['numpy']}, "
      f"bnrewrite {v['bnrewrite']} (commit {info['commit'] or 'unknown'})")
    la0, la1 = info["loadavg_start"], info.get("loadavg_end", (float("nan"),) * 3)
    w(f"* Run of {info['date']}, {wall_total / 60:.1f} min; load average (1 min) {la0[0]:.2f} at the start, "
      f"{la1[0]:.2f} at the end: other work shared the machine.\n")

    w("## Method\n")
    w(f"* **Conversion**: each conversion is a fresh `python` process; bnrewrite and each baseline alternate "
      f"(A B, B A, ...), {st['rounds']} round(s), median per side. *bnrewrite* = `bnrewrite.convert(src, out.onnx)` "
      "with its verification (reference Keras run + onnxruntime + per-sample batch-independence check), exactly "
      "what `bnrewrite convert src out.onnx` runs. *tf2onnx* = `keras.saving.load_model(src)` (or "
      "`tf_keras.models.load_model` where stated) + `tf2onnx.convert.from_keras(model, input_signature, opset=17)` "
      "+ `onnx.save`, with the input signature bnrewrite uses (named inputs, batch axis `None`). "
      "**Process wall** = spawn to exit, imports included on both sides (TensorFlow dominates them); "
      "**call** = from the first byte read to the ONNX file on disk, imports excluded on both sides "
      "(both processes import tensorflow, keras, tf2onnx and onnx first; bnrewrite also onnxruntime and itself).")
    w(f"* **ONNX size**: top-level graph nodes and file bytes of the written files.")
    w(f"* **onnxruntime latency**: one process, CPUExecutionProvider, `intra_op_num_threads={args.threads}`, "
      f"`inter_op_num_threads=1`, sequential, default graph optimizations; {st['warmup']} warm-up runs per session, "
      f"then the sessions' runs interleaved (A B, B A, ...), {st['runs_b1']} runs at batch 1 and "
      f"{st['runs_b32']} runs at batch {bl} on the same seeded input. The latency ratio is the median over "
      "rounds of the ratio of the two back-to-back runs of a round (paired, so that load coming and going "
      "on the shared machine cancels); the medians of each side and their ratio are in the details table. "
      "*ORT nodes* = nodes left after onnxruntime's own graph optimizations (what actually runs).")
    w("* **Max error**: max |out − ref| on the same seeded batch of 4 (N(0, 1)), where ref is the inference output of "
      "the framework that wrote the file (Keras 3 `model(x, training=False)` for `.keras`, tf_keras `predict` for "
      "`.h5`; for `training_true`, the same weights without `training=True`). *batch dep.* = max |sample alone − "
      "same sample inside the batch| (0 for a model that uses moving statistics).\n")

    w("### Models\n")
    w("| model | file | what | layers | BN | params |")
    w("|---|---|---|---|---|---|")
    for s in specs:
        b = builds.get(s.name, {})
        w(f"| {s.name} | `{s.file}` | {s.description} | {b.get('layers', '')} | {b.get('bn', '')} | "
          f"{b.get('params', 0):,} |")
    w("")

    w("## Results\n")
    w("Ratios are bnrewrite ÷ baseline (< 1: bnrewrite is smaller / faster). *A/A control*: the baseline's own "
      "file in a second onnxruntime session, timed in the same interleaved rounds against the baseline — its "
      "distance from 1.000 is the noise of this run's latency ratios.\n")
    w(f"| model | baseline | convert ratio (process wall) | convert ratio (call) | ONNX nodes bnrewrite / baseline "
      f"| node ratio | size bnrewrite / baseline (MB) | size ratio | ORT latency ratio b1 | ORT latency ratio b{bl} "
      f"| A/A control b1 / b{bl} | max error bnrewrite | max error baseline | batch dep. bnrewrite / baseline |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "wall_ratio" not in r:
            err = r["bn_error"] or r["base_error"]
            who = "bnrewrite" if r["bn_error"] else "baseline"
            w(f"| {r['model']} | {r['baseline']} | {who} failed: {err} |" + " |" * 11)
            continue
        bn, base, ob, oa = r["bn"], r["base"], r["ort_bn"], r["ort_base"]
        w(f"| {r['model']} | {r['baseline']}{' (goal)' if r['goal_baseline'] and r['group'] != 'training' else ''} | "
          f"**{fmt_r(r['wall_ratio'])}** | {fmt_r(r['call_ratio'])} | {bn['nodes']} / {base['nodes']} | "
          f"**{fmt_r(r['node_ratio'])}** | {fmt_mb(bn['bytes'])} / {fmt_mb(base['bytes'])} | {fmt_r(r['size_ratio'])} | "
          f"**{fmt_r(r['lat_b1_ratio'])}** | **{fmt_r(r['lat_bL_ratio'])}** | "
          f"{'' if r.get('aa_b1_ratio') is None else fmt_r(r['aa_b1_ratio']) + ' / ' + fmt_r(r['aa_bL_ratio'])} | "
          f"{fmt_e(ob.get('max_abs'))} | "
          f"{fmt_e(oa.get('max_abs'))} | {fmt_e(ob.get('batch_dependence'))} / {fmt_e(oa.get('batch_dependence'))} |")
    w("")

    w("### Details\n")
    w("Absolute values (context only: the machine is shared). Convert: median process wall over the rounds. "
      "Latency: median (p10–p90) in ms.\n")
    w(f"| model | side | convert wall (s) | ONNX nodes | ORT nodes | latency b1 (ms) | latency b{bl} (ms) "
      f"| ratio of medians b1 / b{bl} | max abs error | max rel error | max \\|ref\\| |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in specs:
        rs = [r for r in rows if r["model"] == spec.name]
        if not rs:
            continue
        sides = [("bnrewrite", rs[0]["bn"], rs[0]["ort_bn"], None)] + \
                [(r["baseline"], r["base"], r["ort_base"], r) for r in rs]
        for label, side, o, r in sides:
            if not side:
                continue
            lat = lambda t: (f"{o[f'lat_{t}_ms']:.2f} ({o[f'lat_{t}_p10_ms']:.2f}–{o[f'lat_{t}_p90_ms']:.2f})"  # noqa: E731
                             if f"lat_{t}_ms" in o else "n/a")
            rom = "" if r is None or "lat_b1_ratio_of_medians" not in r else \
                f"{fmt_r(r['lat_b1_ratio_of_medians'])} / {fmt_r(r['lat_bL_ratio_of_medians'])}"
            w(f"| {spec.name} | {label} | {side['wall_s']:.2f} | {side['nodes']} | {o.get('ort_optimized_nodes', 'n/a')} "
              f"| {lat('b1')} | {lat('bL')} | {rom} | {fmt_e(o.get('max_abs'))} | {fmt_e(o.get('max_rel'))} "
              f"| {o.get('ref_max', float('nan')):.3g} |")
    w("")

    w("## Goals\n")
    if not goals:
        w("No goal could be evaluated in this run (models left out with `--only`, or a conversion failed).\n")
    else:
        w("| goal | result | status |")
        w("|---|---|---|")
        for g in goals:
            w(f"| {g['goal']} | {g['value']}{' — ' + g['detail'] if g['detail'] else ''} | "
              f"**{'PASS' if g['pass'] else 'MISS'}** |")
        w("")

    w("## Where the time goes\n")
    w("Medians in seconds (context only; machine shared). bnrewrite's phases come from `ConvertReport.timings`: "
      "*read* (parse the file; for `.keras` Keras loads the archive for the weights), *passes* (graph rewrites; "
      "fold/unwrap trace the model symbolically for shapes), *rebuild* (Keras 3 model from the graph), *write* "
      "(tf2onnx on the rebuilt model + save), *verify* (Keras reference run, onnxruntime, batch independence). "
      "Baseline: *load* (`load_model`), *convert* (`from_keras`), *save*.\n")
    w("| model | side | process wall | imports | call | read / load | passes | rebuild | write / convert | verify "
      "| save | peak RSS (MB) | walls per round |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in specs:
        r0 = next((r for r in rows if r["model"] == spec.name), None)
        if r0 is None:
            continue
        sides = [("bnrewrite", r0["bn"])] + [(r["baseline"], r["base"]) for r in rows if r["model"] == spec.name]
        for label, s in sides:
            if not s:
                continue
            t = s["timings"]
            if label == "bnrewrite":
                cells = [t.get("read_s"), t.get("passes_s"), t.get("rebuild_s"), t.get("write_s"), t.get("verify_s"),
                         None]
            else:
                cells = [t.get("load_s"), None, None, t.get("convert_s"), None, t.get("save_s")]
            cs = " | ".join("" if c is None else f"{c:.2f}" for c in cells)
            w(f"| {spec.name} | {label} | {s['wall_s']:.2f} | {s['import_s']:.2f} | {s['call_s']:.2f} | {cs} | "
              f"{s['maxrss_mb']:.0f} | {s['walls']} |")
    w("")

    tt = [r for r in rows if r["model"] == "training_true" and r.get("ort_base")]
    if tt:
        ob = tt[0]["ort_bn"]
        w("## `training=True` baked into a tf.keras `.h5`\n")
        w("Max abs error of each ONNX output against the inference output (reference) and against tf_keras "
          "`predict` of the original file (which normalizes `bn1` and `bn3` with the statistics of the batch):\n")
        w("| ONNX from | vs inference reference | vs tf_keras predict of the original | batch dep. |")
        w("|---|---|---|---|")
        w(f"| bnrewrite | {fmt_e(ob.get('max_abs'))} | {fmt_e(ob.get('max_abs_vs_original_predict'))} | "
          f"{fmt_e(ob.get('batch_dependence'))} |")
        for r in tt:
            oa = r["ort_base"]
            w(f"| {r['baseline']} | {fmt_e(oa.get('max_abs'))} | {fmt_e(oa.get('max_abs_vs_original_predict'))} | "
              f"{fmt_e(oa.get('batch_dependence'))} |")
        w(f"\n(reference output magnitude: max |ref| = {ob.get('ref_max', float('nan')):.2f})\n")

    w("## AdaBN calibration\n")
    if adabn is None:
        w(adabn_note + "\n")
    else:
        w(render_adabn(adabn))

    notes = BENCH / "NOTES.md"
    if notes.exists() and not args.quick:
        w(notes.read_text().rstrip() + "\n")
    return "\n".join(L)


def render_adabn(res: dict) -> str:
    out = []
    rows = res.get("rows") or []
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for r in rows:
            out.append("| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |")
        out.append("")
    for n in res.get("notes") or []:
        out.append(f"* {n}")
    return "\n".join(out) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).replace("|", "\\|")


def run_adabn(quick: bool) -> tuple[dict | None, str]:
    path = BENCH / "adabn.py"
    if not path.exists():
        return None, "Skipped: `bench/adabn.py` is not there yet (calibration benchmark pending)."
    say("AdaBN calibration benchmark (bench/adabn.py)")
    try:
        spec = importlib.util.spec_from_file_location("bench_adabn", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.run(quick=quick), ""
    except Exception as e:  # report, do not lose the rest of the run
        return None, f"`bench/adabn.py` failed: {type(e).__name__}: {str(e)[:300]}"


def console_table(rows: list[dict], goals: list[dict], bl: int) -> str:
    lines = [f"{'model':14} {'baseline':36} {'conv(wall)':>10} {'conv(call)':>10} {'nodes bn/base':>14} "
             f"{'node r':>7} {'size r':>7} {'lat b1':>7} {'lat b' + str(bl):>7} {'err bn':>8} {'err base':>8}"]
    for r in rows:
        if "wall_ratio" not in r:
            lines.append(f"{r['model']:14} {r['baseline'][:36]:36} FAILED: {r['bn_error'] or r['base_error']}")
            continue
        lines.append(
            f"{r['model']:14} {r['baseline'][:36]:36} {fmt_r(r['wall_ratio']):>10} {fmt_r(r['call_ratio']):>10} "
            f"{str(r['bn']['nodes']) + '/' + str(r['base']['nodes']):>14} {fmt_r(r['node_ratio']):>7} "
            f"{fmt_r(r['size_ratio']):>7} {fmt_r(r['lat_b1_ratio']):>7} {fmt_r(r['lat_bL_ratio']):>7} "
            f"{fmt_e(r['ort_bn'].get('max_abs')):>8} {fmt_e(r['ort_base'].get('max_abs')):>8}")
    for g in goals:
        lines.append(f"{'PASS' if g['pass'] else 'MISS'}  {g['goal']}: {g['value']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small inputs, 1 round, few latency runs")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown output (default docs/benchmarks.md; for --quick/--only bench/results/benchmarks.md)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model cache folder (default bench/.cache)")
    ap.add_argument("--rounds", type=int, default=None, help="conversion rounds per side (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--no-adabn", action="store_true", help="skip the AdaBN calibration benchmark")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    ap.add_argument("--render", type=Path, metavar="RAW.json",
                    help="measure nothing: rewrite the markdown from a previous run's raw results "
                         "(bench/results/latest.json), e.g. after editing bench/NOTES.md")
    args = ap.parse_args(argv)
    raw = None
    if args.render:
        raw = json.loads(args.render.read_text())
        args.quick = raw["args"]["quick"] == "True"
        args.only = raw["args"]["only"]
        args.threads = int(raw["args"]["threads"])

    specs = model_specs(args.quick)
    if args.list:
        for s in specs:
            print(f"{s.name:16} {s.description}")
        return 0
    if args.only:
        want = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = set(want) - {s.name for s in specs}
        if unknown:
            ap.error(f"unknown model(s) {sorted(unknown)}; choose from {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in want]
    st = settings(args.quick)
    if args.rounds:
        st["rounds"] = args.rounds
    if raw is not None:
        st = raw["settings"]
    partial = args.quick or bool(args.only)
    out = args.out or (BENCH / "results" / "benchmarks.md" if partial else ROOT / "docs" / "benchmarks.md")
    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    # the full run's raw numbers stay in bench/results/latest.json; other runs write theirs beside their markdown
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    raw_path = results_dir / "latest.json" if out == ROOT / "docs" / "benchmarks.md" else out.with_suffix(".json")
    if raw is not None:
        rows = build_rows(specs, raw["measured"], st["batch_large"])
        goals = evaluate_goals(rows, st["batch_large"])
        out.write_text(render(raw["machine"], specs, raw["builds"], rows, goals, raw["adabn"],
                              raw.get("adabn_note", ""), args, st, raw.get("wall_total_s", float("nan"))))
        print(console_table(rows, goals, st["batch_large"]))
        say(f"rewrote {out} from {args.render}")
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    log = open(raw_path.with_suffix(".log"), "w")

    t0 = time.perf_counter()
    info = machine()
    say(f"{info['cpu']}, {info['cores']} cores; cache {args.cache}; out {out}")
    builds = {s.name: ensure_built(s, args.cache, args.quick, log) for s in specs}
    measured = {}
    for s in specs:
        measured[s.name] = measure_model(s, args.cache, st, args.threads, log)
    adabn, adabn_note = (None, "Skipped (`--no-adabn`).") if args.no_adabn else run_adabn(args.quick)
    info["loadavg_end"] = os.getloadavg()
    wall_total = time.perf_counter() - t0

    rows = build_rows(specs, measured, st["batch_large"])
    goals = evaluate_goals(rows, st["batch_large"])
    text = render(info, specs, builds, rows, goals, adabn, adabn_note, args, st, wall_total)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    raw = {"machine": info, "settings": st, "args": {k: str(v) for k, v in vars(args).items()},
           "builds": builds, "measured": measured, "rows": rows, "goals": goals, "adabn": adabn,
           "adabn_note": adabn_note, "wall_total_s": wall_total}
    raw_path.write_text(json.dumps(raw, indent=1, default=str))
    print(console_table(rows, goals, st["batch_large"]))
    say(f"wrote {out} and {raw_path} in {wall_total / 60:.1f} min")
    failed = [r for r in rows if "wall_ratio" not in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
