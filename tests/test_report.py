"""Issue 14, parts 1-3: findings a conversion creates, ``--fail-on``, the CI JSON report and the
``--html`` page (loaded in headless Chromium when it is installed: marker ``browser``).

Two CLI conversions of a one-BN fixture (a few seconds each)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def cli(*args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "bnrewrite", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def zero_calibrated(tmp_path_factory):
    """lone_bn.h5 calibrated on all-zero data: every variance becomes 0 (a finding the conversion made)."""
    d = tmp_path_factory.mktemp("zero")
    np.save(d / "zeros.npy", np.zeros((64, 1), np.float32))
    proc = cli("convert", FIX / "lone_bn.h5", "out.onnx", "--calibration", "zeros.npy", "--fail-on", "warning",
               "--report", "r.json", "--html", "r.html", cwd=d)
    return d, proc


def test_new_findings_printed_and_fail_on(zero_calibrated):
    d, proc = zero_calibrated
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert re.search(r"new warning DEGENERATE_VARIANCE on bn", proc.stdout), proc.stdout
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert err == ["bnrewrite: error: --fail-on warning: 1 finding at or above warning: DEGENERATE_VARIANCE on bn"]
    assert (d / "out.onnx").is_file()  # the output verified: it is written, the gate fails the job
    rep = json.loads((d / "r.json").read_text())
    assert rep["exit_code"] == 4 and rep["ok"] is True and rep["error"]["code"] == "FAIL_ON"
    assert [(f["code"], f["severity"]) for f in rep["findings"]["new"]] == [("DEGENERATE_VARIANCE", "warning")]
    assert [f["code"] for f in rep["findings"]["fixed"]] == ["STALE_STATS"]


def test_fail_on_error_passes_warnings(tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((64, 1), np.float32))
    proc = cli("convert", FIX / "lone_bn.h5", "out.onnx", "--calibration", "zeros.npy", "--fail-on", "error",
               "--report", "-", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    assert rep["exit_code"] == 0 and rep["findings"]["new"][0]["severity"] == "warning"


def test_report_schema_documented(zero_calibrated):
    """Every top-level key of the convert report and of the inspect record is in docs/report-schema.md."""
    d, _ = zero_calibrated
    doc = (ROOT / "docs" / "report-schema.md").read_text()
    rep = json.loads((d / "r.json").read_text())
    from bnrewrite.audit import failed_record

    rec = failed_record(d / "missing.h5", FileNotFoundError("x"))
    for key in [*rep, *rec, *rep["error"], *rep["input"].keys() & {"path", "sha256"}]:
        assert f"`{key}`" in doc, key
    assert rep["schema_version"] == rec["schema_version"] == 1


def test_html_content(zero_calibrated):
    d, _ = zero_calibrated
    page = (d / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page
    assert page.count("<svg") >= 3  # BN statistics, op histogram, verification
    for text in ("DEGENERATE_VARIANCE", "STALE_STATS", "calibrate_bn", "fold_bn",
                 "its input comes from InputLayer", "batch-independent", "ONNX op histogram"):
        assert text in page, text


def test_html_escapes_file_text():
    from bnrewrite.html_report import inspect_html, outliers

    evil = "<img src=x onerror=alert(1)>"
    rec = {"input": {"path": "m.h5"}, "exit_code": 0, "versions": {},
           "findings": [{"code": "STALE_STATS", "layer": evil, "severity": "warning", "message": evil}]}
    page = inspect_html(rec, {evil: {"moving_mean": np.zeros(4), "moving_variance": np.ones(4)}})
    assert evil not in page and "&lt;img src=x" in page
    v = np.ones(32)
    v[5] = 50.0
    v[9] = 0.0
    assert list(np.flatnonzero(outliers(v, variance=True))) == [5, 9]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_html_in_headless_chromium(zero_calibrated, tmp_path):
    d, _ = zero_calibrated

    def load(page: Path, *extra):
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                               "--v=0", "--window-size=1300,2000", *extra, page.as_uri()],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    # the console check sees a console error when there is one
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('probe-error')</script></body></html>")
    assert "probe-error" in load(bad, "--dump-dom").stderr

    dom = load(d / "r.html", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert ":CONSOLE" not in dom.stderr, [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert dom.stdout.count("<svg") >= 3 and "DEGENERATE_VARIANCE" in dom.stdout
    shot = tmp_path / "page.png"
    proc = load(d / "r.html", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.stat().st_size > 10_000
    from PIL import Image  # matplotlib depends on pillow

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the plots' blue (#1f77b4) lines/bars are on the page
    blue = (abs(img[..., 0] - 0x1F) < 30) & (abs(img[..., 1] - 0x77) < 30) & (abs(img[..., 2] - 0xB4) < 30)
    assert blue.sum() > 500, blue.sum()
