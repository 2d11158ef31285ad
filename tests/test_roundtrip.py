"""Round trips through bnrewrite: read -> graph -> Keras 3 / ONNX, compared with
the predictions of the framework that wrote each model (tf_keras for .h5,
Keras 3 for .keras), recorded in tests/models.py when the model was built."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import models
from conftest import ATOL, assert_close

SHARED_IDS = [m for m in models.MODEL_IDS if m.split("-", 1)[1] in models.SHARED_KINDS]
NESTED_IDS = [m for m in models.MODEL_IDS if m.split("-", 1)[1] in models.NESTED_KINDS]


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _keras_predict(model, b: models.Built, alt=False):
    xs = b.feed(alt)
    return _as_list(model.predict(xs if len(xs) > 1 else xs[0], verbose=0))


def _run_onnx(path, b: models.Built, alt=True):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: arr for name, arr in (b.inputs_alt if alt else b.inputs).items()}
    return sess, sess.run(None, feed)


# ---------------------------------------------------------------- the models themselves

def test_reference_bn_is_not_identity(built):
    """Guard for the tests below: every BN was randomized, so dropping one changes outputs."""
    assert set(built.bn_weights) >= set(built.bn_after)
    for name, w in built.bn_weights.items():
        assert {"moving_mean", "moving_variance"} <= set(w), name
        assert np.any(np.abs(w["moving_mean"]) > 0.05) and np.all(w["moving_variance"] >= 0.5), name
        if "gamma" in w:
            assert np.all(w["gamma"] != 1), name
        if "beta" in w:
            assert np.any(np.abs(w["beta"]) > 0.05), name
    assert built.outputs and all(np.all(np.isfinite(o)) for o in built.outputs)
    assert built.outputs[0].shape[0] == models.BATCH
    assert built.outputs_alt[0].shape[0] == models.BATCH_ALT


# ---------------------------------------------------------------- graph structure

def test_graph_one_node_per_layer_call(built, get_graph):
    mg = get_graph(built.id)
    g = mg.graph
    assert set(g.nodes) == built.expected_nodes
    assert g.number_of_nodes() == len(built.expected_nodes)
    assert mg.inputs == built.input_names
    assert len(mg.outputs) == len(built.outputs)
    assert [tuple(o) for o in mg.outputs] == built.expected_outputs
    for node, data in g.nodes(data=True):
        layer = data["layer"]
        assert layer.name == node.split("#")[0]
        assert isinstance(layer.config, dict) and isinstance(data["kwargs"], dict)
        assert isinstance(data["path"], tuple)
        ports = sorted(d["port"] for _, _, d in g.in_edges(node, data=True))
        assert ports == list(range(len(ports))), (node, ports)
    for u, v, d in g.edges(data=True):
        assert isinstance(d["out"], int) and isinstance(d["port"], int), (u, v, d)
    # the graph is a DAG whose sources are exactly the inputs
    assert {n for n in g.nodes if g.in_degree(n) == 0} == set(built.input_names)


def test_graph_bn_weights_as_written(built, get_graph):
    mg = get_graph(built.id)
    for name, written in built.bn_weights.items():
        layer = mg.graph.nodes[name]["layer"]
        assert layer.class_name == "BatchNormalization"
        assert set(layer.weights) == set(written), (name, sorted(layer.weights))
        for key, want in written.items():
            np.testing.assert_array_equal(np.asarray(layer.weights[key]), want, err_msg=f"{name}/{key}")
    for bn, producer_class in built.bn_after.items():
        (producer, _), = [(u, d) for u, _, d in mg.graph.in_edges(bn, data=True)]
        assert mg.graph.nodes[producer]["layer"].class_name == producer_class, (bn, producer)


@pytest.mark.parametrize("model_id", SHARED_IDS)
def test_graph_shared_layer_two_nodes_one_layer(model_id, get_model, get_graph):
    b, mg = get_model(model_id), get_graph(model_id)
    assert b.shared
    for name, nodes in b.shared.items():
        calls = [n for n, d in mg.graph.nodes(data=True) if d["layer"].name == name]
        assert sorted(calls) == sorted(nodes) and len(calls) == 2
        first, second = (mg.graph.nodes[n]["layer"] for n in nodes)
        assert first is second  # one Layer object: a weight change applies to both calls
        ins = [sorted((u, d["out"]) for u, _, d in mg.graph.in_edges(n, data=True)) for n in nodes]
        assert ins[0] != ins[1]  # the two calls read different tensors
    # a shared BN's weights exist once, on the shared Layer, as written
    shared_bns = [n for n in b.shared if n in b.bn_weights]
    assert shared_bns
    for name in shared_bns:
        layer = mg.graph.nodes[b.shared[name][1]]["layer"]
        np.testing.assert_array_equal(layer.weights["moving_mean"], b.bn_weights[name]["moving_mean"])


@pytest.mark.parametrize("model_id", NESTED_IDS)
def test_graph_nested_flattened_with_path_and_training(model_id, get_model, get_graph):
    b, mg = get_model(model_id), get_graph(model_id)
    g = mg.graph
    # the nested models are flattened: no node for the models themselves
    assert b.nested_models
    for nested in b.nested_models:
        assert nested not in g and f"{nested}#1" not in g
    for node, data in g.nodes(data=True):
        assert data["path"] == b.nested_paths.get(node, ()), node
    assert any(p for p in b.nested_paths.values())
    # a nested call's training=False reaches the BNs inside; nothing else sets training=True
    assert any(flag is False for flag in b.training.values())
    for node, flag in b.training.items():
        kwargs = g.nodes[node]["kwargs"]
        assert g.nodes[node]["layer"].class_name == "BatchNormalization"
        if flag is None:
            assert not kwargs.get("training"), (node, kwargs)
        else:
            assert kwargs.get("training") is flag, (node, kwargs)


def test_build_model_matches_framework(built, get_graph):
    """The graph rebuilt by its framework (tf_keras for tf_keras files, Keras 3 for Keras 3
    files) predicts what the writing framework predicted."""
    from bnrewrite.build import build_model

    mg = get_graph(built.id)
    assert mg.framework == ("tf_keras" if built.id.startswith("tk") else "keras")
    model = build_model(mg)
    assert [t.name for t in model.inputs] == built.input_names
    got = _keras_predict(model, built)
    assert len(got) == len(built.outputs)
    for i, (g, w) in enumerate(zip(got, built.outputs)):
        assert_close(g, w, f"{built.id} output {i}")


# ---------------------------------------------------------------- convert -> ONNX

def test_convert_onnx_report(built, get_converted):
    report, dst = get_converted(built.id, ".onnx")
    assert dst.is_file() and dst.stat().st_size > 0
    v = report.verification
    assert v["ok"] is True, v
    assert math.isfinite(v["max_abs"]) and 0 <= v["max_abs"] <= ATOL, v
    assert math.isfinite(v["max_rel"]), v
    d = report.to_dict()
    json.dumps(d)  # JSON-serializable
    assert d["verification"]["ok"] is True


def test_onnx_runtime_matches_framework(built, get_converted):
    """Run the .onnx ourselves, at another batch size (dynamic batch dimension)."""
    import onnx

    _, dst = get_converted(built.id, ".onnx")
    onnx.checker.check_model(str(dst))
    sess, got = _run_onnx(dst, built, alt=True)
    inputs = sess.get_inputs()
    assert sorted(i.name for i in inputs) == sorted(built.input_names)
    for i in inputs:
        assert not isinstance(i.shape[0], int), f"batch dim of {i.name} is fixed: {i.shape}"
    assert len(got) == len(built.outputs_alt)
    for k, (g, w) in enumerate(zip(got, built.outputs_alt)):
        assert g.shape[0] == models.BATCH_ALT
        assert_close(g, w, f"{built.id} onnx output {k}")


# ---------------------------------------------------------------- convert -> .keras / .h5

def test_convert_keras_matches_framework(built, get_converted):
    import keras

    report, dst = get_converted(built.id, ".keras")
    assert report.verification["ok"] is True, report.verification
    model = keras.models.load_model(dst, compile=False)
    assert [t.name for t in model.inputs] == built.input_names
    got = _keras_predict(model, built)
    assert len(got) == len(built.outputs)
    for i, (g, w) in enumerate(zip(got, built.outputs)):
        assert_close(g, w, f"{built.id} .keras output {i}")


PLAIN_KERAS_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras

    data = np.load(sys.argv[1])
    result, names = {}, []
    for i, path in enumerate(sys.argv[3:]):
        model = keras.models.load_model(path)
        names.append([t.name for t in model.inputs])
        xs = [data[f"m{i}__{n}"] for n in names[-1]]
        out = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
        for k, o in enumerate(out if isinstance(out, (list, tuple)) else [out]):
            result[f"m{i}__{k}"] = np.asarray(o)
    np.savez(sys.argv[2], **result)
    print(json.dumps({"names": names, "bnrewrite_imported": "bnrewrite" in sys.modules}))
    """
)


def test_keras_output_loads_in_plain_keras_process(get_model, get_converted, tmp_path):
    """The .keras files load with plain keras.models.load_model, without bnrewrite."""
    ids = ["tk-nested", "k3-shared_multi"]
    builts = [get_model(m) for m in ids]
    paths = [get_converted(m, ".keras")[1] for m in ids]
    arrays = {f"m{i}__{n}": b.inputs[n] for i, b in enumerate(builts) for n in b.input_names}
    np.savez(tmp_path / "in.npz", **arrays)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS_CHILD, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"),
         *map(str, paths)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["bnrewrite_imported"] is False
    assert info["names"] == [b.input_names for b in builts]
    got = np.load(tmp_path / "out.npz")
    for i, b in enumerate(builts):
        assert sum(k.startswith(f"m{i}__") for k in got.files) == len(b.outputs)
        for k, want in enumerate(b.outputs):
            assert_close(got[f"m{i}__{k}"], want, f"{b.id} (plain keras) output {k}")


def test_convert_h5_output(get_model, get_converted):
    """.h5 output of a tf_keras model with a nested frozen base stays a tf_keras file."""
    import h5py
    import tf_keras

    b = get_model("tk-nested")
    report, dst = get_converted(b.id, ".h5")
    assert report.verification["ok"] is True, report.verification
    with h5py.File(dst, "r") as f:
        assert "model_config" in f.attrs
        version = f.attrs["keras_version"]
        version = version.decode() if isinstance(version, bytes) else str(version)
        assert version.startswith("2."), version
    model = tf_keras.models.load_model(dst, compile=False)
    got = _keras_predict(model, b)
    for i, (g, w) in enumerate(zip(got, b.outputs)):
        assert_close(g, w, f"{b.id} .h5 output {i}")


# ---------------------------------------------------------------- options and errors

def test_convert_without_folding_same_outputs(get_model, out_dir):
    """fold=False exports the BNs as they are; still the framework's outputs."""
    import bnrewrite

    b = get_model("k3-shared_multi")
    dst = out_dir / "k3_shared_multi.nofold.onnx"
    report = bnrewrite.convert(b.path, dst, fold=False)
    assert report.verification["ok"] is True
    _, got = _run_onnx(dst, b, alt=True)
    for k, (g, w) in enumerate(zip(got, b.outputs_alt)):
        assert_close(g, w, f"{b.id} no-fold onnx output {k}")


def test_convert_refuses_existing_dst_unless_force(get_model, tmp_path):
    import bnrewrite
    from bnrewrite.errors import InputError

    b = get_model("k3-conv_bn")
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"precious")
    with pytest.raises(InputError) as err:
        bnrewrite.convert(b.path, dst)
    assert err.value.exit_code == 2
    assert dst.read_bytes() == b"precious"
    report = bnrewrite.convert(b.path, dst, force=True)
    assert report.verification["ok"] is True
    _, got = _run_onnx(dst, b, alt=True)
    assert_close(got[0], b.outputs_alt[0], "forced overwrite")


def test_convert_missing_input(tmp_path):
    import bnrewrite
    from bnrewrite.errors import InputError

    dst = tmp_path / "out.onnx"
    with pytest.raises(InputError) as err:
        bnrewrite.convert(tmp_path / "does_not_exist.h5", dst)
    assert err.value.exit_code == 2
    assert "does_not_exist.h5" in str(err.value)
    assert not dst.exists()


@pytest.mark.parametrize("name", ["out.txt", "out.pb", "out"])
def test_convert_unknown_output_suffix(name, get_model, tmp_path):
    import bnrewrite
    from bnrewrite.errors import InputError

    b = get_model("tk-conv_bn")
    dst = tmp_path / name
    with pytest.raises(InputError) as err:
        bnrewrite.convert(b.path, dst)
    assert err.value.exit_code == 2
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []  # nothing written at all


def test_convert_corrupt_input(tmp_path):
    import bnrewrite
    from bnrewrite.errors import InputError

    src = tmp_path / "junk.h5"
    src.write_bytes(b"this is not hdf5" * 10)
    dst = tmp_path / "out.onnx"
    with pytest.raises(InputError) as err:
        bnrewrite.convert(src, dst)
    assert err.value.exit_code == 2
    assert not dst.exists()


def test_convert_zero_tolerance_fails_or_is_exact(get_model, tmp_path):
    """With atol=rtol=0 any float difference must be reported as a verification
    failure (exit code 3) carrying its figures; only an exact match may pass."""
    import bnrewrite
    from bnrewrite.errors import VerificationError

    b = get_model("tk-conv_bn")
    try:
        report = bnrewrite.convert(b.path, tmp_path / "out.onnx", atol=0.0, rtol=0.0)
    except VerificationError as e:
        assert e.exit_code == 3
        assert e.report is not None
        v = e.report.verification
        assert v["ok"] is False and v["max_abs"] > 0, v
    else:
        assert report.verification["ok"] is True
        assert report.verification["max_abs"] == 0
