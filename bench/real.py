"""The real-model regression set (tests/realmodels) as a benchmark: bnrewrite vs plain tf2onnx.

    python3 bench/real.py                  # every case: conversion time, ONNX nodes, latency ratios
    python3 bench/real.py --quick          # a representative subset, few repeats (smoke run)
    python3 bench/real.py --only yolov3_tiny,tag:timedistributed --out /tmp/real.json

Like bench/run.py, the parent never imports TensorFlow: for each case, in fresh processes,

1. the model file is built into tests/realmodels/.cache/ (seeded; cached);
2. ``bnrewrite.convert(file, out.onnx)`` (verification on) -- timed;
3. plain tf2onnx: the writing framework's ``load_model(file)`` + ``tf2onnx.convert.from_keras``
   (opset 17, same input signature) -- timed;
4. one measuring process: the reference (the writing framework's own ``load_model`` called with
   ``training=False``), max abs error of both ONNX files against it, node counts after
   onnxruntime ORT_ENABLE_ALL, and onnxruntime latency at batch 1 (runs interleaved, 1 thread).

Printed per model: bnrewrite / tf2onnx ratios of conversion time, optimized node count and
median latency (< 1 means bnrewrite's is smaller/faster). Raw numbers go to
``bench/results/real.json`` (``--out`` to change). Steps 2-4 of a case are repeated
``--rounds`` times (conversions interleaved) and the medians are used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import ROOT, emit, run_py  # noqa: E402

QUICK = ["yolov3_tiny-tk", "yolov3_tiny-k3", "cnn_lstm_td-tk", "td_speech_emotion-tk", "deep_speech2-tk",
         "resnet50-keras-224", "mobilenet_v2-k3", "dcgan-keras-216"]
TIMEOUT = 1800.0


# --------------------------------------------------------------------------- workers (child side)


def _case(name):
    sys.path.insert(0, str(ROOT))
    import tests.realmodels as rm

    return rm, rm.CASES_BY_NAME[name]


def worker_build(name: str) -> dict:
    t = time.perf_counter()
    rm, case = _case(name)
    t1 = time.perf_counter()
    path = rm.ensure_built(case)
    return {"import_s": t1 - t, "build_s": time.perf_counter() - t1, "file": str(path)}


def worker_bnrewrite(name: str, dst: str) -> dict:
    t0 = time.perf_counter()
    rm, case = _case(name)
    rm.common.quiet()
    import bnrewrite

    kwargs = dict(case.convert_kwargs)
    if case.custom:
        kwargs["custom_objects"] = case.custom_objects()
    t1 = time.perf_counter()
    try:
        rep = bnrewrite.convert(rm.CACHE / case.filename, dst, force=True, **kwargs)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}",
                "call_s": time.perf_counter() - t1}
    return {"ok": True, "import_s": t1 - t0, "call_s": time.perf_counter() - t1,
            "timings": getattr(rep, "timings", None)}


def worker_tf2onnx(name: str, dst: str) -> dict:
    t0 = time.perf_counter()
    rm, case = _case(name)
    rm.common.quiet()
    import onnx
    import tf2onnx

    from tests.realmodels.run import signature

    t1 = time.perf_counter()
    try:
        model = rm.load(case, rm.CACHE / case.filename)
        specs = rm.common.input_specs(model)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature(model, specs), opset=17)
        onnx.save(proto, dst)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}",
                "call_s": time.perf_counter() - t1}
    return {"ok": True, "import_s": t1 - t0, "call_s": time.perf_counter() - t1}


def worker_measure(name: str, files_json: str, runs: int, warmup: int) -> dict:
    rm, case = _case(name)
    rm.common.quiet()
    import numpy as np

    from tests.realmodels.run import latency, match_outputs, onnx_feed, optimized_nodes, session

    files = json.loads(files_json)
    model, xs, want, want_graph = rm.reference(case, rm.CACHE)
    specs = rm.common.input_specs(model)
    out, sessions, feeds = {}, {}, {}
    for key, path in files.items():
        r = optimized_nodes(path)
        sess = session(path)
        got = match_outputs([np.asarray(o) for o in sess.run(None, onnx_feed(sess, specs, xs))], want)
        r["max_abs"], r["parity"], _ = rm.common.parity(got, want, None, want_graph)
        out[key] = r
        sessions[key] = sess
        feeds[key] = onnx_feed(sess, specs, [x[:1] for x in xs])
    if len(sessions) > 1:
        lat = latency(sessions, feeds, runs, warmup)
        for k, v in lat.items():
            out[k]["lat_b1_ms"] = v
    return out


# --------------------------------------------------------------------------- parent


def _run(args, log):
    p = run_py([str(Path(__file__).resolve()), "--worker", *args], timeout=TIMEOUT, log=log)
    if p.result is None:
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()][-1:]
        return {"ok": False, "error": f"worker exited {p.rc}: {tail[0][:300] if tail else ''}"}, p
    return p.result, p


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def bench_case(name: str, out_dir: Path, rounds: int, runs: int, warmup: int, log) -> dict:
    res: dict = {"name": name}
    b, _ = _run(["build", name], log)
    res["build"] = b
    if not b.get("build_s") and b.get("build_s") != 0.0:
        return res
    bnr_path, t2o_path = out_dir / f"{name}.bnrewrite.onnx", out_dir / f"{name}.tf2onnx.onnx"
    conv = {"bnrewrite": [], "tf2onnx": []}
    for r in range(rounds):
        order = ["bnrewrite", "tf2onnx"] if r % 2 == 0 else ["tf2onnx", "bnrewrite"]
        for kind in order:
            dst = bnr_path if kind == "bnrewrite" else t2o_path
            got, proc = _run([kind, name, str(dst)], log)
            got["wall_s"] = proc.wall_s
            got["maxrss_mb"] = proc.maxrss_mb
            conv[kind].append(got)
    res["convert"] = conv
    files = {k: str(p) for k, p in (("bnrewrite", bnr_path), ("tf2onnx", t2o_path))
             if conv[k] and all(c.get("ok") for c in conv[k]) and p.exists()}
    if files:
        m, _ = _run(["measure", name, json.dumps(files), str(runs), str(warmup)], log)
        res["measure"] = m
    return res


def ratios(res: dict) -> dict:
    c = res.get("convert", {})
    m = res.get("measure", {}) or {}
    b, t = m.get("bnrewrite", {}), m.get("tf2onnx", {})
    out = {}
    bc = _med([x.get("call_s") for x in c.get("bnrewrite", []) if x.get("ok")])
    tc = _med([x.get("call_s") for x in c.get("tf2onnx", []) if x.get("ok")])
    if bc and tc:
        out["convert"] = bc / tc
    if b.get("nodes_opt") and t.get("nodes_opt"):
        out["nodes"] = b["nodes_opt"] / t["nodes_opt"]
    if b.get("lat_b1_ms") and t.get("lat_b1_ms"):
        out["latency_b1"] = b["lat_b1_ms"] / t["lat_b1_ms"]
    return out


def table(results: list[dict]) -> str:
    rows = [("case", "bnrewrite", "tf2onnx", "convert b/t", "nodes b (t)", "nodes b/t", "lat b1 b/t")]
    for r in results:
        m = r.get("measure", {}) or {}
        c = r.get("convert", {})

        def st(kind):
            runs = c.get(kind, [])
            if not runs:
                return "-"
            if not all(x.get("ok") for x in runs):
                return "error"
            x = m.get(kind, {})
            if "max_abs" not in x:
                return "ok"
            return ("ok " if x.get("parity") else "WRONG ") + f"{x['max_abs']:.1e}"

        q = ratios(r)
        b, t = m.get("bnrewrite", {}), m.get("tf2onnx", {})
        nodes = f"{b.get('nodes_opt', '-')} ({t.get('nodes_opt', '-')})" if b or t else "-"
        rows.append((r["name"], st("bnrewrite"), st("tf2onnx"),
                     f"{q['convert']:.2f}" if "convert" in q else "-", nodes,
                     f"{q['nodes']:.2f}" if "nodes" in q else "-",
                     f"{q['latency_b1']:.2f}" if "latency_b1" in q else "-"))
    w = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(x).ljust(w[i]) for i, x in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    errs = []
    for r in results:
        for kind, runs in r.get("convert", {}).items():
            for x in runs[:1]:
                if not x.get("ok"):
                    errs.append(f"{r['name']} [{kind}]: {x.get('error')}")
    return "\n".join(lines + ([""] + errs if errs else []))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        mode, *rest = sys.argv[2:]
        if mode == "build":
            emit(worker_build(*rest))
        elif mode == "bnrewrite":
            emit(worker_bnrewrite(*rest))
        elif mode == "tf2onnx":
            emit(worker_tf2onnx(*rest))
        elif mode == "measure":
            name, files, runs, warmup = rest
            emit(worker_measure(name, files, int(runs), int(warmup)))
        else:
            sys.exit(f"unknown worker mode {mode!r}")
        return 0

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="subset of cases, 1 round, few latency runs")
    ap.add_argument("--only", default="", help="comma-separated case names, arch names or tag:<tag>")
    ap.add_argument("--rounds", type=int, default=None, help="conversion rounds per case")
    ap.add_argument("--runs", type=int, default=None, help="latency runs per session at batch 1")
    ap.add_argument("--out", default=str(BENCH / "results" / "real.json"))
    a = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from tests.realmodels import CACHE, select  # no TensorFlow import: the registry is plain data

    names = [c.name for c in select(a.only)] if a.only else ([*QUICK] if a.quick else [c.name for c in select("")])
    rounds = a.rounds or (1 if a.quick else 3)
    runs = a.runs or (10 if a.quick else 50)
    warmup = 1 if a.quick else 3
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = CACHE / "bench"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        for i, n in enumerate(names, 1):
            t = time.perf_counter()
            r = bench_case(n, work, rounds, runs, warmup, log)
            r["ratios"] = ratios(r)
            r["wall_s"] = time.perf_counter() - t
            results.append(r)
            q = r["ratios"]
            print(f"[{i}/{len(names)}] {n}: " + ", ".join(f"{k} {v:.2f}" for k, v in q.items())
                  + f" ({r['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    doc = {"settings": {"rounds": rounds, "runs_b1": runs, "warmup": warmup, "quick": a.quick},
           "wall_s": time.perf_counter() - t0, "cases": results}
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(table(results))
    for key, label in (("convert", "conversion time"), ("nodes", "optimized ONNX nodes"),
                       ("latency_b1", "latency at batch 1")):
        vals = [r["ratios"][key] for r in results if key in r["ratios"]]
        if vals:
            print(f"{label}: bnrewrite / tf2onnx median ratio {statistics.median(vals):.2f} "
                  f"(min {min(vals):.2f}, max {max(vals):.2f}, {len(vals)} models)")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
