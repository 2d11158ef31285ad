"""One measurement per process (started by bench/run.py).

    python bench/worker.py bnrewrite        SRC DST.onnx   # bnrewrite.convert(SRC, DST), verification on
    python bench/worker.py tf2onnx-keras3   SRC DST.onnx   # keras.saving.load_model + tf2onnx.convert.from_keras
    python bench/worker.py tf2onnx-tfkeras  SRC DST.onnx   # tf_keras.models.load_model + tf2onnx.convert.from_keras
    python bench/worker.py ort REF.npz KEY=FILE.onnx ...    # errors and onnxruntime latency, interleaved

Conversion workers time two spans from the start of the process:
``import_s`` (TensorFlow, Keras, tf2onnx, onnx -- and bnrewrite, onnxruntime
for bnrewrite, which needs them) and ``call_s`` (everything from reading the
file to the ONNX file on disk: for bnrewrite the ``convert`` call with its
verification, for tf2onnx ``load_model`` + ``from_keras`` + ``onnx.save``).
The parent also measures the whole process wall time.

Both sides export with opset 17 and the same input signature: one
``tf.TensorSpec`` per model input, named after the Keras input, batch axis
``None`` (what ``bnrewrite/io/onnx_writer.py`` passes).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

from common import emit  # noqa: E402


def onnx_facts(path) -> dict:
    import onnx

    m = onnx.load(str(path))
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"nodes": len(m.graph.node), "bytes": Path(path).stat().st_size, "ops": dict(sorted(ops.items()))}


def convert_bnrewrite(src: str, dst: str) -> dict:
    import logging

    import keras  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import tensorflow  # noqa: F401
    import tf2onnx  # noqa: F401

    import bnrewrite

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    t1 = time.perf_counter()
    rep = bnrewrite.convert(src, dst, force=True)
    t2 = time.perf_counter()
    return {
        "import_s": t1 - T_START, "call_s": t2 - t1, "timings": rep.timings,
        "verification": {k: rep.verification.get(k) for k in ("max_abs", "max_rel", "batch_independent", "ok")},
        "passes": {p["name"]: {"changed": len(p["changed"]), "skipped": len(p["skipped"])} for p in rep.passes},
        **onnx_facts(dst),
    }


def signature(model):
    import tensorflow as tf

    return tuple(
        tf.TensorSpec([None, *list(t.shape)[1:]], tf.as_dtype(t.dtype), name=t.name.split(":")[0])
        for t in model.inputs
    )


def convert_tf2onnx(src: str, dst: str, framework: str) -> dict:
    import logging

    import onnx
    import tensorflow  # noqa: F401
    import tf2onnx

    if framework == "keras3":
        import keras

        load = lambda p: keras.saving.load_model(p, compile=False)  # noqa: E731
    else:
        import tf_keras

        load = lambda p: tf_keras.models.load_model(p, compile=False)  # noqa: E731
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    t1 = time.perf_counter()
    model = load(src)
    t2 = time.perf_counter()
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature(model), opset=17)
    t3 = time.perf_counter()
    onnx.save(proto, dst)
    t4 = time.perf_counter()
    return {"import_s": t1 - T_START, "call_s": t4 - t1,
            "timings": {"load_s": t2 - t1, "convert_s": t3 - t2, "save_s": t4 - t3}, **onnx_facts(dst)}


def measure_ort(ref_path: str, files: dict[str, str], threads: int, runs_b1: int, runs_bl: int,
                batch_large: int, warmup: int) -> dict:
    """Max error against the reference and latency medians, the sessions' runs interleaved."""
    import numpy as np
    import onnxruntime as ort

    ref = np.load(ref_path)
    x, want = ref["x"], ref["ref"].astype(np.float64)
    orig = ref["orig"].astype(np.float64) if "orig" in ref.files else None
    sessions, out = {}, {}
    for key, path in files.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        t = time.perf_counter()
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        session_s = time.perf_counter() - t
        opt = _optimized_node_count(path, ort)
        name = sess.get_inputs()[0].name
        sessions[key] = (sess, name)
        got = sess.run(None, {name: x})[0].astype(np.float64)
        alone = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)
        r = {
            "session_s": session_s, "ort_optimized_nodes": opt,
            "max_abs": float(np.abs(got - want).max()),
            "max_rel": float((np.abs(got - want) / np.maximum(np.abs(want), 1e-4)).max()),
            "ref_max": float(np.abs(want).max()),
            "batch_dependence": float(np.abs(got - alone).max()),
        }
        if orig is not None:
            r["max_abs_vs_original_predict"] = float(np.abs(got - orig).max())
        out[key] = r
    rng = np.random.default_rng(7)
    keys = list(files)
    for batch, runs, tag in ((1, runs_b1, "b1"), (batch_large, runs_bl, "bL")):
        feed = rng.standard_normal((batch, *x.shape[1:])).astype(np.float32)
        for key in keys:
            sess, name = sessions[key]
            for _ in range(warmup):
                sess.run(None, {name: feed})
        times = {k: [] for k in keys}
        for i in range(runs):
            for key in keys[i % len(keys):] + keys[:i % len(keys)]:  # rotate: A B, B A, ...
                sess, name = sessions[key]
                t = time.perf_counter()
                sess.run(None, {name: feed})
                times[key].append(time.perf_counter() - t)
        for key in keys:
            ts = np.asarray(times[key])
            out[key][f"lat_{tag}_ms"] = float(np.median(ts) * 1e3)
            out[key][f"lat_{tag}_p10_ms"] = float(np.percentile(ts, 10) * 1e3)
            out[key][f"lat_{tag}_p90_ms"] = float(np.percentile(ts, 90) * 1e3)
            out[key][f"lat_{tag}_runs"] = len(ts)
            out[key][f"lat_{tag}_all_ms"] = [round(v * 1e3, 4) for v in ts]  # in run order, for paired ratios
    return {"threads": threads, "batch_large": batch_large, "results": out}


def _optimized_node_count(path: str, ort) -> int | None:
    """Nodes left after onnxruntime's graph optimizations (what actually runs), from a throwaway session."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        try:
            ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            return len(onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node)
        except Exception:
            return None


def main() -> None:
    mode, *rest = sys.argv[1:]
    if mode == "bnrewrite":
        emit(convert_bnrewrite(*rest))
    elif mode == "tf2onnx-keras3":
        emit(convert_tf2onnx(*rest, framework="keras3"))
    elif mode == "tf2onnx-tfkeras":
        emit(convert_tf2onnx(*rest, framework="tf_keras"))
    elif mode == "ort":
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("ref")
        ap.add_argument("files", nargs="+", help="KEY=PATH")
        ap.add_argument("--threads", type=int, default=1)
        ap.add_argument("--runs-b1", type=int, default=50)
        ap.add_argument("--runs-bl", type=int, default=20)
        ap.add_argument("--batch-large", type=int, default=32)
        ap.add_argument("--warmup", type=int, default=3)
        a = ap.parse_args(rest)
        files = dict(f.split("=", 1) for f in a.files)
        emit(measure_ort(a.ref, files, a.threads, a.runs_b1, a.runs_bl, a.batch_large, a.warmup))
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
