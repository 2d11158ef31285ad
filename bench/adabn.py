"""AdaBN benchmark: calibration time vs one ``model.predict`` pass, memory as the data grows, Ray shards.

    python3 bench/adabn.py [--quick] [--size 128] [--samples 512] [--repeats 3]
    python3 bench/adabn.py --fullbatch [--size 128] [--samples 512] [--repeats 3]

(``bench/run.py`` calls :func:`run` and puts the result in docs/benchmarks.md.)

* Model: ``keras.applications.ResNet50(weights=None)`` at ``size`` x ``size`` with
  seeded random BN statistics, saved as ``.keras``; data: seeded float32 ``.npy``
  files of N = ``samples`` and 4N images.
* Time, at N and at 4N samples: in one fresh process each, (a)
  ``keras.saving.load_model`` then ``model.predict(data, batch_size=32)`` twice --
  cold (its own tracing included, as a user runs it once) and warm (the second
  pass: one forward pass and nothing else) -- and (b) ``bnrewrite.load`` then
  ``bnrewrite.calibration.calibrate(graph, "data.npy")`` with its defaults (the
  batch size chosen from the model's activation sizes, the automatic cache), which includes rebuilding the Keras model, planning,
  tracing one function per BN level and streaming the file. File parsing is
  outside both timers. The processes alternate, ``repeats`` rounds; ratios of
  medians are reported. Goals: <= 1.5x warm predict at N, <= 1.3x at 4N.
* First touch: each calibration process then runs the same calibration a second
  time (rebuild and tracing included, memory already touched by the first run),
  the counterpart of the warm predict; the difference between the two runs, and
  the bytes each faulted in, show what this machine charges for never-touched
  memory, which a warm predict does not pay.
* Memory: peak RSS of calibration with a fixed ``--cache-mb 1024`` over N, 2N
  and 4N samples (beyond the budget, activations spill to a temporary folder,
  capped by ``--max-spill-gb``'s default), with the spill and the live cache.
* Ray: the same calibration at N with ``engine="ray", shards=2`` on a local Ray
  instance (started and stopped inside the timer), wall time vs one process and
  peak RSS per shard; its statistics are checked bit-equal to one process's.
* ``--fullbatch`` (a reference point, bench/NOTES.md "Session 9", not in the tables): at N samples,
  alternating fresh processes, the warm/cold predict and the calibration above beside Keras
  computing the same statistics in one call -- ``tf.function(lambda x: model(x, training=True))``
  on every sample as one batch (each BN normalizes with the mean and biased variance of all the
  data given the BNs before it: AdaBN up to ddof), first call (tracing included) and again.
"""

from __future__ import annotations

import argparse
import hashlib
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
GOAL_SMALL, GOAL_BIG = 1.5, 1.3  # calibration / warm predict at N and at 4N samples
FIXED_CACHE_MB = 1024


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

    def faulted_bytes() -> int:  # memory this process has touched for the first time (minor faults)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt * resource.getpagesize()

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
        t, f = time.perf_counter(), faulted_bytes()
        model.predict(x, batch_size=32, verbose=0)
        return {"seconds": cold, "warm_seconds": time.perf_counter() - t, "warm_faulted_mb": (faulted_bytes() - f) / 2**20}
    if args.worker == "fullbatch":
        import keras
        import tensorflow as tf

        model = keras.saving.load_model(args.model, compile=False)
        x = np.load(args.data)
        fn = tf.function(lambda v: model(v, training=True))
        t, f = time.perf_counter(), faulted_bytes()
        fn(tf.constant(x)).numpy()
        first, faulted = time.perf_counter() - t, faulted_bytes() - f
        t = time.perf_counter()
        fn(tf.constant(x)).numpy()
        return {"seconds": first, "again_seconds": time.perf_counter() - t, "faulted_mb": faulted / 2**20}
    if args.worker == "calibrate":
        import bnrewrite
        from bnrewrite.calibration import calibrate
        from bnrewrite.passes import InferenceMode, PassContext, PassManager

        def once():
            mg = bnrewrite.load(args.model)
            PassManager([InferenceMode()]).run(mg, PassContext())
            f, t = faulted_bytes(), time.perf_counter()
            rep = calibrate(mg, args.data, batch_size=args.batch_size, cache_mb=args.cache_mb, engine=args.engine,
                            shards=args.shards)
            return mg, rep, time.perf_counter() - t, (faulted_bytes() - f) / 2**20

        def digest(mg, rep) -> str:
            h = hashlib.sha256()
            for r in rep["layers"]:
                for k in ("moving_mean", "moving_variance"):
                    h.update(np.ascontiguousarray(mg.layer(r["layer"]).weights[k]).tobytes())
            return h.hexdigest()

        before = rss_mb()
        mg, rep, seconds, faulted = once()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        again = {}
        if args.again:  # the same again, in this process: its memory is already touched (TF keeps it)
            mg2, rep2, again_s, again_mb = once()
            again = {"again_seconds": again_s, "again_faulted_mb": again_mb,
                     "again_same": digest(mg2, rep2) == digest(mg, rep)}
        c = rep["cache"]
        return {"seconds": seconds, "rss_before_mb": before, "faulted_mb": faulted, "peak_rss_mb": peak_rss,
                "samples": rep["samples"], "levels": rep["levels"], "layers": len(rep["layers"]),
                "functions": rep.get("functions"),
                "batch_size": rep["batch_size"],
                "live_mb": c["peak_live_bytes"] / 2**20, "cache_peak_mb": c["peak_ram_bytes"] / 2**20,
                "spilled_mb": c["spilled_bytes"] / 2**20, "peak_disk_mb": c["peak_disk_bytes"] / 2**20,
                "max_spill_mb": c["max_spill_bytes"] / 2**20,
                "budget_mb": [s["cache_budget_mb"] for s in rep["shards"]],
                "shards": [{"samples": s["samples"], "peak_rss_mb": s["peak_rss_mb"], "seconds": s["seconds"]}
                           for s in rep["shards"]],
                "stats_sha256": digest(mg, rep), **again}
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
def _calibrate(model, data, cache_mb=None, engine="local", shards=1, again=False) -> dict:
    extra = [] if cache_mb is None else ["--cache-mb", cache_mb]
    return _spawn("--worker", "calibrate", "--model", model, "--data", data, "--engine", engine,
                  "--shards", shards, *extra, *(["--again"] if again else []))


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

    timed = {}
    for n in (samples, 4 * samples):
        pred, cal = [], []
        for i in range(repeats):  # alternate, so drift on a shared machine hits both
            say(f"adabn: {n} samples, timing round {i + 1}/{repeats}")
            pred.append(_spawn("--worker", "predict", "--model", model, "--data", _data_path(size, n)))
            cal.append(_calibrate(model, _data_path(size, n), again=True))
        timed[n] = {"cold": statistics.median(r["seconds"] for r in pred),
                    "warm": statistics.median(r["warm_seconds"] for r in pred),
                    "warm_faulted_mb": statistics.median(r["warm_faulted_mb"] for r in pred),
                    "cal": statistics.median(r["seconds"] for r in cal),
                    "again": statistics.median(r["again_seconds"] for r in cal), "runs": cal}

    rows = []
    for n, goal in ((samples, GOAL_SMALL), (4 * samples, GOAL_BIG)):
        t = timed[n]
        mid = _median_run(t)
        rows.append({
            "measure": f"time, {n} samples (median of {repeats}); predict batch 32, calibrate batch "
                       f"{mid['batch_size']}",
            "model.predict warm / cold": f"{t['warm']:.1f} s / {t['cold']:.1f} s",
            "calibrate": f"{t['cal']:.1f} s",
            "ratio vs warm (cold)": f"{t['cal'] / t['warm']:.2f}x ({t['cal'] / t['cold']:.2f}x)",
            "goal": f"<= {goal}x warm: {'PASS' if t['cal'] / t['warm'] <= goal else 'MISS'}",
            "cache": f"live {mid['live_mb']:.0f} MB, in RAM (budget {mid['budget_mb'][0]:.0f} MB), "
                     f"{mid['spilled_mb']:.0f} MB spilled; peak RSS {mid['peak_rss_mb']:.0f} MB",
            "first touch": f"calibrate faulted {mid['faulted_mb'] / 1024:.1f} GB; again in the same process "
                           f"{t['again']:.1f} s = {t['again'] / t['warm']:.2f}x warm, faulted "
                           f"{mid['again_faulted_mb'] / 1024:.2f} GB, statistics "
                           f"{'bit-equal' if all(r['again_same'] for r in t['runs']) else 'DIFFERENT'}; "
                           f"warm predict faulted {t['warm_faulted_mb']:.0f} MB",
        })

    mem = {}
    for n in sizes:
        say(f"adabn: memory with {n} samples, --cache-mb {FIXED_CACHE_MB}")
        mem[n] = _calibrate(model, _data_path(size, n), cache_mb=FIXED_CACHE_MB)
    for n in sizes:
        r = mem[n]
        rows.append({
            "measure": f"memory, {n} samples ({_data_path(size, n).stat().st_size / 2**20:.0f} MB file), "
                       f"--cache-mb {FIXED_CACHE_MB}",
            "model.predict warm / cold": "",
            "calibrate": f"{r['seconds']:.1f} s; peak RSS {r['peak_rss_mb']:.0f} MB (before {r['rss_before_mb']:.0f})",
            "ratio vs warm (cold)": f"RSS {r['peak_rss_mb'] / mem[samples]['peak_rss_mb']:.2f}x of {samples}",
            "goal": f"spill within cap: {'PASS' if r['peak_disk_mb'] <= r['max_spill_mb'] else 'MISS'}",
            "cache": f"live {r['live_mb']:.0f} MB; {r['spilled_mb']:.0f} MB spilled in all, at most "
                     f"{r['peak_disk_mb']:.0f} MB on disk (cap {r['max_spill_mb'] / 1024:.0f} GB)",
        })

    say(f"adabn: Ray, 2 shards, {samples} samples")
    try:
        ray_run = _calibrate(model, _data_path(size, samples), engine="ray", shards=2)
    except RuntimeError as e:
        ray_run = {"error": str(e)[-300:]}
    one = timed[samples]
    if "error" in ray_run:
        rows.append({"measure": f"Ray, 2 shards, {samples} samples", "calibrate": ray_run["error"]})
    else:
        same = ray_run["stats_sha256"] == one["runs"][0]["stats_sha256"]
        rows.append({
            "measure": f"Ray, 2 shards, {samples} samples (Ray start included)",
            "model.predict warm / cold": "",
            "calibrate": f"{ray_run['seconds']:.1f} s vs one process {one['cal']:.1f} s",
            "ratio vs warm (cold)": f"{ray_run['seconds'] / one['cal']:.2f}x of one process",
            "goal": f"statistics bit-equal to one process: {'PASS' if same else 'MISS'}",
            "cache": "peak RSS per shard " + ", ".join(f"{s['peak_rss_mb']:.0f} MB ({s['samples']} samples)"
                                                     for s in ray_run["shards"]),
        })
    growth = mem[sizes[-1]]["peak_rss_mb"] / mem[samples]["peak_rss_mb"]
    first = timed[samples]["runs"][0]
    notes = [
        f"ResNet50 (weights=None, random BN statistics) at {size}x{size}x3, {first['layers']} BN layers in "
        f"{first['levels']} levels run by {first['functions']} traced functions (phases of one structure share one); "
        f"calibration data is a float32 .npy, read in batches of {first['batch_size']} "
        "(the default: the power of two that brings the largest activation of a batch nearest to 128 MiB); predict runs Keras's default batch of 32.",
        f"Calibration / warm predict: {timed[samples]['cal'] / timed[samples]['warm']:.2f}x at {samples} samples "
        f"(goal <= {GOAL_SMALL}x), {timed[4 * samples]['cal'] / timed[4 * samples]['warm']:.2f}x at {4 * samples} "
        f"(goal <= {GOAL_BIG}x); medians of {repeats} alternating runs, default (automatic) cache.",
        f"With a fixed --cache-mb {FIXED_CACHE_MB}, peak RSS grows {growth:.2f}x while the data grows 4x; "
        "the rest of the live cache spills to a temporary folder, within --max-spill-gb.",
        "First touch: each calibration process runs the same calibration again (rebuild and tracing "
        "included), with memory the first run already touched (TensorFlow's allocator keeps it): "
        f"{timed[samples]['again'] / timed[samples]['warm']:.2f}x of a warm predict at {samples} samples and "
        f"{timed[4 * samples]['again'] / timed[4 * samples]['warm']:.2f}x at {4 * samples} (medians), against "
        f"{timed[samples]['cal'] / timed[samples]['warm']:.2f}x and "
        f"{timed[4 * samples]['cal'] / timed[4 * samples]['warm']:.2f}x for the first run. That run faulted in "
        f"{_median_run(timed[samples])['faulted_mb'] / 1024:.1f} and "
        f"{_median_run(timed[4 * samples])['faulted_mb'] / 1024:.1f} GB of never-touched memory; a warm "
        "predict reuses what its first pass touched. The goals are judged on the first run, as a user runs it.",
    ]
    return {"rows": rows, "notes": notes, "ratio_warm_small": round(timed[samples]["cal"] / timed[samples]["warm"], 3),
            "ratio_warm_big": round(timed[4 * samples]["cal"] / timed[4 * samples]["warm"], 3),
            "memory_growth": round(growth, 3), "ray": ray_run,
            "ratio_again_small": round(timed[samples]["again"] / timed[samples]["warm"], 3),
            "ratio_again_big": round(timed[4 * samples]["again"] / timed[4 * samples]["warm"], 3)}


def fullbatch(size: int = 128, samples: int = 512, repeats: int = 3, say=print) -> None:
    """``--fullbatch``: one line per process, predict / Keras's one-call statistics / calibration."""
    model, data = _model_path(size), _data_path(size, samples)
    if not (model.exists() and data.exists()):
        raise SystemExit(f"run bench/adabn.py first: it writes {model.name} and {data.name}")
    for i in range(repeats):
        say(f"round {i + 1}: predict {_spawn('--worker', 'predict', '--model', model, '--data', data)}")
        say(f"round {i + 1}: fullbatch {_spawn('--worker', 'fullbatch', '--model', model, '--data', data)}")
        cal = _calibrate(model, data)
        say(f"round {i + 1}: calibrate seconds={cal['seconds']:.2f} faulted_mb={cal['faulted_mb']:.0f}")


def _median_run(t: dict) -> dict:
    """The calibration run of median time among a size's rounds."""
    return sorted(t["runs"], key=lambda r: r["seconds"])[len(t["runs"]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--cache-mb", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="local", help=argparse.SUPPRESS)
    ap.add_argument("--shards", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--again", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--quick", action="store_true", help="64x64, 128 samples, one round")
    ap.add_argument("--fullbatch", action="store_true", help="the one-call reference point (see above)")
    args = ap.parse_args()
    if args.worker:
        print(MARK + json.dumps(_worker(args)), flush=True)
        return
    if args.fullbatch:
        fullbatch(args.size or 128, args.samples or 512, args.repeats or 3)
        return
    res = run(args.quick, args.size, args.samples, args.repeats)
    for r in res["rows"]:
        print(" | ".join(f"{v}" for v in r.values()))
    for n in res["notes"]:
        print("*", n)


if __name__ == "__main__":
    main()
