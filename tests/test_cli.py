"""The command line, run as a user runs it: ``python -m bnrewrite convert ...``
in a fresh process. Each successful run costs a TensorFlow import, so these
are few and each checks several things."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import models
from conftest import ROOT, assert_close


def run_cli(*args, cwd, env_extra=None, timeout=300):
    env = dict(os.environ, **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "bnrewrite", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def onnx_outputs(path, b: models.Built):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(b.inputs_alt))


def test_cli_convert_with_report(get_model, tmp_path):
    """tf_keras multi-input/multi-output .h5 -> .onnx, with a JSON report."""
    b = get_model("tk-shared_multi")
    out, rep = tmp_path / "model.onnx", tmp_path / "report.json"
    proc = run_cli("convert", b.path, out, "--report", rep, "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert out.is_file() and out.stat().st_size > 0

    report = json.loads(rep.read_text())
    for key in ("input", "output", "verification", "passes"):
        assert key in report, sorted(report)
    assert report["verification"]["ok"] is True
    assert 0 <= report["verification"]["max_abs"] <= 1e-4
    assert isinstance(report["passes"], list)
    assert str(b.path) in json.dumps(report["input"])
    assert "model.onnx" in json.dumps(report["output"])

    got = onnx_outputs(out, b)
    assert len(got) == len(b.outputs_alt)
    for k, (g, w) in enumerate(zip(got, b.outputs_alt)):
        assert_close(g, w, f"cli onnx output {k}")


def test_cli_missing_input(tmp_path):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    proc = run_cli("convert", tmp_path / "nope.h5", out, "--report", rep, cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert "nope.h5" in line
    assert not out.exists()
    # the report (its own path is valid) records the failure for CI to archive
    assert json.loads(rep.read_text())["error"]["exit_code"] == 2
    assert list(tmp_path.iterdir()) == [rep]


def test_cli_unknown_output_suffix(get_model, tmp_path):
    b = get_model("k3-conv_bn")
    out = tmp_path / "out.txt"
    proc = run_cli("convert", b.path, out, cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert ".txt" in line
    assert list(tmp_path.iterdir()) == []


def test_cli_existing_output_needs_force(get_model, tmp_path):
    """Existing OUT: refused (exit 2, OUT byte-identical); with --force, replaced."""
    b = get_model("k3-nested")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an older export we must not lose\n")
    before = sha256(out)

    proc = run_cli("convert", b.path, out, cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert "exists" in line or "force" in line, line
    assert sha256(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]

    proc = run_cli("convert", b.path, out, "--force", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sha256(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files left
    got = onnx_outputs(out, b)
    assert_close(got[0], b.outputs_alt[0], "cli --force onnx output")


def test_cli_bad_option_value(get_model, tmp_path):
    """A usage error exits 2 without a traceback and writes nothing."""
    b = get_model("k3-conv_bn")
    out = tmp_path / "out.onnx"
    proc = run_cli("convert", b.path, out, "--opset", "seventeen", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "opset" in proc.stderr
    assert list(tmp_path.iterdir()) == []
