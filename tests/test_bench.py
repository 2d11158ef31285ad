"""Smoke test of the benchmark script (not a timed test): ``bench/run.py --quick``
on the smallest model writes a report with its table. Marked ``bench``, so it is
not part of the default run: ``python3 -m pytest -m bench tests/test_bench.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.bench
def test_bench_quick_smoke(tmp_path):
    out = tmp_path / "benchmarks.md"
    p = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", "training_true", "--no-adabn",
         "--cache", str(tmp_path / "cache"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    text = out.read_text()
    assert "## Machine" in text and "## Results" in text
    assert "| training_true | tf2onnx (tf_keras load of the .h5)" in text
    assert "quick" in text  # marked as a smoke run, not a measurement
