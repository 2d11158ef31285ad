"""Hardening (issue 6): every row of the table in ``docs/hardening.md`` is a test here.

bnrewrite runs unattended in CI on files from many hands, so for each bad or
risky input the command line must: exit 2 with exactly one line on stderr
(``bnrewrite: error: ...``) that names the problem, print no traceback (unless
``-v``), write nothing (no OUT, no report, no temporary file left in the
folder) and never modify the input (checked by sha256). Inputs that may
convert (a Lambda with ``--unsafe``, custom layers with ``--custom-objects``)
must convert, verify, and match the *writing framework's* own ``predict``.

Running each command line in a fresh process costs a TensorFlow import, so
all rows run in ONE fresh process through ``tests/cli_batch.py``, which calls
the real entry point with stdout/stderr redirected at the file-descriptor
level (C-level TensorFlow/tf2onnx logging included) and reports the real exit
codes. Two rows need a fault injected (a failed verification, a crash while
writing) and run in-process with ``monkeypatch`` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import hardening_models as hm
from conftest import ROOT, assert_close

FIXTURES = ROOT / "fixtures"
ERROR_PREFIX = "bnrewrite: error: "


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Case:
    argv: list[str]
    cwd: Path
    out: str | None = None  # OUT, relative to cwd (must exist iff the run succeeds)
    reference: tuple | None = None  # (inputs, outputs) of the writing framework, for successes
    out_existed: bool = False  # OUT was there before the run


@dataclass
class Run:
    case: Case
    code: object
    stdout: str
    stderr: str
    changed: list[str] = field(default_factory=list)  # files that existed before and changed
    new_files: list[str] = field(default_factory=list)  # files that appeared (OUT excluded)

    @property
    def out(self) -> Path | None:
        return self.case.cwd / self.case.out if self.case.out else None


# --------------------------------------------------------------------------
# building the inputs and the command lines (once per session)
# --------------------------------------------------------------------------

def _truncate(src: Path, dst: Path, frac: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def _rezip(src: Path, dst: Path, edit) -> Path:
    """Copy a .keras archive, passing each member through ``edit(name, bytes) -> bytes | None``."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zo:
        for name in zi.namelist():
            data = edit(name, zi.read(name))
            if data is not None:
                zo.writestr(name, data)
    return dst


def _flip_member(src: Path, dst: Path, member: str) -> Path:
    """Flip one byte inside the stored data of ``member`` (its CRC no longer matches)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + min(10, info.compress_size - 1)] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def _h5_edit(src: Path, dst: Path, edit) -> Path:
    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _set_attr(name, value):
    return lambda f: f.attrs.__setitem__(name, value)


def _poke(dataset: str, index: tuple, value: float):
    def edit(f):
        a = f[dataset][()]
        a[index] = value
        f[dataset][...] = a

    return edit


def _build_cases(root: Path) -> dict[str, Case]:
    inp = root / "in"
    inp.mkdir()
    multi_h5, multi_keras = FIXTURES / "multi_io.h5", FIXTURES / "multi_io.keras"
    f = {}  # input files by name
    f["multi_h5"] = Path(shutil.copy(multi_h5, inp / "multi_io.h5"))
    f["multi_keras"] = Path(shutil.copy(multi_keras, inp / "multi_io.keras"))
    f["pb"] = Path(shutil.copy(multi_h5, inp / "model.pb"))
    (inp / "folder.h5").mkdir()
    f["empty"] = inp / "empty.h5"
    f["empty"].write_bytes(b"")
    f["trunc_h5"] = _truncate(multi_h5, inp / "truncated.h5", 0.5)
    f["garbage_h5"] = inp / "garbage.h5"
    f["garbage_h5"].write_bytes(bytes(range(256)) * 64)
    f["trunc_keras"] = _truncate(multi_keras, inp / "truncated.keras", 0.6)
    f["crc_keras"] = _flip_member(multi_keras, inp / "flipped.keras", "config.json")
    f["weights_only"] = hm.weights_only(inp / "weights_only.h5")
    f["no_config"] = _rezip(multi_keras, inp / "no_config.keras", lambda n, d: None if n == "config.json" else d)
    f["no_weights"] = _rezip(multi_keras, inp / "no_weights.keras",
                             lambda n, d: None if n == "model.weights.h5" else d)
    f["config_not_json"] = _rezip(multi_keras, inp / "config_not_json.keras",
                                  lambda n, d: d[: len(d) // 2] if n == "config.json" else d)
    f["config_ints"] = _rezip(
        multi_keras, inp / "config_ints.keras",
        lambda n, d: json.dumps({"class_name": "Functional", "config": {"name": "m", "layers": [1, 2]}}).encode()
        if n == "config.json" else d)
    f["config_list"] = _rezip(multi_keras, inp / "config_list.keras",
                              lambda n, d: b"[1, 2, 3]" if n == "config.json" else d)
    f["h5_not_json"] = _h5_edit(multi_h5, inp / "h5_not_json.h5", _set_attr("model_config", '{"class_name": "Func'))
    f["h5_bad_structure"] = _h5_edit(
        multi_h5, inp / "h5_bad_structure.h5",
        _set_attr("model_config", json.dumps({"class_name": "Functional", "config": {"layers": [{"class_name": "Dense"}]}})))
    f["nan_bn"] = _h5_edit(multi_h5, inp / "nan_bn.h5",
                           _poke("model_weights/bn_dense/bn_dense/moving_mean:0", (1,), np.nan))
    f["inf_kernel"] = _h5_edit(multi_h5, inp / "inf_kernel.h5",
                               _poke("model_weights/conv/conv/kernel:0", (0, 0, 0, 0), np.inf))
    f["subclassed"] = hm.subclassed_model(inp / "subclassed.keras")
    f["tf_op"] = hm.tf_op_model(inp / "tf_op.h5")
    f["unexportable"] = hm.unexportable_model(inp / "discretization.keras")
    lam = hm.lambda_models(inp)
    f["lambda_py310"] = hm.lambda_other_python(lam["tf_keras.h5"][0], inp / "lambda_py310.h5")
    named = hm.lambda_named_function(inp)
    custom = hm.custom_models(inp)
    f["custom_py"] = inp / "my_layers.py"
    f["custom_py"].write_text(hm.CUSTOM_MODULE)
    f["custom_tf_py"] = inp / "my_layers_tf.py"
    f["custom_tf_py"].write_text(hm.CUSTOM_MODULE_TF_KERAS)
    f["custom_broken"] = inp / "broken_layers.py"
    f["custom_broken"].write_text("import keras\n\nclass Scale(keras.layers.Layer):\n    pass\n\nraise ValueError('half-edited file')\n")
    f["custom_empty"] = inp / "no_layers.py"
    f["custom_empty"].write_text("X = 1\n")

    cases: dict[str, Case] = {}

    def add(cid, *argv, out="out.onnx", reference=None, cwd=None, setup=None):
        d = cwd or root / cid
        d.mkdir(exist_ok=True)
        if setup:
            setup(d)
        cases[cid] = Case([str(a) for a in argv], d, out, reference, out is not None and (d / out).exists())

    def convert(cid, src, *extra, out="out.onnx", **kw):
        add(cid, "convert", src, out, *extra, out=out, **kw)

    # -- input files
    convert("missing_input", inp / "nope.h5", "--report", "report.json")
    convert("input_is_directory", inp / "folder.h5")
    convert("input_by_content", f["pb"], "-q")
    convert("empty_file", f["empty"])
    convert("truncated_h5", f["trunc_h5"], "--report", "report.json")
    convert("corrupt_h5", f["garbage_h5"])
    convert("truncated_keras", f["trunc_keras"])
    convert("corrupt_keras", f["crc_keras"])
    convert("weights_only_h5", f["weights_only"])
    convert("keras_without_config", f["no_config"])
    convert("keras_without_weights", f["no_weights"])
    convert("keras_config_not_json", f["config_not_json"])
    convert("keras_config_wrong_structure", f["config_ints"])
    convert("keras_config_not_a_model", f["config_list"])
    convert("h5_config_not_json", f["h5_not_json"])
    convert("h5_config_wrong_structure", f["h5_bad_structure"])
    convert("nonfinite_bn_statistics", f["nan_bn"], "--report", "report.json")
    convert("nonfinite_kernel", f["inf_kernel"], out="out.keras")
    convert("subclassed_model", f["subclassed"])
    convert("raw_tf_op", f["tf_op"][0], "-q", reference=f["tf_op"][1:])
    convert("unexportable_layer", f["unexportable"])
    convert("verbose_traceback", f["garbage_h5"], "-v")
    # -- code in the model file
    for key, tag in (("keras.keras", "keras"), ("keras.h5", "keras_h5"), ("tf_keras.h5", "tf_keras")):
        convert(f"lambda_refused_{tag}", lam[key][0])
        convert(f"lambda_unsafe_{tag}", lam[key][0], "--unsafe", "-q", reference=lam[key][1:])
    convert("lambda_unsafe_to_keras", lam["tf_keras.h5"][0], "--unsafe", "-q", out="out.keras",
            reference=lam["tf_keras.h5"][1:])
    convert("lambda_other_python", f["lambda_py310"], "--unsafe")
    convert("lambda_function_missing", named[0])
    convert("lambda_function_provided", named[0], "--custom-objects", f["custom_py"], "-q", reference=named[1:])
    # -- custom layer classes
    for key, tag, module in (("keras.keras", "keras", f["custom_py"]), ("tf_keras.h5", "tf_keras", f["custom_tf_py"])):
        convert(f"custom_class_refused_{tag}", custom[key][0])
        convert(f"custom_class_provided_{tag}", custom[key][0], "--custom-objects", module, "-q",
                reference=custom[key][1:])
    # a Keras 3 class for a tf.keras model would compute something else: refused by name
    convert("custom_class_wrong_framework", custom["tf_keras.h5"][0], "--custom-objects", f["custom_py"])
    convert("custom_class_provided_to_keras", custom["keras.keras"][0], "--custom-objects", f["custom_py"],
            "-q", out="out.keras", reference=custom["keras.keras"][1:])
    add("inspect_custom_refused", "inspect", custom["tf_keras.h5"][0], out=None)
    add("inspect_custom_provided", "inspect", custom["tf_keras.h5"][0], "--custom-objects", f["custom_tf_py"],
        "--json", out=None)
    convert("custom_objects_missing_file", custom["keras.keras"][0], "--custom-objects", inp / "nope.py")
    convert("custom_objects_import_fails", custom["keras.keras"][0], "--custom-objects", f["custom_broken"])
    convert("custom_objects_without_layers", custom["keras.keras"][0], "--custom-objects", f["custom_empty"])
    # -- output files
    convert("unknown_output_suffix", f["multi_h5"], out="out.txt")
    same = root / "output_is_input"
    same.mkdir()
    shutil.copy(multi_h5, same / "model.h5")
    add("output_is_input", "convert", "model.h5", "./model.h5", "--force", cwd=same, out=None)
    convert("output_exists", f["multi_h5"], out="out.onnx",
            setup=lambda d: (d / "out.onnx").write_bytes(b"an earlier export that must survive\n"))
    convert("output_exists_force", f["multi_keras"], "--force", "-q", out="out.onnx",
            setup=lambda d: (d / "out.onnx").write_bytes(b"an earlier export, replaced on purpose\n"))
    convert("output_folder_missing", f["multi_h5"], out="no/such/folder/out.onnx")
    convert("output_is_directory", f["multi_h5"], "--force", out="out.onnx",
            setup=lambda d: (d / "out.onnx").mkdir())
    # -- inspect on bad input
    add("inspect_corrupt", "inspect", f["trunc_h5"], out=None)
    add("inspect_nonfinite", "inspect", f["nan_bn"], "--json", out=None)
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Build every case, run them all in one fresh process, check files before/after."""
    root = tmp_path_factory.mktemp("hardening")
    cases = _build_cases(root)
    before = snapshot(root)
    spec = root.parent / f"{root.name}_cases.json"
    results_path = root.parent / f"{root.name}_results.json"
    spec.write_text(json.dumps([{"id": k, "argv": c.argv, "cwd": str(c.cwd)} for k, c in cases.items()]))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("BNREWRITE_READ_TIMEOUT", "20")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "cli_batch.py"), str(spec), str(results_path)],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    assert results_path.exists(), proc.stderr[-3000:]
    results = json.loads(results_path.read_text())
    assert set(results) == set(cases), (sorted(set(cases) - set(results)), proc.stderr[-3000:])
    after = snapshot(root)
    case_dirs = tuple(str(c.cwd.relative_to(root)) + os.sep for c in cases.values())
    out: dict[str, Run] = {}
    for cid, case in cases.items():
        r = results[cid]
        own = str(case.cwd.relative_to(root)) + os.sep
        out_rel = str((case.cwd / case.out).relative_to(root)) if case.out else None
        # this case's folder, and the shared inputs (files outside every case folder)
        mine = [p for p in {*before, *after} if p != out_rel and (p.startswith(own) or not p.startswith(case_dirs))]
        changed = sorted(p for p in mine if p in before and after.get(p) != before[p])
        new = sorted(p for p in mine if p not in before)
        out[cid] = Run(case, r["code"], r["stdout"], r["stderr"], changed, new)
    return out


# --------------------------------------------------------------------------
# assertions
# --------------------------------------------------------------------------

def assert_refused(run: Run, *words: str) -> str:
    """Exit 2, one ``bnrewrite: error:`` line naming ``words``, no traceback, nothing written or changed."""
    assert run.code == 2, (run.code, run.stderr[-3000:])
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, run.stderr
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), line
    for w in words:
        assert w.lower() in line.lower(), (w, line)
    if run.out is not None and not run.case.out_existed:
        assert not run.out.exists(), run.out
    # no OUT, no temp file; a --report asked for records the failure (exit code 2) for CI
    reports = [f for f in run.new_files if f.endswith("report.json")]
    assert [f for f in run.new_files if f not in reports] == [], run.new_files
    for r in reports:
        assert json.loads((run.case.cwd.parent / r).read_text())["error"]["exit_code"] == 2, r
    assert run.changed == [], run.changed  # inputs (and an existing OUT) untouched
    return line


def onnx_outputs(path: Path, inputs: dict) -> list:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(inputs))


def assert_converted(run: Run, custom_objects: dict | None = None, unsafe: bool = False) -> None:
    """Exit 0, quiet, OUT written and equal to the writing framework's predict; nothing else."""
    assert run.code == 0, (run.code, run.stderr[-3000:])
    assert run.stderr.strip() == "", run.stderr
    assert run.out.is_file()
    assert run.new_files == [] and run.changed == [], (run.new_files, run.changed)
    inputs, want = run.case.reference
    if run.out.suffix == ".onnx":
        got = onnx_outputs(run.out, inputs)
    else:
        import keras

        model = keras.saving.load_model(run.out, custom_objects=custom_objects, safe_mode=not unsafe,
                                        compile=False)
        got = model.predict(list(inputs.values())[0], verbose=0)
        got = got if isinstance(got, list) else [got]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(g, w, f"{run.case.argv}")


# --------------------------------------------------------------------------
# input files
# --------------------------------------------------------------------------

def test_missing_input(runs):
    assert_refused(runs["missing_input"], "nope.h5", "no such file")


def test_input_is_directory(runs):
    assert_refused(runs["input_is_directory"], "folder.h5", "directory")


def test_input_by_content_not_suffix(runs):
    """An HDF5 model under another suffix is read by its content (and verified)."""
    run = runs["input_by_content"]
    assert run.code == 0 and run.stderr.strip() == "", run.stderr
    assert run.out.is_file() and run.changed == []


def test_empty_file(runs):
    assert_refused(runs["empty_file"], "empty.h5", "HDF5")


def test_truncated_h5(runs):
    assert_refused(runs["truncated_h5"], "truncated.h5", "HDF5")


def test_corrupt_h5(runs):
    assert_refused(runs["corrupt_h5"], "garbage.h5", "HDF5")


def test_truncated_keras(runs):
    assert_refused(runs["truncated_keras"], "truncated.keras", ".keras archive")


def test_corrupt_keras(runs):
    """A flipped byte inside config.json's compressed data: the zip CRC catches it."""
    assert_refused(runs["corrupt_keras"], "flipped.keras")


def test_weights_only_h5(runs):
    assert_refused(runs["weights_only_h5"], "weights_only.h5", "weights-only", "model.save()")


def test_keras_without_config(runs):
    assert_refused(runs["keras_without_config"], "no_config.keras", "config.json")


def test_keras_without_weights(runs):
    assert_refused(runs["keras_without_weights"], "no_weights.keras", "model.weights.h5")


def test_keras_config_not_json(runs):
    assert_refused(runs["keras_config_not_json"], "config_not_json.keras", "config.json", "JSON")


def test_keras_config_wrong_structure(runs):
    assert_refused(runs["keras_config_wrong_structure"], "config_ints.keras", "malformed config.json")
    assert_refused(runs["keras_config_not_a_model"], "config_list.keras", "not a Keras model config")


def test_h5_config_not_json(runs):
    assert_refused(runs["h5_config_not_json"], "h5_not_json.h5", "model_config", "JSON")


def test_h5_config_wrong_structure(runs):
    assert_refused(runs["h5_config_wrong_structure"], "h5_bad_structure.h5", "malformed model_config")


def test_nonfinite_bn_statistics(runs):
    """convert refuses NaN in a BN's moving mean, naming layer and weight; inspect reports it."""
    assert_refused(runs["nonfinite_bn_statistics"], "nan_bn.h5", "'bn_dense'", "'moving_mean'", "NaN")
    ins = runs["inspect_nonfinite"]
    assert ins.code == 0, ins.stderr
    findings = json.loads(ins.stdout)["findings"]
    assert {(x["code"], x["layer"]) for x in findings if x["code"] == "NONFINITE_STATS"} == {
        ("NONFINITE_STATS", "bn_dense")}


def test_nonfinite_kernel(runs):
    assert_refused(runs["nonfinite_kernel"], "inf_kernel.h5", "'conv'", "'kernel'", "inf")


def test_subclassed_model(runs):
    assert_refused(runs["subclassed_model"], "subclassed.keras", "not a Functional or Sequential")


def test_raw_tf_op(runs):
    """A tf.keras op layer on the allowlist of pure TF functions (tf.math.sin) is rebuilt by
    tf_keras and verified; one outside it is refused (tests/test_frameworks.py)."""
    assert_converted(runs["raw_tf_op"])


def test_unexportable_layer(runs):
    """tf2onnx has no ONNX conversion for Bucketize; the message names the Keras layer."""
    assert_refused(runs["unexportable_layer"], "'disc'", "Discretization", "Bucketize")


def test_verbose_traceback(runs):
    """-v: the same refusal, with the traceback (and still no file written)."""
    run = runs["verbose_traceback"]
    assert run.code == 2
    assert "Traceback" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(ERROR_PREFIX)
    assert run.new_files == [] and run.changed == []


# --------------------------------------------------------------------------
# code in the model file
# --------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["keras", "keras_h5", "tf_keras"])
def test_lambda_refused(runs, tag):
    assert_refused(runs[f"lambda_refused_{tag}"], "'lam'", "Lambda", "--unsafe")


@pytest.mark.parametrize("tag", ["keras", "keras_h5", "tf_keras"])
def test_lambda_unsafe(runs, tag):
    assert_converted(runs[f"lambda_unsafe_{tag}"])


def test_lambda_unsafe_to_keras(runs):
    """tf.keras Lambda bytecode, re-saved by Keras 3: reloads (unsafe) and matches tf_keras."""
    assert_converted(runs["lambda_unsafe_to_keras"], unsafe=True)


def test_lambda_other_python(runs):
    line = assert_refused(runs["lambda_other_python"], "'lam'", "Python")
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in line


def test_lambda_function_missing(runs):
    assert_refused(runs["lambda_function_missing"], "'lam_fn'", "'triple'", "--custom-objects")


def test_lambda_function_provided(runs):
    assert_converted(runs["lambda_function_provided"])


# --------------------------------------------------------------------------
# custom layer classes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["keras", "tf_keras"])
def test_custom_class_refused(runs, tag):
    assert_refused(runs[f"custom_class_refused_{tag}"], "'scale'", "'Scale'", "--custom-objects")


@pytest.mark.parametrize("tag", ["keras", "tf_keras"])
def test_custom_class_provided(runs, tag):
    assert_converted(runs[f"custom_class_provided_{tag}"])


def test_custom_class_wrong_framework(runs):
    assert_refused(runs["custom_class_wrong_framework"], "'scale'", "Keras 3", "tf_keras version")


def test_custom_class_provided_to_keras(runs):
    from bnrewrite.custom import load_custom_objects

    run = runs["custom_class_provided_to_keras"]
    assert_converted(run, custom_objects=load_custom_objects(Path(run.case.argv[run.case.argv.index(
        "--custom-objects") + 1])))


def test_inspect_custom_class(runs):
    """inspect does not refuse an unknown class: it reports it (UNKNOWN_CLASS, a warning)."""
    run = runs["inspect_custom_refused"]
    assert run.code == 0, run.stderr
    assert "UNKNOWN_CLASS" in run.stdout and "--custom-objects" in run.stdout
    run = runs["inspect_custom_provided"]
    assert run.code == 0, run.stderr
    audit = json.loads(run.stdout)
    assert [r["name"] for r in audit["bn_layers"]] == ["bn"]


def test_custom_objects_bad_file(runs):
    assert_refused(runs["custom_objects_missing_file"], "--custom-objects", "nope.py", "no such file")
    line = assert_refused(runs["custom_objects_import_fails"], "--custom-objects", "broken_layers.py",
                          "half-edited file")
    assert "line 6" in line
    assert_refused(runs["custom_objects_without_layers"], "--custom-objects", "no_layers.py")


# --------------------------------------------------------------------------
# output files
# --------------------------------------------------------------------------

def test_unknown_output_suffix(runs):
    assert_refused(runs["unknown_output_suffix"], "out.txt", ".txt")


def test_output_is_input(runs):
    """OUT == IN is refused even with --force; the input is byte-identical afterwards."""
    assert_refused(runs["output_is_input"], "model.h5", "input")


def test_output_exists(runs):
    run = runs["output_exists"]
    assert_refused(run, "out.onnx", "--force")
    assert run.out.read_bytes() == b"an earlier export that must survive\n"


def test_output_exists_force(runs):
    run = runs["output_exists_force"]
    assert run.code == 0, run.stderr
    assert run.out.read_bytes()[:8] != b"an earli"
    import onnx

    onnx.checker.check_model(onnx.load(str(run.out)))
    assert sorted(p.name for p in run.case.cwd.iterdir()) == ["out.onnx"]


def test_output_folder_missing(runs):
    assert_refused(runs["output_folder_missing"], "does not exist")


def test_output_is_directory(runs):
    assert_refused(runs["output_is_directory"], "directory")
    assert runs["output_is_directory"].out.is_dir()


def test_inspect_corrupt(runs):
    assert_refused(runs["inspect_corrupt"], "truncated.h5", "HDF5")


def test_inputs_never_modified(runs):
    """Across every row (refused or converted), no file that existed before changed or vanished."""
    changed = {cid: r.changed for cid, r in runs.items() if r.changed}
    assert changed == {}


# --------------------------------------------------------------------------
# injected faults (in-process)
# --------------------------------------------------------------------------

def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    """The written ONNX differs from Keras (a weight perturbed after export): exit 3, OUT absent,
    no temporary file; the report (asked for) records the failure."""
    import bnrewrite
    from bnrewrite.io import onnx_writer

    real = onnx_writer.to_onnx

    def perturbed(model, opset=17, **kw):
        from onnx import numpy_helper

        proto = real(model, opset=opset, **kw)
        floats = [t for t in proto.graph.initializer if t.data_type == 1]  # FLOAT
        init = max(floats, key=lambda t: int(np.prod(t.dims)))
        arr = numpy_helper.to_array(init).copy() + 0.5
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        return proto

    monkeypatch.setattr(onnx_writer, "to_onnx", perturbed)
    src = tmp_path / "in" / "multi_io.h5"
    src.parent.mkdir()
    shutil.copy(FIXTURES / "multi_io.h5", src)
    digest = sha256(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(bnrewrite.VerificationError) as err:
        bnrewrite.convert(src, out_dir / "model.onnx", report=out_dir / "report.json")
    assert err.value.exit_code == 3
    assert "differs from the original model" in str(err.value)
    assert _listing(out_dir) == ["report.json"]
    assert json.loads((out_dir / "report.json").read_text())["verification"]["ok"] is False
    assert sha256(src) == digest and _listing(src.parent) == ["multi_io.h5"]


def test_failed_verification_cli_exit_3(tmp_path, monkeypatch):
    """The same through the command line: exit 3, one line on stderr."""
    from click.testing import CliRunner

    import bnrewrite.verify as verify
    from bnrewrite.cli import main

    def failing(run, runtime, *a, **kw):
        v = verify.Verification(runtime=runtime, atol=1e-4, rtol=1e-4, batch=4, seed=0)
        v.error = "injected mismatch"
        return v

    monkeypatch.setattr(verify, "verify", failing)
    src = tmp_path / "multi_io.keras"
    shutil.copy(FIXTURES / "multi_io.keras", src)
    result = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "out.onnx")])
    assert result.exit_code == 3, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [ERROR_PREFIX + "verification failed: injected mismatch"]
    assert _listing(tmp_path) == ["multi_io.keras"]


def test_verification_checks_a_second_size_for_open_dimensions():
    """An export right at the size first checked only (e.g. a time length baked into a reshape) is
    caught by the comparison with the original at a second size; a fixed-shape model gets none."""
    import keras

    from bnrewrite.verify import run_model, verify

    x = keras.Input((None, 3), name="seq")
    m = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(4, activation="tanh")(x)))
    v = verify(lambda xs: run_model(m, xs), "test", m, m, reference_label="Keras 3")
    assert v.ok and v.input_shapes == {"seq": [32, 3]}
    assert v.second_size["ok"] and v.second_size["input_shapes"] == {"seq": [64, 3]}

    def baked(xs):
        ys = run_model(m, xs)
        return ys if xs[0].shape[1] == 32 else [y + 1e-2 for y in ys]

    v = verify(baked, "test", m, m, reference_label="Keras 3")
    assert not v.ok and v.second_size["ok"] is False
    assert "differs from the original model at input shapes {'seq': [64, 3]}" in v.failure()

    # wrong at the first size already: that failure stands, no second comparison is made
    v = verify(lambda xs: [y + 1e-2 for y in run_model(m, xs)], "test", m, m, reference_label="Keras 3")
    assert not v.ok and v.second_size is None
    assert v.failure().startswith("output 'output_0' differs from the original model: max abs error")

    x5 = keras.Input((5, 3))
    fixed = keras.Model(x5, keras.layers.Dense(2)(x5))
    v = verify(lambda xs: run_model(fixed, xs), "test", fixed, fixed, reference_label="Keras 3")
    assert v.ok and v.second_size is None


def _cf_conv_bn(tmp_path):
    """Keras 3: channels_first 1x1 Conv2D with 6 filters on 6x6 -> BN(axis=1), random weights and
    statistics. TensorFlow's oneDNN kernels run the eager call of this conv wrong on CPU (graph mode
    and onnxruntime agree with numpy); the numpy forward pass is returned beside the file."""
    import keras

    rng = np.random.default_rng(3)
    i = keras.Input((3, 6, 6), name="img")
    m = keras.Model(i, keras.layers.BatchNormalization(axis=1, epsilon=1e-3)(
        keras.layers.Conv2D(6, 1, data_format="channels_first")(i)))
    m.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in m.get_weights()])
    path = tmp_path / "cf.keras"
    m.save(path)
    (w, b), (g, beta, mu, var) = m.layers[1].get_weights(), m.layers[2].get_weights()

    def numpy_forward(x):
        y = np.einsum("bchw,cf->bfhw", x.astype(np.float64), w[0, 0]) + b[None, :, None, None]
        s = (g / np.sqrt(var + 1e-3))[None, :, None, None]
        return (y - mu[None, :, None, None]) * s + beta[None, :, None, None]

    return m, path, numpy_forward


def test_eager_framework_bug_falls_back_to_graph_mode(tmp_path):
    """Where the framework's eager call disagrees with its own graph mode (model.predict's path), a
    written model that matches graph mode -- and numpy -- is verified against graph mode, and the
    report says so; the ONNX and the .keras output both match numpy."""
    import onnxruntime as ort

    import bnrewrite

    m, src, numpy_forward = _cf_conv_bn(tmp_path)
    x = np.random.default_rng(0).normal(size=(4, 3, 6, 6)).astype(np.float32)
    eager_off = np.abs(np.asarray(m(x, training=False)) - numpy_forward(x)).max()
    for out in ("out.onnx", "out.keras"):
        rep = bnrewrite.convert(src, tmp_path / out)
        v = rep.verification
        assert v["ok"] and v["batch_independent"]
        # the fallback is taken exactly when this machine's eager call is wrong
        assert (v["reference_mode"] == "graph") == bool(eager_off > 1e-3), (v["reference_mode"], eager_off)
        if v["reference_mode"] == "graph":
            assert v["eager_graph_max_abs"] > 1e-3
    sess = ort.InferenceSession(str(tmp_path / "out.onnx"))
    assert_close(sess.run(None, {"img": x})[0], numpy_forward(x), "ONNX vs numpy")
    import keras
    import tensorflow as tf

    back = keras.saving.load_model(tmp_path / "out.keras", compile=False)
    assert_close(tf.function(lambda a: back(a, training=False))(x), numpy_forward(x), ".keras (graph) vs numpy")


def test_graph_mode_fallback_does_not_accept_a_wrong_model(tmp_path):
    """Negative case: the same model, its export off by 1e-2 -- neither eager nor graph mode
    matches it, so the failure stands (exit 3 through convert's error)."""
    from bnrewrite.verify import keras_run, run_model, verify

    m, _, _ = _cf_conv_bn(tmp_path)

    def wrong(xs):
        return [y + 1e-2 for y in run_model(m, xs, graph=True)]

    v = verify(wrong, "test", m, m, reference_label="Keras 3")
    assert not v.ok and v.reference_mode == "eager"
    assert v.failure().startswith("output 'output_0' differs from the original model")
    v = verify(keras_run(m), "test", m, m, reference_label="Keras 3")  # like with like: always fine
    assert v.ok


@pytest.mark.parametrize("fw", ["keras", "tf_keras"])
def test_grouped_conv_exports_to_onnx(tmp_path, fw):
    """Keras runs grouped convolutions through XLA, which tf2onnx cannot export (tf2onnx alone fails on
    this model); bnrewrite has them traced as TF's plain op: ONNX Convs with their group, the BN folded
    into one, equal to the framework's own predict; the layers are left as they were."""
    import importlib

    import onnx
    import onnxruntime as ort
    from models import randomize_bn

    import bnrewrite

    K = importlib.import_module(fw)
    i = K.Input((8, 8, 4))
    x = K.layers.Conv2D(6, 3, groups=2, padding="same", name="gconv")(i)
    x = K.layers.BatchNormalization(name="bn")(x)
    m = K.Model(i, K.layers.Conv2D(12, 3, strides=2, groups=6, activation="relu", name="dw")(x))
    randomize_bn(m, K, np.random.default_rng(3))
    src, out = tmp_path / ("g.keras" if fw == "keras" else "g.h5"), tmp_path / "g.onnx"
    m.save(src)
    rep = bnrewrite.convert(src, out)
    assert next(p for p in rep.passes if p["name"] == "fold_bn")["changed"] == ["bn"]
    proto = onnx.load(out)
    groups = sorted(a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    assert groups == [2, 6] and not any("PartitionedCall" in n.op_type for n in proto.graph.node)
    x = np.random.default_rng(4).normal(size=(3, 8, 8, 4)).astype("float32")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.predict(x, verbose=0), atol=1e-4, rtol=1e-4)
    from bnrewrite.io.onnx_writer import to_onnx

    to_onnx(m)  # the override lives only while tf2onnx traces
    assert not any(k in vars(l) for l in m.layers for k in ("convolution_op", "_jit_compiled_convolution_op"))


def test_channels_first_conv3d_keras3_exports_to_onnx(tmp_path):
    """Keras 3 runs a channels_first Conv3D through XLA too: exported as a plain Conv, BN folded,
    equal to Keras's predict."""
    import keras as K
    import onnxruntime as ort
    from models import randomize_bn

    import bnrewrite

    i = K.Input((3, 4, 6, 6))
    x = K.layers.Conv3D(4, 3, data_format="channels_first", padding="same", name="c3")(i)
    m = K.Model(i, K.layers.BatchNormalization(axis=1, name="bn")(x))
    randomize_bn(m, K, np.random.default_rng(5))
    m.save(tmp_path / "c.keras")
    rep = bnrewrite.convert(tmp_path / "c.keras", tmp_path / "c.onnx")
    assert next(p for p in rep.passes if p["name"] == "fold_bn")["changed"] == ["bn"]
    x = np.random.default_rng(6).normal(size=(2, 3, 4, 6, 6)).astype("float32")
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.predict(x, verbose=0), atol=1e-4, rtol=1e-4)


def _app_layers_model(K):
    """Keras 3's own application layers (InceptionResNetV2's CustomScaleLayer, ConvNeXt's LayerScale and
    StochasticDepth) around a Conv2D -> BN with randomized statistics."""
    from keras.src.applications.convnext import LayerScale, StochasticDepth
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    from models import randomize_bn

    i = K.Input((8, 8, 4))
    r = K.layers.BatchNormalization(name="bn")(K.layers.Conv2D(4, 3, padding="same")(i))
    x = CustomScaleLayer(0.17, name="scale")([i, r])
    x = LayerScale(0.5, 4, name="ls")(x)
    m = K.Model(i, StochasticDepth(0.2, name="sd")(x))
    randomize_bn(m, K, np.random.default_rng(7))
    m.get_layer("ls").set_weights([np.linspace(0.5, 2.0, 4).astype("float32")])
    return m


def test_keras_application_layers_convert(tmp_path):
    """Layers keras.applications define for themselves (InceptionResNetV2, ConvNeXt) are Keras's code and
    pure tensor ops: rebuilt from the module the file names, exported and equal to Keras's predict."""
    import keras as K
    import onnxruntime as ort

    import bnrewrite

    m = _app_layers_model(K)
    m.save(tmp_path / "a.keras")
    rep = bnrewrite.convert(tmp_path / "a.keras", tmp_path / "a.onnx")
    assert next(p for p in rep.passes if p["name"] == "fold_bn")["changed"] == ["bn"]
    x = np.random.default_rng(8).normal(size=(3, 8, 8, 4)).astype("float32")
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.predict(x, verbose=0), atol=1e-4, rtol=1e-4)
    from bnrewrite.audit import SAFETY_CODES

    audit = bnrewrite.inspect(tmp_path / "a.keras")  # the audit's scan allows them too
    assert [r["name"] for r in audit.bn_layers] == ["bn"]
    assert not [f for f in audit.findings if f["code"] in SAFETY_CODES], audit.findings


@pytest.mark.parametrize("module", ["keras.src.applications.resnet", "mypkg.layers", None])
def test_keras_application_layer_from_another_module_refused(tmp_path, module):
    """An application layer's name is allowed only with the module that defines it: the same name from
    any other module (or none) is an unknown class, exit 2, nothing written."""
    import keras as K

    import bnrewrite

    _app_layers_model(K).save(tmp_path / "a.keras")

    def edit(name, data):
        if name != "config.json":
            return data
        cfg = json.loads(data)
        for lc in cfg["config"]["layers"]:
            if lc["class_name"] == "CustomScaleLayer":
                lc["module"] = module
        return json.dumps(cfg).encode()

    bad = _rezip(tmp_path / "a.keras", tmp_path / "bad.keras", edit)
    with pytest.raises(bnrewrite.UnsupportedModelError) as err:
        bnrewrite.convert(bad, tmp_path / "b.onnx")
    assert err.value.exit_code == 2 and not (tmp_path / "b.onnx").exists()
    assert "CustomScaleLayer" in str(err.value)


def test_tf_keras_application_layer_and_tf_initializer_convert(tmp_path):
    """tf_keras writes InceptionResNetV2's scale layer as 'Custom>CustomScaleLayer' and
    tf.constant_initializer under TensorFlow's own module (EfficientNetV2's head): both are data.
    ONNX (rebuilt by tf_keras) and .keras (migrated to Keras 3's CustomScaleLayer) equal tf_keras's predict."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf_keras as K
    from models import randomize_bn
    from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    import bnrewrite

    i = K.Input((6, 6, 4))
    r = K.layers.BatchNormalization(name="bn")(K.layers.Conv2D(4, 3, padding="same")(i))
    x = CustomScaleLayer(0.17, name="scale")([i, r])
    m = K.Model(i, K.layers.Dense(3, bias_initializer=tf.constant_initializer(0.5), name="head")(x))
    randomize_bn(m, K, np.random.default_rng(9))
    m.save(tmp_path / "a.h5")
    x = np.random.default_rng(10).normal(size=(3, 6, 6, 4)).astype("float32")
    want = m.predict(x, verbose=0)
    bnrewrite.convert(tmp_path / "a.h5", tmp_path / "a.onnx")
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], want, atol=1e-4, rtol=1e-4)
    rep = bnrewrite.convert(tmp_path / "a.h5", tmp_path / "a.keras")
    assert rep.verification["ok"]
    import keras

    back = keras.saving.load_model(tmp_path / "a.keras", compile=False)
    assert type(back.get_layer("scale")).__module__ == "keras.src.applications.inception_resnet_v2"
    np.testing.assert_allclose(back.predict(x, verbose=0), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("class_name, module, config, ok", [
    ("Dense", "keras.layers", {"bias_initializer": {"module": "tensorflow.python.ops.init_ops_v2",
                                                    "class_name": "Constant", "config": {"value": 0}}}, True),
    ("Dense", "keras.layers", {"bias_initializer": {"module": "tensorflow.python.ops.gen_io_ops",
                                                    "class_name": "Constant", "config": {}}}, False),
    ("Dense", "keras.layers", {"bias_initializer": {"module": "tensorflow.python.ops.init_ops_v2",
                                                    "class_name": "WriteFile", "config": {}}}, False),
    ("Dense", "kerasevil.layers", {}, False),  # a prefix of 'keras' is not Keras
    ("Dense", "tf_keras_x", {}, False),
    ("CustomScaleLayer", "keras.src.applications.inception_resnet_v2", {"scale": 0.1}, True),
    ("CustomScaleLayer", None, {"scale": 0.1}, False),  # Keras 3's name: only with its module
    ("CustomScaleLayer", "mypkg", {"scale": 0.1}, False),
    ("Custom>CustomScaleLayer", None, {"scale": 0.1}, True),  # tf_keras .h5: the registered name
    ("LayerScale", "keras.src.applications.resnet", {}, False),
])
def test_module_rules(class_name, module, config, ok):
    """The data-only check: which modules a layer or a nested object may name."""
    from bnrewrite.errors import UnsupportedModelError
    from bnrewrite.io.layercheck import check_layer

    if ok:
        check_layer(class_name, {"name": "x", **config}, layer_name="x", module=module)
    else:
        with pytest.raises(UnsupportedModelError):
            check_layer(class_name, {"name": "x", **config}, layer_name="x", module=module)


@pytest.mark.parametrize("fw", ["keras", "tf_keras"])
def test_exact_gelu_exports_to_onnx(tmp_path, fw):
    """Exact GELU is 0.5 x erfc(-x/sqrt 2) in TensorFlow; tf2onnx maps no Erfc (tf2onnx alone fails):
    written as 1 - Erf, equal to the framework's predict, including far in the tails."""
    import importlib

    import onnx
    import onnxruntime as ort
    from models import randomize_bn

    import bnrewrite

    K = importlib.import_module(fw)
    i = K.Input((6, 6, 4))
    x = K.layers.BatchNormalization(name="bn")(K.layers.Conv2D(8, 3, padding="same")(i))
    m = K.Model(i, K.layers.Dense(5, activation="gelu")(K.layers.Activation("gelu")(x)))
    randomize_bn(m, K, np.random.default_rng(11))
    src = tmp_path / ("g.keras" if fw == "keras" else "g.h5")
    m.save(src)
    bnrewrite.convert(src, tmp_path / "g.onnx")
    ops = {n.op_type for n in onnx.load(tmp_path / "g.onnx").graph.node}
    assert "Erf" in ops and "Erfc" not in ops
    x = np.random.default_rng(12).normal(0, 4, size=(4, 6, 6, 4)).astype("float32")
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.predict(x, verbose=0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("padding", ["causal", "valid"])
def test_grouped_conv1d_keras3_exports_to_onnx(tmp_path, padding):
    """Keras 3's Conv1D calls its XLA convolution in its own call: while tf2onnx traces, the same steps
    run around the plain op; ONNX Convs with their group, the BN folded, equal to Keras's predict."""
    import keras as K
    import onnx
    import onnxruntime as ort
    from models import randomize_bn

    import bnrewrite

    i = K.Input((9, 4))
    x = K.layers.Conv1D(6, 3, groups=2, padding=padding, dilation_rate=2, name="gconv")(i)
    x = K.layers.BatchNormalization(name="bn")(x)
    m = K.Model(i, K.layers.Conv1D(4, 2, groups=2, activation="relu", name="g2")(x))
    randomize_bn(m, K, np.random.default_rng(5))
    src, out = tmp_path / "g.keras", tmp_path / "g.onnx"
    m.save(src)
    rep = bnrewrite.convert(src, out)
    assert next(p for p in rep.passes if p["name"] == "fold_bn")["changed"] == ["bn"]
    proto = onnx.load(out)
    groups = sorted(a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    assert groups == [2, 2]
    x = np.random.default_rng(6).normal(size=(3, 9, 4)).astype("float32")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.predict(x, verbose=0), atol=1e-4, rtol=1e-4)
    from bnrewrite.io.onnx_writer import to_onnx

    to_onnx(m)  # the replacement lives only while tf2onnx traces
    assert not any("call" in vars(lay) for lay in m.layers)


@pytest.mark.parametrize("fw", ["keras", "tf_keras"])
def test_conv_transpose_output_padding_exports_to_onnx(tmp_path, fw):
    """Conv2D/3DTranspose with ``output_padding`` and 'valid' padding: tf2onnx writes negative pads,
    which onnxruntime refuses (tf2onnx alone fails); bnrewrite writes them as ONNX output padding.
    The file holds no negative pad and equals the framework's predict, BN folded."""
    import importlib

    import onnx
    import onnxruntime as ort
    from models import randomize_bn

    import bnrewrite

    K = importlib.import_module(fw)
    i = K.Input((5, 5, 2))
    x = K.layers.Conv2DTranspose(3, 3, strides=2, output_padding=1, name="up")(i)
    x = K.layers.BatchNormalization(name="bn")(x)
    x = K.layers.Conv2DTranspose(3, 3, strides=3, output_padding=(2, 1), name="up2")(x)
    x = K.layers.Reshape((1, 38, 37, 3))(x)
    m = K.Model(i, K.layers.Conv3DTranspose(2, 2, strides=(1, 2, 2), output_padding=(0, 1, 0), name="up3")(x))
    randomize_bn(m, K, np.random.default_rng(13))
    src, out = tmp_path / ("t.keras" if fw == "keras" else "t.h5"), tmp_path / "t.onnx"
    m.save(src)
    rep = bnrewrite.convert(src, out)
    assert next(p for p in rep.passes if p["name"] == "fold_bn")["changed"] == ["bn"]
    pads = [list(a.ints) for n in onnx.load(out).graph.node if n.op_type == "ConvTranspose"
            for a in n.attribute if a.name == "pads"]
    assert len(pads) == 3 and min(min(p) for p in pads) >= 0, pads
    x = np.random.default_rng(14).normal(size=(2, 5, 5, 2)).astype("float32")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, m.predict(x, verbose=0), atol=1e-4, rtol=1e-4)


def eeg_square(x):
    """ShallowConvNet's square activation, as vlawhern/arl-eegmodels writes it (a TF op in a function)."""
    import tensorflow as tf

    return tf.square(x)


def test_onnx_export_falls_back_when_tf2onnx_transposes_wrongly(tmp_path):
    """ShallowConvNet (vlawhern/arl-eegmodels) in Keras 3: tf2onnx's transpose optimizer writes a graph
    whose AveragePool onnxruntime cannot run (tf2onnx alone fails). Verification rejects it, bnrewrite
    exports again without that optimizer, and the file equals Keras's predict; the report says so."""
    import keras
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    from models import randomize_bn

    import bnrewrite

    L = keras.layers
    i = keras.Input((8, 96, 1))
    x = L.Conv2D(8, (1, 13))(i)
    x = L.Conv2D(8, (8, 1), use_bias=False)(x)
    x = L.BatchNormalization(epsilon=1e-05, momentum=0.9)(x)
    x = L.AveragePooling2D(pool_size=(1, 35), strides=(1, 7))(L.Activation(eeg_square)(x))
    m = keras.Model(i, L.Dense(4)(L.Flatten()(x)))
    randomize_bn(m, keras, np.random.default_rng(3))
    src, out = tmp_path / "shallow.keras", tmp_path / "shallow.onnx"
    m.save(src)
    xs = np.random.default_rng(4).normal(size=(2, 8, 96, 1)).astype("float32")
    alone, _ = tf2onnx.convert.from_keras(m, input_signature=[tf.TensorSpec((None, 8, 96, 1), tf.float32)], opset=17)
    with pytest.raises(Exception, match="AveragePool"):  # the bug this works around is still there
        ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {
            alone.graph.input[0].name: xs})
    rep = bnrewrite.convert(src, out, custom_objects={"eeg_square": eeg_square})
    assert any("transpose optimizer" in n for n in rep.notes), rep.notes
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: xs})[0], m.predict(xs, verbose=0),
                               atol=1e-4, rtol=1e-4)


def test_conv_transpose_pads_rule():
    """The rewrite itself: a negative total becomes output padding, the rest is left as it was
    (a non-negative split, and a negative begin with a non-negative total, which TF never writes)."""
    from onnx import helper

    from bnrewrite.io.onnx_writer import _conv_transpose_pads

    def node(pads, **kw):
        return helper.make_node("ConvTranspose", ["x", "w"], ["y"], pads=pads, **kw)

    g = helper.make_graph([node([0, 0, -1, -2]), node([0, 1, 0, 1]), node([-1, 0, 2, 0]),
                           node([0, 0, -1, 0], output_padding=[1, 0])], "g", [], [])
    assert _conv_transpose_pads(g) == 2
    got = [{a.name: list(a.ints) for a in n.attribute} for n in g.node]
    assert got[0] == {"pads": [0, 0, 0, 0], "output_padding": [1, 2]}
    assert got[1] == {"pads": [0, 1, 0, 1]}
    assert got[2] == {"pads": [-1, 0, 2, 0]}
    assert got[3] == {"pads": [0, 0, 0, 0], "output_padding": [2, 0]}


def test_keras3_augmentation_and_newer_layers_convert(tmp_path):
    """Keras 3's newer augmentation layers (the identity at inference), AutoContrast, RMSNormalization
    and adaptive pooling are pure tensor ops: read, exported to ONNX and written as .keras, equal to
    Keras's predict. Keras 3's own .h5 writer cannot copy RandAugment's (or RandomHue's) config:
    refused in one line naming the first such layer, nothing written."""
    import keras as K
    import onnxruntime as ort
    from models import randomize_bn

    import bnrewrite

    i = K.Input((16, 16, 3))
    x = i
    for layer in (K.layers.RandAugment(), K.layers.AugMix(), K.layers.RandomHue(0.5, name="hue"),
                  K.layers.RandomErasing(), K.layers.MixUp(), K.layers.RandomGrayscale(),
                  K.layers.AutoContrast()):
        x = layer(x)
    x = K.layers.BatchNormalization(name="bn")(K.layers.Conv2D(4, 3, padding="same")(x))
    x = K.layers.RMSNormalization()(x)
    m = K.Model(i, K.layers.Flatten()(K.layers.AdaptiveAveragePooling2D(3)(x)))
    randomize_bn(m, K, np.random.default_rng(15))
    m.save(tmp_path / "a.keras")
    x = np.random.default_rng(16).uniform(0, 255, size=(2, 16, 16, 3)).astype("float32")
    want = m.predict(x, verbose=0)
    rep = bnrewrite.convert(tmp_path / "a.keras", tmp_path / "a.onnx")
    assert next(p for p in rep.passes if p["name"] == "fold_bn")["changed"] == ["bn"]
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], want, atol=1e-4, rtol=1e-4)
    bnrewrite.convert(tmp_path / "a.keras", tmp_path / "b.keras")
    back = K.saving.load_model(tmp_path / "b.keras", compile=False)
    np.testing.assert_allclose(back.predict(x, verbose=0), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(bnrewrite.UnsupportedModelError, match=r"cannot be written as \.h5 \(layer 'rand_augment'.*\.onnx"):
        bnrewrite.convert(tmp_path / "a.keras", tmp_path / "c.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "a.onnx", "b.keras"]


def test_keras3_int8_quantized_model_converts(tmp_path):
    """A Keras 3 model after ``model.quantize('int8')`` names its quantization config objects
    (keras.quantizers, data only): read; the BN after the int8 Dense is not folded (no float kernel:
    the reason is in the report) and the ONNX output equals Keras's predict."""
    import keras as K
    import onnxruntime as ort
    from models import randomize_bn

    import bnrewrite

    i = K.Input((10,))
    x = K.layers.BatchNormalization(name="bn")(K.layers.Dense(8, name="dq")(i))
    m = K.Model(i, K.layers.Dense(3, name="head")(x))
    randomize_bn(m, K, np.random.default_rng(17))
    m.quantize("int8")
    m.save(tmp_path / "q.keras")
    rep = bnrewrite.convert(tmp_path / "q.keras", tmp_path / "q.onnx")
    fold = next(p for p in rep.passes if p["name"] == "fold_bn")
    assert fold["changed"] == [] and any("float kernel" in s["reason"] for s in fold["skipped"]), fold
    x = np.random.default_rng(18).normal(size=(4, 10)).astype("float32")
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], m.predict(x, verbose=0),
                               atol=1e-4, rtol=1e-4)


def test_bfloat16_compute_refused_for_onnx(tmp_path):
    """A layer computing in bfloat16 (mixed_bfloat16 policy) exports to ops onnxruntime's CPU kernels
    do not run: refused before writing (exit 2, one line naming the layer), not a verification error;
    the .keras output still converts."""
    import keras as K
    from models import randomize_bn

    import bnrewrite

    i = K.Input((8, 8, 3))
    x = K.layers.Conv2D(4, 3, dtype="mixed_bfloat16", name="c16")(i)
    m = K.Model(i, K.layers.BatchNormalization(name="bn")(K.layers.Activation("linear", dtype="float32")(x)))
    randomize_bn(m, K, np.random.default_rng(19))
    m.save(tmp_path / "b.keras")
    with pytest.raises(bnrewrite.UnsupportedModelError, match=r"compute in bfloat16 \(e.g. 'c16'") as err:
        bnrewrite.convert(tmp_path / "b.keras", tmp_path / "b.onnx")
    assert err.value.exit_code == 2 and not (tmp_path / "b.onnx").exists()
    assert bnrewrite.convert(tmp_path / "b.keras", tmp_path / "c.keras").verification["ok"]


def test_keras3_h5_is_verified_against_keras3s_own_reading(tmp_path):
    """A Keras 3 .h5 is verified against Keras 3's legacy-H5 reading of the file (it once fell back to
    bnrewrite's own rebuild for every such file: an import moved in Keras 3.15)."""
    import keras as K
    from models import randomize_bn

    import bnrewrite

    i = K.Input((6, 6, 3))
    m = K.Model(i, K.layers.BatchNormalization(name="bn")(K.layers.Conv2D(4, 3, name="c")(i)))
    randomize_bn(m, K, np.random.default_rng(21))
    m.save(tmp_path / "k.h5")
    v = bnrewrite.convert(tmp_path / "k.h5", tmp_path / "k.onnx").verification
    assert v["ok"] and v["no_reference"] is None and v["reference"].startswith("Keras 3 reading"), v


def test_crash_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """A crash half-way through writing OUT (disk full): the exception surfaces, OUT does not
    exist, the temporary file is gone, an existing OUT is untouched."""
    import onnx

    import bnrewrite

    def half_then_crash(proto, path, *a, **kw):
        Path(path).write_bytes(proto.SerializeToString()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", half_then_crash)
    src = tmp_path / "training_true.h5"
    shutil.copy(FIXTURES / "training_true.h5", src)
    digest = sha256(src)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous good export\n")
    with pytest.raises(OSError, match="No space left"):
        bnrewrite.convert(src, out, force=True)
    assert out.read_bytes() == b"previous good export\n"
    assert _listing(tmp_path) == ["model.onnx", "training_true.h5"]
    assert sha256(src) == digest

    from click.testing import CliRunner

    from bnrewrite.cli import main

    result = CliRunner().invoke(main, ["convert", str(src), str(out), "--force"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX) and "No space left" in lines[0], lines
    assert out.read_bytes() == b"previous good export\n"
    assert _listing(tmp_path) == ["model.onnx", "training_true.h5"]


def test_nonfinite_bn_statistics_with_calibration(tmp_path):
    """NaN in a BN's moving mean is no obstacle when calibration replaces the statistics:
    the conversion verifies and the re-estimated layer is listed in the report."""
    import bnrewrite

    src = _h5_edit(FIXTURES / "multi_io.h5", tmp_path / "nan_bn.h5",
                   _poke("model_weights/bn_dense/bn_dense/moving_mean:0", (1,), np.nan))
    with pytest.raises(bnrewrite.InputError, match="'bn_dense'.*'moving_mean'"):
        bnrewrite.convert(src, tmp_path / "refused.onnx")
    rng = np.random.default_rng(0)
    data = {"image": rng.normal(size=(64, 12, 12, 3)).astype("float32"),
            "features": rng.normal(size=(64, 10)).astype("float32")}
    rep = bnrewrite.convert(src, tmp_path / "model.onnx", calibration=data)
    assert rep.ok and rep.verification["ok"]
    assert "bn_dense" in {r["layer"] for r in rep.calibration["layers"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "nan_bn.h5"]


def test_no_independent_reference_fails_verification_unless_allowed(tmp_path, monkeypatch):
    """When the writing framework cannot rebuild the original, the output could only be compared with
    bnrewrite's own rebuild, which cannot find bnrewrite's bugs: exit 3, nothing written, unless
    ``allow_no_reference`` (CLI ``--allow-no-reference``), which writes it and reports why."""
    from click.testing import CliRunner

    import bnrewrite
    import bnrewrite.reference as reference
    from bnrewrite.cli import main

    def broken(original, **kw):
        raise reference.NoReference("tf_keras could not rebuild the original model: simulated")

    monkeypatch.setattr(reference, "build_reference", broken)
    src = ROOT / "fixtures" / "lone_bn.h5"
    with pytest.raises(bnrewrite.VerificationError, match="no independent reference.*simulated") as err:
        bnrewrite.convert(src, tmp_path / "o.onnx")
    assert err.value.exit_code == 3 and not (tmp_path / "o.onnx").exists()
    rep = bnrewrite.convert(src, tmp_path / "o.onnx", allow_no_reference=True)
    assert rep.verification["ok"] and "simulated" in rep.verification["no_reference"]
    res = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "c.onnx"), "--allow-no-reference", "-q"])
    assert res.exit_code == 0 and (tmp_path / "c.onnx").exists(), res.output
    res = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "d.onnx"), "-q"])
    assert res.exit_code == 3 and not (tmp_path / "d.onnx").exists(), res.output
