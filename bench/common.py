"""Shared by the benchmark scripts: paths, the model list, subprocess plumbing.

The parent (``bench/run.py``) never imports TensorFlow: every build, conversion
and timing runs in a fresh subprocess (``bench/models.py``, ``bench/worker.py``)
so that each measurement starts from the same kind of process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_CACHE = BENCH / ".cache"
RESULT_MARK = "@@BENCH-RESULT@@ "

ZOO = {  # bench name -> keras.applications constructor
    "resnet50": "ResNet50",
    "mobilenetv2": "MobileNetV2",
    "efficientnetb0": "EfficientNetB0",
    "densenet121": "DenseNet121",
}

#: baseline kinds (see bench/worker.py)
KERAS3 = "tf2onnx-keras3"    # keras.saving.load_model(file) -> tf2onnx.convert.from_keras
TFKERAS = "tf2onnx-tfkeras"  # tf_keras.models.load_model(file) -> tf2onnx.convert.from_keras
BNREWRITE = "bnrewrite"      # bnrewrite.convert(file, out.onnx) with verification


@dataclass
class Baseline:
    key: str          # short id used in file names and tables
    kind: str         # KERAS3 / TFKERAS
    file: str         # model file (in the cache) that this baseline loads
    label: str        # what the table says
    goal: bool = False  # the baseline the goals are measured against


@dataclass
class ModelSpec:
    name: str
    group: str                 # "zoo", "video", "training"
    file: str                  # the file bnrewrite converts
    baselines: list[Baseline]
    input_shape: tuple         # one sample, without the batch axis
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ref_file(self) -> str:
        """Seeded input batch ``x`` and reference output ``ref`` (bench/models.py)."""
        return Path(self.file).stem + ".ref.npz"

    @property
    def files(self) -> list[str]:
        return sorted({self.file, *(b.file for b in self.baselines), self.ref_file})


def settings(quick: bool) -> dict:
    """Sizes and repeat counts; ``--quick`` is a smoke run, not a measurement."""
    if quick:
        return {"image": 64, "frames": 16, "rounds": 1, "runs_b1": 5, "runs_b32": 3,
                "warmup": 1, "batch_large": 4, "ref_batch": 4}
    return {"image": 224, "frames": 256, "rounds": 3, "runs_b1": 50, "runs_b32": 30,
            "warmup": 3, "batch_large": 32, "ref_batch": 4}


def model_specs(quick: bool) -> list[ModelSpec]:
    s = settings(quick)
    img, frames = s["image"], s["frames"]
    specs = []
    for name, app in ZOO.items():
        f = f"{name}_{img}.keras"
        specs.append(ModelSpec(
            name, "zoo", f, [Baseline("tf2onnx", KERAS3, f, "tf2onnx (Keras 3 load)", goal=True)],
            (img, img, 3), f"keras.applications.{app}(weights=None, input_shape=({img}, {img}, 3)), "
            "randomized BN statistics, saved by Keras 3 as .keras", {"app": app, "image": img}))
    h5 = f"video_td_T{frames}.h5"
    twin = f"video_td_T{frames}_keras3.keras"
    specs.append(ModelSpec(
        "video_td", "video", h5,
        [Baseline("tf2onnx", KERAS3, twin, "tf2onnx (Keras 3 twin .keras)", goal=True),
         Baseline("tf2onnx_tfk", TFKERAS, h5, "tf2onnx (tf_keras load of the .h5)")],
        (frames, 16, 16, 3),
        f"tf.keras .h5, frames ({frames}, 16, 16, 3) -> TimeDistributed(Conv2D 8) -> TimeDistributed(BN) -> "
        "TimeDistributed(ReLU) -> TimeDistributed(GlobalAveragePooling2D) -> TimeDistributed(Dense 32) -> "
        "TimeDistributed(BN) -> GlobalAveragePooling1D -> Dense 10; Keras 3 cannot load the .h5, so the "
        "Keras 3 baseline converts a twin .keras with the same architecture and weights",
        {"frames": frames, "twin": twin}))
    specs.append(ModelSpec(
        "training_true", "training", "training_true_cnn.h5",
        [Baseline("tf2onnx", KERAS3, "training_true_cnn.h5", "tf2onnx (Keras 3 load of the .h5)", goal=True),
         Baseline("tf2onnx_tfk", TFKERAS, "training_true_cnn.h5", "tf2onnx (tf_keras load of the .h5)")],
        (32, 32, 3),
        "tf.keras .h5, (32, 32, 3) -> Conv2D 16 -> BN(training=True) -> ReLU -> Conv2D 32 -> BN -> ReLU -> "
        "GlobalAveragePooling2D -> Dense 32 -> BN(training=True) -> Dense 10; reference = the same weights "
        "without training=True (tf_keras inference)", {}))
    return specs


def env() -> dict:
    """Environment of every subprocess: this tree's bnrewrite, quiet TF, CPU only."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    e["CUDA_VISIBLE_DEVICES"] = ""
    e.setdefault("PYTHONHASHSEED", "0")
    return e


@dataclass
class Proc:
    rc: int
    wall_s: float
    maxrss_mb: float
    result: dict | None
    stderr: str


def run_py(args: list[str], timeout: float | None = None, log=None) -> Proc:
    """Run ``python args...`` in a fresh process; wall time, peak RSS and its result line."""
    cmd = [sys.executable, *args]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=str(ROOT),
                         text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += f"\n[bench] timed out after {timeout} s"
    wall = time.perf_counter() - t0
    result = None
    for line in out.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
    rss = float(result.get("maxrss_mb", float("nan"))) if result else float("nan")
    if log is not None:
        log.write(f"$ {' '.join(cmd)}\n[rc={p.returncode} wall={wall:.2f}s]\n{err[-4000:]}\n")
        log.flush()
    return Proc(p.returncode, wall, rss, result, err)


def emit(result: dict) -> None:
    """Worker side: print the result line the parent looks for (with this process's peak RSS)."""
    import resource

    result = dict(result)
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(RESULT_MARK + json.dumps(result, default=_default), flush=True)


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)
