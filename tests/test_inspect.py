"""``bnrewrite inspect`` and ``bnrewrite.audit`` (issue 5): BN rows, finding codes, exit codes.

Most checks use the Python API (one TensorFlow import for the whole module);
the CLI runs in a subprocess only twice with TensorFlow (plus once for a
missing file, which fails before TensorFlow is imported); other CLI checks use
click's in-process runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnrewrite.audit import MAX_GAIN, Audit, audit, compare, inspect
from bnrewrite.errors import EXIT_BAD_INPUT, EXIT_STRICT, InputError

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
ALL_CODES = {"STALE_STATS", "TIMEDISTRIBUTED_BN", "TRAINING_BAKED_IN", "FROZEN_BN",
             "NONFINITE_STATS", "DEGENERATE_VARIANCE"}
ROW_KEYS = {"name", "path", "wrapper", "axis", "momentum", "epsilon", "center", "scale", "trainable",
            "training", "calls", "moving_mean_min", "moving_mean_max", "moving_variance_min",
            "moving_variance_max", "channels"}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bnrewrite", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def codes(a: Audit) -> dict[str, set[str]]:
    return a.codes()


def row(a: Audit, name: str) -> dict:
    (r,) = [r for r in a.bn_layers if r["name"] == name]
    return r


def severities(a: Audit) -> dict[tuple[str, str], str]:
    return {(f["code"], f["layer"]): f["severity"] for f in a.findings}


# --------------------------------------------------------------------------
# models built here
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def healthy_path(tmp_path_factory):
    """tf_keras .h5: trained-looking random stats, trainable, no training flag; a shared BN,
    a BN with center=False/scale=False, and a small variance that is still fine (gain ~30)."""
    import tf_keras as K

    L = K.layers
    rng = np.random.default_rng(5)
    a = L.Input((6,), name="a")
    b = L.Input((6,), name="b")
    x = L.Dense(4, name="fc")(a)
    x = L.BatchNormalization(name="bn_fc")(x)
    shared = L.BatchNormalization(name="bn_shared")
    y1, y2 = shared(L.Dense(5, name="fa")(x)), shared(L.Dense(5, name="fb")(b))
    z = L.BatchNormalization(name="bn_plain", center=False, scale=False)(L.Add(name="add")([y1, y2]))
    z = L.BatchNormalization(name="bn_smallvar")(z)
    model = K.Model([a, b], z, name="healthy")
    for lay in model.layers:
        if isinstance(lay, L.BatchNormalization):
            ws = lay.get_weights()
            n = ws[0].shape
            new = [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.5, n)][: len(ws) - 2]
            var = np.full(n, 1e-4) if lay.name == "bn_smallvar" else rng.uniform(0.5, 2, n)
            lay.set_weights([w.astype("float32") for w in new + [rng.normal(0, 0.5, n), var]])
    path = tmp_path_factory.mktemp("inspect") / "healthy.h5"
    model.save(path)
    return path


#: per layer: (gamma, beta, moving_mean, moving_variance, epsilon) changes from a sane default
BAD = {
    "bn_nan_mean": dict(mean=[0.1, np.nan, 0.2]),
    "bn_inf_gamma": dict(gamma=[1.0, np.inf, 1.0]),
    "bn_nan_var": dict(var=[1.0, 1.0, np.nan]),
    "bn_neg_var": dict(var=[1.0, -0.5, 1.0]),
    "bn_zero_var": dict(var=[1.0, 0.0, 1.0]),
    "bn_loud": dict(var=[1e-9, 1.0, 1.0], epsilon=1e-8),  # gain 1/sqrt(1.1e-8) ~ 9.5e3
    "bn_quiet_gamma": dict(var=[1e-9, 1.0, 1.0], epsilon=1e-8, gamma=[1e-3, 1.0, 1.0]),  # gain ~9.5
    "bn_sane": dict(),
}


@pytest.fixture(scope="module")
def bad_stats_path(tmp_path_factory):
    """Keras 3 .keras with the statistics of ``BAD``; bn_sane also has one call with training=True."""
    import keras

    L = keras.layers
    x = inp = L.Input((3,), name="x")
    layers = {}
    for name, spec in BAD.items():
        layers[name] = L.BatchNormalization(name=name, epsilon=spec.get("epsilon", 1e-3))
        x = layers[name](x, training=True) if name == "bn_sane" else layers[name](x)
    x = layers["bn_sane"](x)  # second call of the same layer, no flag
    model = keras.Model(inp, x, name="bad_stats")
    for name, spec in BAD.items():
        layers[name].set_weights([
            np.asarray(spec.get(k, d), dtype="float32")
            for k, d in (("gamma", [1.0, 0.9, 1.1]), ("beta", [0.0, 0.1, -0.1]),
                         ("mean", [0.3, -0.2, 0.1]), ("var", [1.2, 0.8, 1.0]))
        ])
    path = tmp_path_factory.mktemp("inspect") / "bad_stats.keras"
    model.save(path)
    return path


# --------------------------------------------------------------------------
# the fixtures
# --------------------------------------------------------------------------

def test_cli_json_strict_td_bn_stale():
    """Subprocess 1: --json prints exactly the JSON, --strict exits 4 on warnings."""
    r = cli("inspect", str(FIX / "td_bn_stale.h5"), "--json", "--strict")
    assert r.returncode == EXIT_STRICT, r.stderr
    data = json.loads(r.stdout)  # nothing but the JSON on stdout
    assert {"bn_layers", "findings", "schema_version", "versions", "input"} <= set(data)
    assert data["schema_version"] == 1 and data["input"]["sha256"]
    assert [b["name"] for b in data["bn_layers"]] == ["td_bn", "bn_trained"]
    assert all(set(b) == ROW_KEYS for b in data["bn_layers"])
    for f in data["findings"]:
        assert set(f) == {"code", "layer", "severity", "message", "hint"}
        assert f["message"] and f["hint"]
    got = {(f["layer"], f["code"], f["severity"]) for f in data["findings"]}
    assert got == {("td_bn", "TIMEDISTRIBUTED_BN", "warning"), ("td_bn", "STALE_STATS", "warning")}
    hints = {f["code"]: f["hint"] for f in data["findings"]}
    assert "--calibration" in hints["STALE_STATS"]
    assert "--keep-timedistributed" in hints["TIMEDISTRIBUTED_BN"]
    td = data["bn_layers"][0]
    assert td["wrapper"] == "TimeDistributed" and td["path"] == ""
    assert (td["moving_mean_min"], td["moving_mean_max"]) == (0.0, 0.0)
    assert (td["moving_variance_min"], td["moving_variance_max"]) == (1.0, 1.0)
    assert td["channels"] == 8 and td["axis"] == 1 and td["epsilon"] == pytest.approx(1e-3)
    assert td["trainable"] is True and td["training"] is None
    assert data["bn_layers"][1]["wrapper"] is None


def test_cli_strict_info_only_exits_0_and_prints_table():
    """Subprocess 2: transfer_frozen.h5 has info findings only: --strict exits 0; human output."""
    r = cli("inspect", str(FIX / "transfer_frozen.h5"), "--strict")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for word in ("base_bn1", "base_bn2", "FROZEN_BN", "--calibration", "trainable"):
        assert word in out
    assert "2 info" in out and "warning" not in out.lower() and "error" not in out.lower()


def test_cli_missing_file_exit_2():
    """Fails before TensorFlow is imported: one line on stderr, nothing on stdout."""
    r = cli("inspect", str(FIX / "does_not_exist.h5"), "--json")
    assert r.returncode == EXIT_BAD_INPUT
    assert json.loads(r.stdout)["error"]["exit_code"] == EXIT_BAD_INPUT  # a record CI can archive
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr


@pytest.mark.parametrize("what", ["corrupt", "suffix", "directory"])
def test_cli_bad_input_exit_2(tmp_path, what):
    from click.testing import CliRunner

    from bnrewrite.cli import main

    if what == "corrupt":
        bad = tmp_path / "bad.h5"
        bad.write_bytes(b"\x89HDF not really" * 10)
    elif what == "suffix":
        bad = tmp_path / "model.txt"
        bad.write_text("hello")
    else:
        bad = tmp_path
    r = CliRunner().invoke(main, ["inspect", str(bad), "--json", "--strict"])
    assert r.exit_code == EXIT_BAD_INPUT, r.output
    assert json.loads(r.stdout)["error"]["exit_code"] == EXIT_BAD_INPUT
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnrewrite: error:")


def test_td_bn_stale_api():
    a = inspect(FIX / "td_bn_stale.h5")
    assert codes(a) == {"td_bn": {"TIMEDISTRIBUTED_BN", "STALE_STATS"}, "bn_trained": set()}
    assert a.worst_severity == "warning"


def test_training_true():
    a = inspect(FIX / "training_true.h5")
    assert codes(a) == {"bn_training": {"TRAINING_BAKED_IN"}, "bn_ok": set()}
    assert severities(a) == {("TRAINING_BAKED_IN", "bn_training"): "error"}
    assert row(a, "bn_training")["training"] is True
    assert row(a, "bn_ok")["training"] is None
    assert a.worst_severity == "error"
    (f,) = a.findings
    assert "inference mode" in f["hint"]


@pytest.mark.parametrize("name", ["transfer_frozen.h5", "transfer_frozen.keras"])
def test_transfer_frozen(name):
    a = inspect(FIX / name)
    assert codes(a) == {"base_bn1": {"FROZEN_BN"}, "base_bn2": {"FROZEN_BN"}}
    assert {f["severity"] for f in a.findings} == {"info"}
    assert a.worst_severity == "info" and not a.has("warning")
    for n in ("base_bn1", "base_bn2"):
        r = row(a, n)
        assert r["path"] == "base" and r["trainable"] is False and r["training"] is False
        assert r["channels"] == 8
    assert all("--calibration" in f["hint"] for f in a.findings)


def test_multi_io_keras_is_clean():
    a = inspect(FIX / "multi_io.keras")
    assert codes(a) == {"bn_conv": set(), "bn_dwconv": set(), "bn_dense": set()}
    assert a.findings == [] and a.worst_severity is None
    assert all(r["axis"] == -1 and r["channels"] == 6 for r in a.bn_layers)


def test_lone_bn_default_stats_are_stale():
    """A BN with its initial statistics is flagged, whichever format wrote it."""
    for name in ("lone_bn.h5", "lone_bn.keras"):
        assert codes(inspect(FIX / name)) == {"bn": {"STALE_STATS"}}


def test_rows_match_weights():
    from bnrewrite.io import read_model

    mg = read_model(FIX / "td_bn_stale.h5")
    a = audit(mg)
    w = mg.layer("bn_trained").weights
    r = row(a, "bn_trained")
    assert r["moving_mean_min"] == pytest.approx(float(w["moving_mean"].min()))
    assert r["moving_mean_max"] == pytest.approx(float(w["moving_mean"].max()))
    assert r["moving_variance_min"] == pytest.approx(float(w["moving_variance"].min()))
    assert r["moving_variance_max"] == pytest.approx(float(w["moving_variance"].max()))
    assert (r["axis"], r["momentum"], r["center"], r["scale"], r["calls"]) == (2, 0.99, True, True, 1)


# --------------------------------------------------------------------------
# built models
# --------------------------------------------------------------------------

def test_healthy_model_has_no_findings(healthy_path):
    a = inspect(healthy_path)
    assert codes(a) == {n: set() for n in ("bn_fc", "bn_shared", "bn_plain", "bn_smallvar")}
    assert a.findings == [] and a.worst_severity is None and not a.has("info")
    shared = row(a, "bn_shared")
    assert shared["calls"] == 2 and shared["training"] == [None, None]
    plain = row(a, "bn_plain")
    assert (plain["center"], plain["scale"], plain["channels"]) == (False, False, 5)


def test_healthy_model_cli_strict_exit_0(healthy_path):
    from click.testing import CliRunner

    from bnrewrite.cli import main

    r = CliRunner().invoke(main, ["inspect", str(healthy_path), "--strict"])
    assert r.exit_code == 0, r.output
    assert "no findings" in r.stdout and "bn_shared" in r.stdout


def test_bad_stats(bad_stats_path):
    a = inspect(bad_stats_path)
    assert codes(a) == {
        "bn_nan_mean": {"NONFINITE_STATS"},
        "bn_inf_gamma": {"NONFINITE_STATS"},
        "bn_nan_var": {"NONFINITE_STATS"},
        "bn_neg_var": {"DEGENERATE_VARIANCE"},
        "bn_zero_var": {"DEGENERATE_VARIANCE"},
        "bn_loud": {"DEGENERATE_VARIANCE"},
        "bn_quiet_gamma": set(),
        "bn_sane": {"TRAINING_BAKED_IN"},
    }
    sev = severities(a)
    assert sev[("NONFINITE_STATS", "bn_nan_mean")] == "error"
    assert sev[("DEGENERATE_VARIANCE", "bn_neg_var")] == "error"
    assert sev[("DEGENERATE_VARIANCE", "bn_zero_var")] == "warning"
    assert sev[("DEGENERATE_VARIANCE", "bn_loud")] == "warning"
    assert str(int(MAX_GAIN)) in next(f["message"] for f in a.findings if f["layer"] == "bn_loud")
    assert row(a, "bn_sane")["training"] == [True, None]
    assert "call(s) 0 of 2" in next(f["message"] for f in a.findings if f["layer"] == "bn_sane")
    # NaN in the statistics shows as NaN in the row, and as a string in the JSON
    assert np.isnan(row(a, "bn_nan_mean")["moving_mean_min"])
    text = json.dumps(a.to_dict(), allow_nan=False)
    d = {r["name"]: r for r in json.loads(text)["bn_layers"]}
    assert d["bn_nan_mean"]["moving_mean_max"] == "nan"
    assert d["bn_neg_var"]["moving_variance_min"] == pytest.approx(-0.5)


def test_bad_stats_cli_strict_exit_4(bad_stats_path):
    from click.testing import CliRunner

    from bnrewrite.cli import main

    r = CliRunner().invoke(main, ["inspect", str(bad_stats_path), "--strict", "-q"])
    assert r.exit_code == EXIT_STRICT
    assert r.stdout == ""  # -q


def test_missing_file_api():
    with pytest.raises(InputError):
        inspect(FIX / "nope.keras")


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------

def _f(code, layer, severity="warning"):
    return {"code": code, "layer": layer, "severity": severity, "message": f"{code} {layer}", "hint": "h"}


def _rows(*names):
    return [{"name": n} for n in names]


def test_compare():
    before = Audit(
        bn_layers=_rows("td", "tr", "kept", "gone", "cal", "frozen"),
        findings=[_f("TIMEDISTRIBUTED_BN", "td"), _f("STALE_STATS", "td"),
                  _f("TRAINING_BAKED_IN", "tr", "error"), _f("DEGENERATE_VARIANCE", "kept"),
                  _f("NONFINITE_STATS", "gone", "error"), _f("STALE_STATS", "cal"),
                  _f("FROZEN_BN", "frozen", "info")],
    )
    # after: td unwrapped (still a BN, stats unchanged), tr/gone/cal folded away,
    # kept recalibrated in place, a new warning appeared
    after = Audit(bn_layers=_rows("td", "kept", "frozen", "other"),
                  findings=[_f("STALE_STATS", "td"), _f("FROZEN_BN", "frozen", "info"),
                            _f("FROZEN_BN", "kept", "info"), _f("DEGENERATE_VARIANCE", "other")])
    got = compare(before, after, calibrated=["cal"])
    key = lambda fs: {(f["code"], f["layer"]) for f in fs}  # noqa: E731
    assert key(got["fixed"]) == {("TIMEDISTRIBUTED_BN", "td"), ("TRAINING_BAKED_IN", "tr"),
                                 ("DEGENERATE_VARIANCE", "kept"), ("STALE_STATS", "cal")}
    assert key(got["remaining"]) == {("STALE_STATS", "td"), ("NONFINITE_STATS", "gone")}
    assert key(got["new"]) == {("DEGENERATE_VARIANCE", "other")}
    for fs in got.values():
        assert all(set(f) == {"code", "layer", "message"} for f in fs)
    # without calibration, folding stale statistics away does not fix them
    got = compare(before, after)
    assert ("STALE_STATS", "cal") in key(got["remaining"])
    # info findings count when asked
    got = compare(before, Audit(bn_layers=_rows("frozen")), min_severity="info")
    assert ("FROZEN_BN", "frozen") in key(got["fixed"])


def test_compare_identical_audit():
    a = inspect(FIX / "td_bn_stale.h5")
    got = compare(a, a)
    assert got["fixed"] == [] and got["new"] == []
    assert {(f["code"], f["layer"]) for f in got["remaining"]} == {
        ("TIMEDISTRIBUTED_BN", "td_bn"), ("STALE_STATS", "td_bn")}


def test_missing_statistics_are_an_error_finding(tmp_path):
    """A BN whose moving mean is not in the file (a partial file; before bnrewrite read layer names
    holding "/", every BN of the ST model zoo's YAMNet looked like this) is reported, not shown as a
    row of dashes with "no findings"."""
    import h5py
    import tf_keras

    x = tf_keras.Input((3,))
    tf_keras.Model(x, tf_keras.layers.BatchNormalization(name="bn")(x)).save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        g = f["model_weights/bn"]
        del g["bn/moving_mean:0"]
        g.attrs["weight_names"] = [n for n in g.attrs["weight_names"] if "moving_mean" not in str(n)]
    found = [f for f in inspect(tmp_path / "m.h5").findings if f["code"] == "MISSING_STATS"]
    assert len(found) == 1 and found[0]["severity"] == "error" and "no moving_mean" in found[0]["message"]
