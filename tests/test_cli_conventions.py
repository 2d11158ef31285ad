"""Issue 14, part 1: a CLI a CI pipeline can trust -- option checks, usage errors, global flags,
``--report -``, umask, deterministic ONNX bytes with a named batch dimension and metadata.

Usage-error checks run before TensorFlow is imported (about a second each). One CLI conversion
(module fixture) and four in-process conversions cover the ONNX output."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
VERSION_KEYS = {"bnrewrite", "tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime"}


def cli(*args, cwd, umask=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "bnrewrite", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, preexec_fn=pre)


def one_error_line(proc, code=2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bnrewrite: error: "), lines[0]
    return lines[0]


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---------------------------------------------------------------- option checks and usage errors
def test_opset_range_is_tf2onnx_range(tmp_path):
    import onnx  # noqa: F401  (tf2onnx.constants needs it; importing tf2onnx itself would load TensorFlow)

    from bnrewrite.io.onnx_writer import tf2onnx_max_opset

    top, version = tf2onnx_max_opset()
    spec_dir = Path(__import__("importlib.util").util.find_spec("tf2onnx").submodule_search_locations[0])
    text = (spec_dir / "constants.py").read_text()
    ns: dict = {}
    exec(compile(text, "constants.py", "exec"), ns)
    assert top == (ns.get("MAX_OPSET") or max(ns["OPSET_TO_IR_VERSION"]))
    assert version == __import__("importlib.metadata").metadata.version("tf2onnx")
    line = one_error_line(cli("convert", FIX / "lone_bn.h5", "o.onnx", "--opset", top + 1, cwd=tmp_path))
    assert f"9..{top}" in line and f"tf2onnx {version}" in line and "--opset" in line
    line = one_error_line(cli("convert", FIX / "lone_bn.h5", "o.onnx", "--opset", 8, cwd=tmp_path))
    assert "--opset" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option,value", [("--atol", "-1e-3"), ("--rtol", "nan"), ("--atol", "inf"),
                                          ("--rtol", "-0.5")])
def test_bad_tolerance_is_usage_error(tmp_path, option, value):
    line = one_error_line(cli("convert", FIX / "lone_bn.h5", "o.onnx", f"{option}={value}",
                              "--report", "r.json", cwd=tmp_path))
    assert option in line and "tolerance" in line
    assert list(tmp_path.iterdir()) == []  # a usage error: nothing written, not a verification failure


@pytest.mark.parametrize("args,needle", [
    (["convert", "--no-such-option"], "no-such-option"),
    (["convert"], "Missing argument"),
    (["convert", "a.h5", "b.onnx", "--variance", "odd"], "--variance"),
    (["frobnicate"], "frobnicate"),
    ([], "missing command"),
])
def test_usage_errors_are_one_line(tmp_path, args, needle):
    line = one_error_line(cli(*args, cwd=tmp_path))
    assert needle in line
    assert "Usage:" not in line


def test_version_and_global_flags(tmp_path):
    from importlib.metadata import version

    want = f"bnrewrite {version('bnrewrite')}"
    for args in (["--version"], ["convert", "--version"], ["inspect", "--version"]):
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.strip() == want, (args, proc.stdout, proc.stderr)
    # -v before the subcommand takes effect (a traceback with the error), and after it too
    for args in (["-v", "convert", "nope.h5", "o.onnx"], ["convert", "nope.h5", "o.onnx", "-v"]):
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" in proc.stderr, (args, proc.stderr[-500:])
        assert proc.stderr.rstrip().endswith("nope.h5: no such file")
    proc = cli("-q", "inspect", "nope.h5", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""


def test_findings_plural_and_progress_eta():
    from rich.console import Console

    from bnrewrite.audit import Audit
    from bnrewrite.cli import _print_audit, _progress
    from bnrewrite.report import plural

    assert [plural(1, "warning"), plural(2, "warning"), plural(3, "error"), plural(2, "info")] == \
        ["1 warning", "2 warnings", "3 errors", "2 info"]
    f = {"code": "STALE_STATS", "layer": "bn", "severity": "warning", "message": "m", "hint": "h"}
    buf = io.StringIO()
    _print_audit(Console(file=buf, width=200), Audit(findings=[f, {**f, "layer": "bn2"}]), "m.h5")
    assert "findings: 2 warnings" in buf.getvalue()

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    with _progress(console) as bar:
        task = bar.add_task("calibrating", total=None)
        bar.update(task, completed=5, total=20)
        bar.refresh()
        text = bar.get_renderable()
        console.print(text)
    out = buf.getvalue()
    assert "5/20" in out and "ETA" in out


# ---------------------------------------------------------------- one conversion through the CLI
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    proc = cli("convert", FIX / "multi_io.h5", "out.onnx", "--report", "-", cwd=d, umask=0o027)
    return d, proc


def test_report_to_stdout_and_umask(cli_run):
    d, proc = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (d / "-").exists()
    rep = json.loads(proc.stdout)  # stdout is the report and nothing else
    assert rep["schema_version"] == 1 and rep["kind"] == "convert" and rep["ok"] is True
    assert rep["exit_code"] == 0 and rep["error"] is None
    assert set(rep["versions"]) == VERSION_KEYS and all(rep["versions"].values())
    assert rep["input"]["sha256"] == sha256(FIX / "multi_io.h5")
    assert rep["output"]["sha256"] == sha256(d / "out.onnx")
    assert rep["timings"]["total_s"] > 0
    assert "verified" in proc.stderr  # the human summary went to stderr
    assert (d / "out.onnx").stat().st_mode & 0o777 == 0o640  # umask 027 respected


def test_failure_report_respects_umask(tmp_path):
    """Exit 2 after the report path was checked: the report records the error, mode from the umask."""
    (tmp_path / "out.onnx").write_bytes(b"keep")
    proc = cli("convert", FIX / "lone_bn.h5", "out.onnx", "--report", "r.json", cwd=tmp_path, umask=0o027)
    line = one_error_line(proc)
    assert "already exists" in line
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["ok"] is False and rep["exit_code"] == 2
    assert rep["error"]["code"] == "BAD_INPUT" and "already exists" in rep["error"]["message"]
    assert rep["input"]["sha256"] == sha256(FIX / "lone_bn.h5")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "out.onnx").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "r.json"]


def test_onnx_batch_dim_and_metadata(cli_run):
    import onnx

    d, proc = cli_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = onnx.load(str(d / "out.onnx"))
    for v in [*m.graph.input, *m.graph.output]:
        dim0 = v.type.tensor_type.shape.dim[0]
        assert dim0.dim_param == "batch" and not dim0.HasField("dim_value"), v
    props = {p.key: p.value for p in m.metadata_props}
    assert props["bnrewrite.version"] == json.loads(proc.stdout)["versions"]["bnrewrite"]


def test_onnx_bytes_deterministic(cli_run, tmp_path):
    """The same file converted 4 times (3 in this process, where tf2onnx's name counters keep
    counting, and once by the CLI in another process) gives the same bytes."""
    import bnrewrite

    d, proc = cli_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    shas = {sha256(d / "out.onnx")}
    for i in range(3):
        out = tmp_path / f"m{i}.onnx"
        bnrewrite.convert(FIX / "multi_io.h5", out, verify=False)
        shas.add(sha256(out))
    assert len(shas) == 1, shas


def test_normalize_metadata_and_names():
    """normalize() on a hand-made proto: counters renumbered, batch named, metadata sorted."""
    import onnx
    from onnx import TensorProto, helper

    from bnrewrite.io.onnx_writer import normalize, onnx_metadata

    def make(k):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [f"unk__{k}", 3])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"unk__{k + 1}", 3])
        w = helper.make_tensor(f"W__{k + 7}", TensorProto.FLOAT, [3], [1, 2, 3])
        n1 = helper.make_node("Add", ["x", f"W__{k + 7}"], [f"t__{k + 2}"], name=f"Add__{k + 2}", doc_string="d")
        n2 = helper.make_node("Relu", [f"t__{k + 2}"], ["y"], name=f"Relu__{k + 3}")
        g = helper.make_graph([n1, n2], "g", [x], [y], [w], doc_string=f"run {k}")
        return helper.make_model(g)

    meta = onnx_metadata({"input": {"sha256": "ab" * 32}, "passes": [{"name": "fold_bn", "changed": ["bn"]}]})
    a, b = normalize(make(5), meta), normalize(make(40), meta)
    assert a.SerializeToString() == b.SerializeToString()
    onnx.checker.check_model(a)
    props = [(p.key, p.value) for p in a.metadata_props]
    assert [k for k, _ in props] == sorted(k for k, _ in props)
    assert dict(props)["bnrewrite.source_sha256"] == "ab" * 32
    assert json.loads(dict(props)["bnrewrite.passes"]) == [{"name": "fold_bn", "changed": 1}]
    assert a.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert a.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
