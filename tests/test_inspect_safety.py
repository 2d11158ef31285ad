"""``inspect`` reports unsafe content as findings with stable codes, at any depth, without
running anything -- so it can gate a CI pipeline. Files are forged as JSON/HDF5 data (the
payloads here would write a file if run: the tests also check that nothing was written)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import bnrewrite
import hostile_files as hf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _codes(audit):
    return {(f["code"], f["layer"]) for f in audit.findings}


def _edit_h5_config(src: Path, dst: Path, edit) -> Path:
    import shutil

    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg)
        f.attrs["model_config"] = json.dumps(cfg).encode()
    return dst


def _edit_keras_config(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    edit(cfg)
    members["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return dst


def _layers(cfg):
    c = cfg["config"]
    return c if isinstance(c, list) else c["layers"]


def test_lambda_bytecode_reported_with_bn_rows(tmp_path):
    """tf.keras Lambda bytecode: a finding (not exit 2), and the BN rows are still audited
    (reading an .h5 is JSON + arrays: nothing runs)."""
    marker = tmp_path / "ran.txt"

    def add_lambda(cfg):
        import base64
        import marshal

        code = compile(f"lambda x: (open({str(marker)!r}, 'w').write('x'), x)[1]", "<lambda>", "eval")
        fn_code = [c for c in code.co_consts if hasattr(c, "co_code")][0]
        layers = _layers(cfg)
        last = layers[-1]
        layers.append({"class_name": "Lambda", "name": "evil", "config": {
            "name": "evil", "trainable": True, "dtype": "float32",
            "function": [base64.b64encode(marshal.dumps(fn_code)).decode(), None, None],
            "function_type": "lambda", "module": "__main__", "output_shape": None, "output_shape_type": "raw",
            "output_shape_module": None, "arguments": {}},
            "inbound_nodes": [[[last["name"], 0, 0, {}]]]})
        cfg["config"]["output_layers"] = [["evil", 0, 0]]

    path = _edit_h5_config(FIXTURES / "lone_bn.h5", tmp_path / "lambda.h5", add_lambda)
    audit = bnrewrite.inspect(path)
    assert ("UNSAFE_LAMBDA_CODE", "evil") in _codes(audit)
    assert [r["name"] for r in audit.bn_layers], "BN rows still audited"
    assert audit.worst_severity == "error"
    assert not marker.exists()


def test_nested_and_tf_op_and_vocabulary_findings(tmp_path):
    """Every unsafe layer is reported, at any depth (inside a nested model), not just the first."""

    def forge(cfg):
        layers = _layers(cfg)
        first = layers[0]["name"] if "name" in layers[0] else layers[0]["config"]["name"]
        nested = {"class_name": "Functional", "name": "inner", "config": {
            "name": "inner", "layers": [
                {"class_name": "InputLayer", "name": "in2", "config": {"batch_input_shape": [None, 4], "name": "in2"},
                 "inbound_nodes": []},
                {"class_name": "TFOpLambda", "name": "tf.io.write_file", "config": {
                    "name": "tf.io.write_file", "trainable": True, "dtype": "float32", "function": "io.write_file"},
                 "inbound_nodes": [["in2", 0, 0, {"filename": "/tmp/x", "name": None}]]}],
            "input_layers": [["in2", 0, 0]], "output_layers": [["tf.io.write_file", 0, 0]]},
            "inbound_nodes": [[[first, 0, 0, {}]]]}
        vocab = {"class_name": "StringLookup", "name": "lookup", "config": {
            "name": "lookup", "vocabulary": "/etc/passwd"}, "inbound_nodes": [[[first, 0, 0, {}]]]}
        layers.extend([nested, vocab])

    path = _edit_h5_config(FIXTURES / "multi_io.h5", tmp_path / "forged.h5", forge)
    codes = _codes(bnrewrite.inspect(path))
    assert ("UNSAFE_TF_OP", "inner/tf.io.write_file") in codes, codes
    assert any(c == "UNSAFE_LAYER" and layer == "lookup" for c, layer in codes), codes


def test_lambda_naming_a_class_in_keras_archive(tmp_path):
    """Keras 3 .keras: a Lambda whose 'function' is the class keras.layers.TFSMLayer (the
    gadget that loads a SavedModel) is reported; nothing is deserialized."""

    def forge(cfg):
        layers = _layers(cfg)
        last = layers[-1]
        layers.append({"module": "keras.layers", "class_name": "Lambda", "name": "gadget", "config": {
            "name": "gadget", "function": {"module": "keras.layers", "class_name": "TFSMLayer",
                                            "config": {"filepath": str(tmp_path / "sm")}, "registered_name": None},
            "arguments": {}}, "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {
                "shape": [None, 4], "dtype": "float32", "keras_history": [last["name"], 0, 0]}}], "kwargs": {}}]})

    path = _edit_keras_config(FIXTURES / "lone_bn.keras", tmp_path / "gadget.keras", forge)
    audit = bnrewrite.inspect(path)
    assert any(c in ("UNSAFE_FUNCTION", "UNSAFE_LAYER") and layer == "gadget" for c, layer in _codes(audit))
    with pytest.raises(bnrewrite.InputError):
        bnrewrite.convert(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "sm").exists()


@pytest.mark.parametrize("make,code", [
    (hf.external_link, "UNSAFE_HDF5_EXTERNAL_LINK"),
    (hf.external_storage, "UNSAFE_HDF5_EXTERNAL_STORAGE"),
    (hf.virtual_dataset, "UNSAFE_HDF5_VIRTUAL_DATASET"),
    (hf.soft_link, "UNSAFE_HDF5_SOFT_LINK"),
    (hf.declared_1gb, "OVERSIZED_DATA"),
])
def test_hdf5_structure_findings(tmp_path, make, code):
    audit = bnrewrite.inspect(make(tmp_path))
    assert code in {f["code"] for f in audit.findings}, audit.findings
    assert audit.bn_layers == [] and audit.source["bn_audit"].startswith("skipped")
    assert hf.SECRET.decode() not in json.dumps(audit.to_dict())


def test_cli_strict_gates_on_unsafe(tmp_path):
    from click.testing import CliRunner

    from bnrewrite.cli import main

    path = hf.external_link(tmp_path)
    result = CliRunner().invoke(main, ["inspect", str(path), "--json", "--strict"])
    assert result.exit_code == 4, result.output
    findings = json.loads(result.stdout)["findings"]
    assert any(f["code"] == "UNSAFE_HDF5_EXTERNAL_LINK" for f in findings)
