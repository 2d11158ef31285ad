"""AdaBN benchmark: calibration time vs one ``model.predict`` pass, and peak memory as the data grows.

    python3 bench/adabn.py [--quick] [--size 128] [--samples 512]

(``bench/run.py`` calls :func:`run` and puts the result in docs/benchmarks.md.)

* Model: ``keras.applications.ResNet50(weights=None)`` at ``size`` x ``size`` with
  seeded random BN statistics, saved as ``.keras``; data: a seeded float32
  ``.npy`` of ``samples`` images.
* Time: in one fresh process each, (a) ``keras.saving.load_model`` then one
  ``model.predict(data, batch_size=32)`` -- cold, as a user runs it once, so its
  own graph tracing is included -- and (b) ``bnrewrite.load`` then
  ``bnrewrite.calibration.calibrate(graph, "data.npy", batch_size=32)``, which
  includes rebuilding the Keras model, planning, tracing one function per BN
  level and streaming the file. File parsing is outside both timers. The pair
  runs ``repeats`` times, alternating, and the ratio of medians is reported.
* Memory: peak RSS (``ru_maxrss``) of a calibration process over files of N, 2N
  and 4N samples, with the default 1024 MB activation cache (beyond it, cached
  activations spill to a temporary folder), plus the process's RSS just before
  calibrating.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
MARK = "@@ADABN@@ "
GOAL_RATIO = 1.5


def _model_path(size: int) -> Path:
    return CACHE / f"adabn_resnet50_{size}.keras"


def _data_path(size: int, n: int) -> Path:
    return CACHE / f"adabn_data_{size}_{n}.npy"


# ------------------------------------------------------------------ workers (fresh processes)
def _worker(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import resource

    import numpy as np

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    if args.worker == "build":
        import keras

        rng = np.random.default_rng(0)
        m = keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3))
        for layer in m.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                g, b, mu, v = layer.get_weights()
                layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.5, b.shape),
                                   rng.normal(0, 0.5, mu.shape), rng.uniform(0.5, 2.0, v.shape)])
        m.save(args.model)
        return {"ok": True}
    if args.worker == "data":
        n, rng = args.samples, np.random.default_rng(1)
        out = np.lib.format.open_memmap(args.data, mode="w+", dtype=np.float32, shape=(n, args.size, args.size, 3))
        for i in range(0, n, 256):  # written in chunks: the file may be larger than we want in RAM
            k = min(256, n - i)
            out[i:i + k] = rng.normal(0.5, 2.0, (k, args.size, args.size, 3)).astype(np.float32)
        out.flush()
        return {"ok": True}
    if args.worker == "predict":
        import keras

        model = keras.saving.load_model(args.model, compile=False)
        x = np.load(args.data)
        t = time.perf_counter()
        model.predict(x, batch_size=32, verbose=0)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        model.predict(x, batch_size=32, verbose=0)
        return {"seconds": cold, "warm_seconds": time.perf_counter() - t}
    if args.worker == "calibrate":
        import bnrewrite
        from bnrewrite.calibration import calibrate
        from bnrewrite.passes import InferenceMode, PassContext, PassManager

        mg = bnrewrite.load(args.model)
        PassManager([InferenceMode()]).run(mg, PassContext())
        before = rss_mb()
        t = time.perf_counter()
        rep = calibrate(mg, args.data, batch_size=32)
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "rss_before_mb": before,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "samples": rep["samples"], "levels": rep["levels"], "layers": len(rep["layers"]),
                "cache_peak_mb": rep["cache"]["peak_ram_bytes"] / 2**20,
                "spilled_mb": rep["cache"]["spilled_bytes"] / 2**20}
    raise SystemExit(f"unknown worker {args.worker}")


def _spawn(*argv) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(BENCH.parent))
    proc = subprocess.run([sys.executable, str(Path(__file__)), *map(str, argv)], capture_output=True, text=True,
                          env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"worker {argv[:2]} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")


# ------------------------------------------------------------------ the benchmark
def run(quick: bool = False, size: int | None = None, samples: int | None = None, repeats: int | None = None,
        say=lambda msg: print(msg, file=sys.stderr, flush=True)) -> dict:
    """Run the AdaBN benchmark; returns ``{"rows", "notes", ...}`` for docs/benchmarks.md."""
    size = size or (64 if quick else 128)
    samples = samples or (128 if quick else 512)
    repeats = repeats or (1 if quick else 3)
    CACHE.mkdir(parents=True, exist_ok=True)
    model = _model_path(size)
    if not model.exists():
        say(f"adabn: building ResNet50 {size}x{size}")
        _spawn("--worker", "build", "--size", size, "--model", model)
    sizes = [samples, 2 * samples, 4 * samples]
    for n in sizes:
        if not _data_path(size, n).exists():
            say(f"adabn: writing {n} calibration samples")
            _spawn("--worker", "data", "--size", size, "--samples", n, "--data", _data_path(size, n))

    data = _data_path(size, samples)
    pred, cal = [], []
    for i in range(repeats):  # alternate, so drift on a shared machine hits both
        say(f"adabn: timing round {i + 1}/{repeats}")
        pred.append(_spawn("--worker", "predict", "--model", model, "--data", data))
        cal.append(_spawn("--worker", "calibrate", "--model", model, "--data", data))
    t_pred = statistics.median(r["seconds"] for r in pred)
    t_warm = statistics.median(r["warm_seconds"] for r in pred)
    t_cal = statistics.median(r["seconds"] for r in cal)

    rows = [{
        "measure": f"time, {samples} samples, batch 32",
        "model.predict (cold)": f"{t_pred:.1f} s",
        "calibrate": f"{t_cal:.1f} s",
        "ratio": f"{t_cal / t_pred:.2f}x",
        "goal": f"<= {GOAL_RATIO}x: {'PASS' if t_cal / t_pred <= GOAL_RATIO else 'MISS'}",
    }]
    mem = {samples: cal[len(cal) // 2]}
    for n in sizes[1:]:
        say(f"adabn: peak memory with {n} samples")
        mem[n] = _spawn("--worker", "calibrate", "--model", model, "--data", _data_path(size, n))
    for n in sizes:
        r = mem[n]
        rows.append({
            "measure": f"memory, {n} samples ({_data_path(size, n).stat().st_size / 2**20:.0f} MB file)",
            "model.predict (cold)": "",
            "calibrate": f"peak RSS {r['peak_rss_mb']:.0f} MB (before calibrating {r['rss_before_mb']:.0f} MB)",
            "ratio": f"{r['peak_rss_mb'] / mem[samples]['peak_rss_mb']:.2f}x of {samples}",
            "goal": f"cache {r['cache_peak_mb']:.0f} MB in RAM, {r['spilled_mb']:.0f} MB spilled",
        })
    growth = mem[sizes[-1]]["peak_rss_mb"] / mem[samples]["peak_rss_mb"]
    notes = [
        f"ResNet50 (weights=None, random BN statistics) at {size}x{size}x3, {cal[0]['layers']} BN layers in "
        f"{cal[0]['levels']} levels; calibration data is a float32 .npy read in batches of 32.",
        f"Calibration / predict time ratio: {t_cal / t_pred:.2f}x (median of {repeats}; predict warm, without "
        f"its tracing: {t_warm:.1f} s, ratio {t_cal / t_warm:.2f}x). Goal <= {GOAL_RATIO}x.",
        f"Peak RSS grows {growth:.2f}x while the file grows 4x: cached activations are capped at 1024 MB "
        "(--cache-mb) and spill to a temporary folder beyond it; the file is read one batch window at a time.",
    ]
    return {"rows": rows, "notes": notes, "ratio": round(t_cal / t_pred, 3), "memory_growth": round(growth, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--quick", action="store_true", help="64x64, 128 samples, one round")
    args = ap.parse_args()
    if args.worker:
        print(MARK + json.dumps(_worker(args)), flush=True)
        return
    res = run(args.quick, args.size, args.samples, args.repeats)
    for r in res["rows"]:
        print(" | ".join(f"{v}" for v in r.values()))
    for n in res["notes"]:
        print("*", n)


if __name__ == "__main__":
    main()
