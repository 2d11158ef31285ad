"""Reference point for bench/NOTES.md ("Session 9"): what Keras itself needs to compute the AdaBN
statistics of all the data in one call, against a warm ``predict`` and bnrewrite's calibration.

    python3 bench/adabn_fullbatch.py [--samples 512] [--rounds 3]

Uses the model and data ``bench/adabn.py`` wrote into ``bench/.cache`` (run it first). Each
measurement runs in a fresh process, alternating: (a) ``model.predict`` cold then warm (batch 32);
(b) ``tf.function(lambda x: model(x, training=True))`` on every sample as one batch -- each BN then
normalizes with the mean and biased variance of all the data given the BNs before it -- first call
(tracing included) and again; (c) ``bnrewrite.calibration.calibrate`` with its defaults. Loading is
outside every timer. Prints one JSON line per process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def _faulted_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt * resource.getpagesize() / 2**30


def worker(mode: str, n: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    model_path, data_path = CACHE / "adabn_resnet50_128.keras", CACHE / f"adabn_data_128_{n}.npy"
    if mode == "calibrate":
        import bnrewrite
        from bnrewrite.calibration import calibrate
        from bnrewrite.passes import InferenceMode, PassContext, PassManager

        mg = bnrewrite.load(model_path)
        PassManager([InferenceMode()]).run(mg, PassContext())
        f, t = _faulted_gb(), time.perf_counter()
        calibrate(mg, data_path)
        return {"mode": mode, "first": time.perf_counter() - t, "faulted_gb": _faulted_gb() - f}
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    x = np.load(data_path)
    if mode == "predict":
        t = time.perf_counter()
        model.predict(x, batch_size=32, verbose=0)
        cold, t = time.perf_counter() - t, time.perf_counter()
        model.predict(x, batch_size=32, verbose=0)
        return {"mode": mode, "cold": cold, "warm": time.perf_counter() - t}
    f, t = _faulted_gb(), time.perf_counter()
    fn = tf.function(lambda v: model(v, training=True))
    fn(tf.constant(x)).numpy()
    first, faulted, t = time.perf_counter() - t, _faulted_gb() - f, time.perf_counter()
    fn(tf.constant(x)).numpy()
    return {"mode": mode, "first": first, "again": time.perf_counter() - t, "faulted_gb": faulted}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", choices=["predict", "fullbatch", "calibrate"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.samples)))
        return 0
    for _ in range(args.rounds):
        for mode in ("predict", "fullbatch", "calibrate"):
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--samples", str(args.samples)],
                                 capture_output=True, text=True, check=True).stdout
            print(out.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
