"""Run the real-model regression set through bnrewrite and plain tf2onnx.

    python3 -m tests.realmodels.run                         # every case, ONNX and Keras outputs
    python3 -m tests.realmodels.run --only yolov3_tiny,tag:timedistributed --formats onnx
    python3 -m tests.realmodels.run --list                  # the cases, one line each
    python3 -m tests.realmodels.run --isolate               # each case in a fresh process

For every case: the model file is built (cached in ``tests/realmodels/.cache/``),
the reference is computed independently -- the writing framework's own
``load_model(file, compile=False)`` called with ``training=False`` on seeded inputs
(batch 2, open dimensions filled from the case or with 64) -- then

* ``bnrewrite.convert(file, out.onnx)``: onnxruntime output vs the reference;
* ``bnrewrite.convert(file, out.keras)``: Keras 3 reload of the output vs the reference;
* baseline: ``tf2onnx.convert.from_keras(reference_model, opset=17)`` on the same model;

max abs error (pass: |out - ref| <= 1e-4 + 1e-4 |ref| everywhere), ONNX node counts after
onnxruntime's ORT_ENABLE_ALL optimisation, median onnxruntime latency at batch 1
(interleaved runs, one thread) and the ratios bnrewrite / tf2onnx.

Writes ``results.json`` into ``--out`` (default ``tests/realmodels/.cache/out``), prints a
table. Exit status 1 if any case is a *silent mismatch*: the framework loads the file,
bnrewrite returned without error, and its output differs from the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from . import CACHE, Case, common, ensure_built, select  # noqa: E402
from . import call as kcall  # noqa: E402
from . import inputs_for, load  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MARK = "@@REALMODEL@@ "
ORT_RUNS = 20
ORT_WARMUP = 3


# --------------------------------------------------------------------------- small helpers


def err_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    first = next((m for m in msg if m.strip()), "")
    return f"{type(e).__name__}: {first}"[:400]


def onnx_feed(sess, specs, xs) -> dict:
    """Map Keras inputs (model order) to ONNX inputs: by name when the names agree, else by order."""
    import numpy as np

    onx = sess.get_inputs()
    knames = [s[0] for s in specs]
    by_name = {n.split(":")[0]: i for i, n in enumerate(knames)}
    feed = {}
    for j, inp in enumerate(onx):
        key = inp.name.split(":")[0]
        i = by_name.get(key, j if j < len(xs) else None)
        if i is None:
            raise RuntimeError(f"cannot map ONNX input {inp.name!r}")
        x = xs[i]
        want = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
                "tensor(double)": np.float64}.get(inp.type, x.dtype)
        feed[inp.name] = x.astype(want)
    return feed


def session(path, threads: int = 1):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def optimized_nodes(path) -> dict:
    """Node count of the raw file and after onnxruntime ORT_ENABLE_ALL (what actually runs)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    raw = onnx.load(str(path), load_external_data=False)
    out = {"nodes": len(raw.graph.node)}
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        try:
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            out["nodes_opt"] = len(onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node)
        except Exception as e:  # noqa: BLE001
            out["nodes_opt"] = None
            out["nodes_opt_error"] = err_line(e)
    return out


def match_outputs(got: list, want: list) -> list:
    """Put ONNX outputs in Keras order when the order differs (matched by shape, then by order)."""
    if len(got) != len(want) or all(g.shape == w.shape for g, w in zip(got, want)):
        return got
    free = list(range(len(got)))
    out = []
    for w in want:
        hit = next((i for i in free if got[i].shape == w.shape), None)
        if hit is None:
            return got
        free.remove(hit)
        out.append(got[hit])
    return out


def latency(sessions: dict, feeds: dict, runs: int = ORT_RUNS, warmup: int = ORT_WARMUP) -> dict:
    """Median ms per session at the given feeds, runs interleaved (A B, B A, ...)."""
    import statistics

    keys = list(sessions)
    for k in keys:
        for _ in range(warmup):
            sessions[k].run(None, feeds[k])
    times = {k: [] for k in keys}
    for i in range(runs):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for k in order:
            t = time.perf_counter()
            sessions[k].run(None, feeds[k])
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def signature(model, specs):
    import tensorflow as tf

    return tuple(tf.TensorSpec([None, *shape[1:]], tf.as_dtype(dt), name=name) for name, shape, dt in specs)


# --------------------------------------------------------------------------- one case


def run_case(case: Case, formats: list[str], out_dir: Path, baseline: bool = True, runs: int = ORT_RUNS) -> dict:
    import numpy as np

    common.quiet()
    res: dict = {"name": case.name, "arch": case.arch, "framework": case.framework, "dialect": case.dialect,
                 "suffix": case.suffix, "tags": sorted(case.tags), "provenance": case.provenance}
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    try:
        path = ensure_built(case, CACHE)
    except Exception as e:  # noqa: BLE001
        res["build_error"] = err_line(e)
        res["build_traceback"] = traceback.format_exc()[-3000:]
        return res
    res["build_s"] = time.perf_counter() - t
    res["file"] = str(path)

    # ---- reference: the writing framework's own load_model + call(training=False)
    try:
        t = time.perf_counter()
        ref_model = load(case, CACHE / case.ref_filename)
        specs = common.input_specs(ref_model)
        xs = inputs_for(case, ref_model)
        seen: dict = {}
        ref = kcall(ref_model, xs, seen)
        ref_graph = seen["graph"]
        res["ref"] = {"ok": True, "load_call_s": time.perf_counter() - t,
                      "inputs": [list(x.shape) for x in xs], "outputs": [list(y.shape) for y in ref],
                      "eager_graph_max_abs": seen["eager_graph_max_abs"]}
    except Exception as e:  # noqa: BLE001
        res["ref"] = {"ok": False, "error": err_line(e)}
        ref_model = ref = ref_graph = xs = specs = None

    import bnrewrite

    kwargs = dict(case.convert_kwargs)
    co = case.custom_objects()
    if co:
        kwargs["custom_objects"] = co
    res["bnrewrite"] = {}
    sessions, feeds = {}, {}
    for fmt in formats:
        suffix = {"onnx": ".onnx", "keras": ".keras", "h5": ".h5"}[fmt]
        dst = out_dir / f"{case.name}.bnrewrite{suffix}"
        r: dict = {}
        t = time.perf_counter()
        try:
            rep = bnrewrite.convert(path, dst, force=True, **kwargs)
            r["convert_s"] = time.perf_counter() - t
            r["status"] = "ok"
            try:
                r["verification"] = {k: rep.verification.get(k) for k in ("max_abs", "max_rel", "ok")}
                r["passes"] = {p["name"]: {"changed": len(p["changed"]), "skipped": len(p["skipped"])}
                               for p in rep.passes}
            except Exception:  # noqa: BLE001 - the report's shape is the lead's to change
                pass
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            r["convert_s"] = time.perf_counter() - t
            r["error"] = err_line(e)
            expect = ((case.fixture or {}).get("expect") or {}).get(fmt, "ok")
            # a real file bnrewrite must refuse for this format (manifest "expect"), refused for that reason
            r["status"] = "refused_as_expected" if expect != "ok" and expect in r["error"] else "error"
            res["bnrewrite"][fmt] = r
            continue
        if ref is not None:
            try:
                if fmt == "onnx":
                    sess = session(dst)
                    feed = onnx_feed(sess, specs, xs)
                    got = match_outputs([np.asarray(o) for o in sess.run(None, feed)], ref)
                    sessions["bnrewrite"] = sess
                    feeds["bnrewrite"] = onnx_feed(sess, specs, [x[:1] for x in xs])
                    r.update(optimized_nodes(dst))
                    got_graph = None
                else:
                    seen_got: dict = {}
                    got = kcall(reload_output(case, dst, fmt), xs, seen_got)
                    got_graph = seen_got["graph"]
                worst, ok, note = common.parity(got, ref, got_graph, ref_graph)
                r["max_abs"], r["parity"] = worst, ok
                if note:
                    r["note"] = note
                if not ok:
                    r["status"] = "SILENT MISMATCH"
            except Exception as e:  # noqa: BLE001
                r["status"] = "output_error"
                r["error"] = err_line(e)
        res["bnrewrite"][fmt] = r

    # ---- baseline: plain tf2onnx on the model the framework loaded (the original file)
    if baseline:
        b: dict = {}
        t = time.perf_counter()
        try:
            import onnx
            import tf2onnx

            common.quiet()
            base_model = ref_model if not case.ref_twin else load(case, path)
            if base_model is None:
                raise RuntimeError("the framework cannot load the file")
            specs_b = common.input_specs(base_model)
            proto, _ = tf2onnx.convert.from_keras(base_model, input_signature=signature(base_model, specs_b),
                                                   opset=17)
            dst = out_dir / f"{case.name}.tf2onnx.onnx"
            onnx.save(proto, str(dst))
            b["convert_s"] = time.perf_counter() - t
            b["status"] = "ok"
            sess = session(dst)
            got = match_outputs([np.asarray(o) for o in sess.run(None, onnx_feed(sess, specs_b, xs))], ref)
            b["max_abs"], b["parity"], _ = common.parity(got, ref, None, ref_graph)
            b.update(optimized_nodes(dst))
            sessions["tf2onnx"] = sess
            feeds["tf2onnx"] = onnx_feed(sess, specs_b, [x[:1] for x in xs])
        except Exception as e:  # noqa: BLE001
            b["status"] = "error"
            b["error"] = err_line(e)
            b.setdefault("convert_s", time.perf_counter() - t)
        res["tf2onnx"] = b

    if ref is not None:
        try:
            res["ref"]["bn_sensitivity"] = bn_sensitivity(case, ref_model, xs, ref)
            if case.ref_twin and not case.dialect.endswith("-cudnn"):  # a CuDNN file does not load on CPU
                orig = kcall(load(case, path), xs)
                res["ref"]["original_file_vs_reference"] = common.max_err(orig, ref)[0]
        except Exception as e:  # noqa: BLE001
            res["ref"]["bn_sensitivity_error"] = err_line(e)
    if len(sessions) == 2 and runs > 0:
        try:
            lat = latency(sessions, feeds, runs)
            res["latency_ms"] = lat
            res["latency_ratio"] = lat["bnrewrite"] / lat["tf2onnx"]
        except Exception as e:  # noqa: BLE001
            res["latency_error"] = err_line(e)
    bo, to = res["bnrewrite"].get("onnx", {}), res.get("tf2onnx", {})
    if bo.get("nodes_opt") and to.get("nodes_opt"):
        res["nodes_ratio"] = bo["nodes_opt"] / to["nodes_opt"]
    return res


def reload_output(case: Case, dst: Path, fmt: str):
    """Load bnrewrite's Keras output: .keras with Keras 3; .h5 with the framework that wrote the input
    (bnrewrite rebuilds tf_keras files with tf_keras)."""
    from . import archs

    if fmt == "keras" or case.framework == "keras":
        import keras

        co = archs.custom_objects(keras) if case.custom else None
        return keras.saving.load_model(str(dst), compile=False, custom_objects=co, safe_mode=False)
    import tf_keras

    co = archs.custom_objects(tf_keras) if case.custom else None
    return tf_keras.models.load_model(str(dst), compile=False, custom_objects=co)


def bn_sensitivity(case: Case, model, xs, ref) -> dict:
    """How much the reference moves when every BN's moving statistics are reset to 0/1 (what a
    dropped, stale or re-initialised BN gives): a case only guards BN handling if this is far above
    the 1e-4 tolerance. Mutates ``model`` (call last)."""
    import numpy as np

    K = common.framework(case.framework)
    n = 0
    for layer in common._iter_layers(model):
        if common._is_bn(K, layer):
            vals = []
            for w, v in zip(layer.weights, layer.get_weights()):
                key = common._key(w)
                vals.append(np.zeros_like(v) if key == "moving_mean" else np.ones_like(v)
                            if key == "moving_variance" else v)
            layer.set_weights(vals)
            n += 1
    got = kcall(model, xs)
    worst, ok, _ = common.max_err(got, ref)
    scale = max(float(np.abs(r).max()) for r in ref) if ref else 0.0
    return {"bns": n, "max_abs_change": worst, "detectable": not ok, "ref_max_abs": scale}


def is_silent(res: dict) -> bool:
    return any(r.get("status") == "SILENT MISMATCH" for r in res.get("bnrewrite", {}).values())


# --------------------------------------------------------------------------- table


def _fmt(r: dict | None) -> str:
    if not r:
        return "-"
    st = r.get("status")
    if st == "ok":
        if "max_abs" not in r:
            return "ok"
        return ("ok " if r.get("parity", True) else "WRONG ") + f"{r['max_abs']:.1e}"
    if st == "SILENT MISMATCH":
        return f"MISMATCH {r.get('max_abs', float('nan')):.1e}"
    return st or "?"


def table(results: list[dict]) -> str:
    fmts = [f for f in ("onnx", "keras", "h5") if any(f in r.get("bnrewrite", {}) for r in results)] or ["onnx"]
    rows = [("case", "written by", *[f"bnrewrite {f}" for f in fmts], "tf2onnx", "nodes b/t", "lat b/t",
             "BN sens.")]
    for r in results:
        b = r.get("bnrewrite", {})
        t = r.get("tf2onnx", {})
        nodes = (f"{b.get('onnx', {}).get('nodes_opt')}/{t.get('nodes_opt')}"
                 if b.get("onnx", {}).get("nodes_opt") is not None and t.get("nodes_opt") is not None else "-")
        lat = f"{r['latency_ratio']:.2f}" if "latency_ratio" in r else "-"
        sens = r.get("ref", {}).get("bn_sensitivity", {})
        sens = f"{sens['max_abs_change']:.1e}" if "max_abs_change" in sens else "-"
        who = f"{r['framework']} {r['dialect']}"
        if "build_error" in r or "harness_error" in r:
            rows.append((r["name"], who, "BUILD ERROR" if "build_error" in r else "HARNESS ERROR",
                         *[""] * (len(fmts) + 3)))
            continue
        if not r.get("ref", {}).get("ok"):
            who += " (no ref)"
        rows.append((r["name"], who, *[_fmt(b.get(f)) for f in fmts], _fmt(t), nodes, lat, sens))
    w = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w[i]) for i, c in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    errs = []
    for r in results:
        if "harness_error" in r:
            errs.append(f"{r['name']} [harness]: {r['harness_error']}")
        if "build_error" in r:
            errs.append(f"{r['name']} [build]: {r['build_error']}")
        if r.get("ref") and not r["ref"].get("ok"):
            errs.append(f"{r['name']} [reference]: {r['ref'].get('error')}")
        for fmt, x in r.get("bnrewrite", {}).items():
            if x.get("error"):
                errs.append(f"{r['name']} [bnrewrite {fmt}]: {x['error']}")
            elif x.get("status") == "SILENT MISMATCH":
                errs.append(f"{r['name']} [bnrewrite {fmt}]: SILENT MISMATCH max_abs={x.get('max_abs')}")
        if r.get("tf2onnx", {}).get("error"):
            errs.append(f"{r['name']} [tf2onnx]: {r['tf2onnx']['error']}")
    return "\n".join(lines + ([""] + errs if errs else []))


def summary(results: list[dict]) -> str:
    n = len(results)
    fmts = ("onnx", "keras", "h5")
    ok = {f: sum(1 for r in results if r.get("bnrewrite", {}).get(f, {}).get("status") == "ok") for f in fmts}
    tried = {f: sum(1 for r in results if f in r.get("bnrewrite", {})) for f in fmts}
    t2o = sum(1 for r in results if r.get("tf2onnx", {}).get("status") == "ok" and r["tf2onnx"].get("parity"))
    silent = [r["name"] for r in results if is_silent(r)]
    parts = [f"{n} cases"]
    refused = {f: sum(1 for r in results if r.get("bnrewrite", {}).get(f, {}).get("status") == "refused_as_expected")
               for f in fmts}
    for f in fmts:
        if tried[f]:
            parts.append(f"bnrewrite {f}: {ok[f]}/{tried[f]} pass"
                         + (f" (+{refused[f]} refused as the manifest expects)" if refused[f] else ""))
    parts.append(f"tf2onnx alone: {t2o}/{n} match the reference")
    weak = [r["name"] for r in results if r.get("ref", {}).get("bn_sensitivity", {}).get("detectable") is False]
    if weak:
        parts.append(f"BN-insensitive references: {', '.join(weak)}")
    parts.append(f"silent mismatches: {len(silent)}" + (f" ({', '.join(silent)})" if silent else ""))
    return "; ".join(parts)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.realmodels.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated case names, arch names or tag:<tag>")
    ap.add_argument("--formats", default="onnx,keras",
                    help="bnrewrite outputs to produce: onnx, keras (.keras, reloaded by Keras 3), "
                         "h5 (.h5, reloaded by the framework that wrote the input)")
    ap.add_argument("--out", default=str(CACHE / "out"), help="folder for outputs and results.json")
    ap.add_argument("--no-baseline", action="store_true", help="skip plain tf2onnx")
    ap.add_argument("--runs", type=int, default=ORT_RUNS, help="latency runs per session (0: none)")
    ap.add_argument("--isolate", action="store_true", help="run each case in a fresh process")
    ap.add_argument("--timeout", type=float, default=900.0, help="per-case timeout with --isolate (s)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--build-only", action="store_true", help="only build (cache) the files")
    ap.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)  # worker mode: one JSON line
    a = ap.parse_args(argv)
    cases = select(a.only)
    if a.list:
        for c in cases:
            print(c.describe())
        return 0
    if a.build_only:
        for c in cases:
            t = time.perf_counter()
            ensure_built(c, CACHE)
            print(f"built {c.name} ({time.perf_counter() - t:.1f} s)", flush=True)
        return 0
    formats = [f for f in a.formats.split(",") if f]
    out = Path(a.out)
    results = []
    t0 = time.perf_counter()
    for c in cases:
        t = time.perf_counter()
        if a.isolate:
            r = run_isolated(c, a)
        else:
            try:
                r = run_case(c, formats, out, baseline=not a.no_baseline, runs=a.runs)
            except Exception as e:  # noqa: BLE001
                r = {"name": c.name, "arch": c.arch, "framework": c.framework, "dialect": c.dialect,
                     "harness_error": err_line(e), "traceback": traceback.format_exc()[-3000:]}
        r["wall_s"] = time.perf_counter() - t
        results.append(r)
        if a.emit:
            print(MARK + json.dumps(r, default=_default), flush=True)
        else:
            b = r.get("bnrewrite", {})
            line = " ".join(f"{f}={_fmt(b.get(f))}" for f in formats)
            print(f"[{len(results)}/{len(cases)}] {c.name}: {line} tf2onnx={_fmt(r.get('tf2onnx'))} "
                  f"({r['wall_s']:.1f} s)", file=sys.stderr, flush=True)
    if a.emit:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    doc = {"cases": results, "summary": summary(results), "wall_s": time.perf_counter() - t0,
           "formats": formats, "argv": sys.argv[1:]}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=_default))
    print(table(results))
    print()
    print(summary(results))
    print(f"results: {out / 'results.json'}")
    return 1 if any(is_silent(r) for r in results) else 0


def run_isolated(case: Case, a) -> dict:
    cmd = [sys.executable, "-m", "tests.realmodels.run", "--only", case.name, "--formats", a.formats,
           "--out", a.out, "--runs", str(a.runs), "--emit"] + (["--no-baseline"] if a.no_baseline else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    try:
        p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"name": case.name, "arch": case.arch, "framework": case.framework, "dialect": case.dialect,
                "harness_error": f"timed out after {a.timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"name": case.name, "arch": case.arch, "framework": case.framework, "dialect": case.dialect,
            "harness_error": f"worker exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"}


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, set):
        return sorted(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
