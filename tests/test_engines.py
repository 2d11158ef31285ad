"""Sharded calibration (``engine=``, ``shards=``; ``--engine``, ``--shards``).

Two claims are checked. The statistics are right: against numpy (a float64
layer-by-layer AdaBN of a Dense stack; the variance of a lone BN at batch 2,
ddof=1). And they do not depend on where batches ran: any shard count, local
or on Ray actors, gives the single-shard result to float64 rounding (the issue
asks for <= 1e-9 relative; batches are never split and moments are merged in
batch order, so the bits are in fact equal, and that is what is asserted).

Ray tests share one local Ray instance of 2 CPUs (the engine reuses a Ray the
caller started and leaves it running); one CLI test lets the engine start and
stop its own. They are skipped only when the ``ray`` extra is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

import models
from conftest import ROOT
from test_cli import assert_one_line_error, run_cli

FIX = ROOT / "fixtures"


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def two_level(tmp_path_factory):
    """x(6) -> Dense(8) -> bn1 -> relu -> Dense(5) -> bn2 -> Dense(3), random BN statistics, as .keras."""
    m = models.dense_stack(models.framework("keras"), np.random.default_rng(3))
    path = tmp_path_factory.mktemp("engines") / "two_level.keras"
    m.save(path)
    W = {n: m.get_layer(n).get_weights() for n in ("d1", "d2", "bn1")}
    data = np.random.default_rng(4).normal(1.5, 2.0, (1000, 6)).astype("float32")
    return path, W, data


def numpy_adabn(W, data):
    """The two levels' (mean, var) in float64 numpy, layer by layer, ddof=1."""
    h1 = data.astype(np.float64) @ W["d1"][0] + W["d1"][1]
    m1, v1 = h1.mean(0), h1.var(0, ddof=1)
    g, b = W["bn1"][0], W["bn1"][1]
    h2 = np.maximum((h1 - m1) / np.sqrt(v1 + 1e-3) * g + b, 0) @ W["d2"][0] + W["d2"][1]
    return {"bn1": (m1, v1), "bn2": (h2.mean(0), h2.var(0, ddof=1))}


def run(path, data, **kw):
    import bnrewrite
    from bnrewrite.calibration import calibrate

    mg = bnrewrite.load(path)
    rep = calibrate(mg, data, **kw)
    stats = {r["layer"]: tuple(np.array(mg.layer(r["layer"]).weights[k]) for k in ("moving_mean", "moving_variance"))
             for r in rep["layers"]}
    return stats, rep


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        for g, w in zip(got[name], want[name]):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=0, err_msg=name)
            np.testing.assert_array_equal(g, w, err_msg=f"{name}: not the same bits")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs for this module's Ray tests (its files in a short temp folder;
    its auth token in the environment, so Ray writes no ~/.ray/auth_token)."""
    import secrets

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))  # before Ray is imported
    ray = pytest.importorskip("ray", reason='the ray extra is not installed (pip install "bnrewrite[ray]")')
    tmp = tempfile.mkdtemp(prefix="bnr", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", _temp_dir=tmp,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# ----------------------------------------------------------------- local shards
def test_local_shards_match_numpy_and_one_shard(two_level):
    path, W, data = two_level
    want = numpy_adabn(W, data)
    one, rep1 = run(path, data, batch_size=32)
    for name, (mean, var) in want.items():
        np.testing.assert_allclose(one[name][0], mean, rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(one[name][1], var, rtol=1e-4, atol=1e-4, err_msg=name)
    for shards in (2, 3, 7):
        where = []
        got, rep = run(path, data, batch_size=32, shards=shards, progress=lambda d, t, w: where.append((d, t, w)))
        assert_same(got, one)
        counts = [s["samples"] for s in rep["shards"]]
        assert len(counts) == shards and sum(counts) == 1000 and max(counts) - min(counts) <= 32
        # progress: levels and batches, the total known from the array's size
        assert where[0][1] == 64 and where[-1][:2] == (64, 64)
        assert {w["level"] for _, _, w in where} == {1, 2} and where[-1][2]["batch"] == 32
    assert rep1["engine"] == "local" and rep1["shards"][0]["samples"] == 1000


def test_more_shards_than_batches(two_level):
    path, _, data = two_level
    one, _ = run(path, data[:70], batch_size=32)
    got, rep = run(path, data[:70], batch_size=32, shards=5)
    assert_same(got, one)
    assert [s["samples"] for s in rep["shards"]] == [32, 32, 6, 0, 0]


def test_lone_bn_batch_2_sharded_matches_numpy_ddof1():
    data = np.load(FIX / "lone_bn_calib.npy")[:999]
    one, _ = run(FIX / "lone_bn.h5", data, batch_size=2)
    got, rep = run(FIX / "lone_bn.h5", data, batch_size=2, shards=3)
    assert_same(got, one)
    x = data.astype(np.float64)
    np.testing.assert_allclose(got["bn"][0], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(got["bn"][1], x.var(0, ddof=1), rtol=1e-6)
    assert [s["batches"] for s in rep["shards"]] == [167, 167, 166]


def test_engine_names():
    from bnrewrite.engines import parse_engine
    from bnrewrite.errors import InputError

    assert parse_engine("local") == ("local", None)
    assert parse_engine("ray") == ("ray", None)
    assert parse_engine("ray:10.0.0.5:6379") == ("ray", "10.0.0.5:6379")
    assert parse_engine("ray:auto") == ("ray", "auto")
    for bad in ("spark", "local:host", ""):
        with pytest.raises(InputError):
            parse_engine(bad)


def test_cli_bad_engine_and_shards(tmp_path):
    for args, word in ((["--engine", "spark"], "unknown calibration engine"), (["--shards", "0"], "--shards")):
        proc = run_cli("convert", FIX / "lone_bn.h5", "out.onnx", "--calibration", FIX / "lone_bn_calib.npy",
                       *args, cwd=tmp_path)
        assert_one_line_error(proc)
        assert word in proc.stderr
        assert not (tmp_path / "out.onnx").exists()


def test_ray_extra_missing_is_one_clear_error(two_level, monkeypatch):
    from bnrewrite.errors import InputError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    path, _, data = two_level
    with pytest.raises(InputError, match=r'pip install "bnrewrite\[ray\]"'):
        run(path, data, engine="ray", shards=2)


# ----------------------------------------------------------------- Ray
def test_ray_two_level_same_bits(two_level, ray_cluster):
    path, W, data = two_level
    one, _ = run(path, data, batch_size=32)
    got, rep = run(path, data, batch_size=32, engine="ray", shards=3)
    assert_same(got, one)
    want = numpy_adabn(W, data)
    np.testing.assert_allclose(got["bn2"][1], want["bn2"][1], rtol=1e-4, atol=1e-4)
    assert rep["engine"] == "ray"
    assert [s["samples"] for s in rep["shards"]] == [352, 328, 320]
    pids = {s["pid"] for s in rep["shards"]}
    assert len(pids) == 3 and os.getpid() not in pids  # three actor processes, not this one
    assert ray_cluster.is_initialized()  # a Ray the caller started is left running


def test_ray_lone_bn_batch_2(ray_cluster):
    data = np.load(FIX / "lone_bn_calib.npy")[:400]
    got, _ = run(FIX / "lone_bn.h5", data, batch_size=2, engine="ray", shards=3)
    x = data.astype(np.float64)
    one, _ = run(FIX / "lone_bn.h5", data, batch_size=2)
    assert_same(got, one)
    np.testing.assert_allclose(got["bn"][1], x.var(0, ddof=1), rtol=1e-6)


def test_ray_shard_error_keeps_its_class_and_cleans_spill(two_level, ray_cluster, tmp_path):
    """A shard's InputError (its spill cap) reaches the caller as InputError; every spill folder is gone."""
    from bnrewrite.errors import InputError

    path, _, data = two_level
    with pytest.raises(InputError, match="max-spill-gb"):
        run(path, data, batch_size=32, engine="ray", shards=2, cache_mb=0, max_spill_gb=1e-6, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ray_spill_then_same_bits(two_level, ray_cluster, tmp_path):
    path, _, data = two_level
    one, _ = run(path, data, batch_size=32)
    got, rep = run(path, data, batch_size=32, engine="ray", shards=2, cache_mb=0, cache_dir=tmp_path)
    assert_same(got, one)
    assert all(s["spilled_bytes"] > 0 for s in rep["shards"])
    assert list(tmp_path.iterdir()) == []


def test_cli_ray_starts_and_stops_its_own_ray(tmp_path):
    """``--engine ray --shards 3`` through the CLI: the same statistics as one process, per-shard counts
    in the report, and nothing left in TMPDIR (Ray's session files included)."""
    pytest.importorskip("ray", reason='the ray extra is not installed (pip install "bnrewrite[ray]")')
    tmp = tempfile.mkdtemp(prefix="bnr", dir="/tmp")
    try:
        data = np.random.default_rng(5).normal(3, 2, (300, 1)).astype("float32")
        np.save(tmp_path / "d.npy", data)
        reports = {}
        home = tmp_path / "home"
        home.mkdir()
        for name, extra in (("local", []), ("ray", ["--engine", "ray", "--shards", "3"])):
            env_tmp = {"TMPDIR": tmp, "HOME": str(home)}
            proc = run_cli("convert", FIX / "lone_bn.h5", f"{name}.keras", "--no-fold",
                           "--calibration", "d.npy", "--batch-size", "8", "--report", f"{name}.json",
                           *extra, cwd=tmp_path, env_extra=env_tmp, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            reports[name] = json.loads((tmp_path / f"{name}.json").read_text())["calibration"]
        local, ray_ = reports["local"], reports["ray"]
        assert ray_["per_channel"] == local["per_channel"]
        assert ray_["engine"] == "ray" and [s["samples"] for s in ray_["shards"]] == [104, 100, 96]
        x = data.astype(np.float64)
        np.testing.assert_allclose(ray_["per_channel"]["bn"]["moving_variance"], x.var(0, ddof=1), rtol=1e-6)
        assert os.listdir(tmp) == []
        assert not (home / ".ray").exists()  # Ray's auth token was kept in memory, not written to ~/.ray
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def resnet50_small(tmp_path_factory):
    """keras.applications.ResNet50(weights=None) at 32x32 with random BN statistics, as .keras."""
    K = models.framework("keras")
    m = K.applications.ResNet50(weights=None, input_shape=(32, 32, 3))
    models.randomize_bn(m, K, np.random.default_rng(6))
    path = tmp_path_factory.mktemp("resnet") / "resnet50_32.keras"
    m.save(path)
    return path


def test_ray_resnet50_three_shards_same_statistics(resnet50_small, ray_cluster):
    """ResNet50 (53 BNs, 49 levels) on 3 Ray actors: the single-process statistics, <= 1e-9 relative."""
    data = np.random.default_rng(8).normal(0, 1, (40, 32, 32, 3)).astype("float32")
    one, rep1 = run(resnet50_small, data, batch_size=8)
    got, rep = run(resnet50_small, data, batch_size=8, engine="ray", shards=3)
    assert rep1["levels"] == rep["levels"] == 49 and len(rep["layers"]) == 53
    assert_same(got, one)
    assert [s["samples"] for s in rep["shards"]] == [16, 16, 8]


def test_automatic_cache_budget(monkeypatch, tmp_path):
    """Default cache: half the available memory split between shards, at least 1024 MB; a number wins."""
    from bnrewrite import calibration as C

    monkeypatch.setattr(C, "_available_mb", lambda: 20000.0)
    assert C.cache_budget_mb(None) == 10000.0
    assert C.cache_budget_mb(None, shards=4) == 2500.0
    assert C.cache_budget_mb(None, shards=40) == 1024.0
    assert C.cache_budget_mb(300.0, shards=4) == 300.0
    monkeypatch.setattr(C, "_available_mb", lambda: None)
    assert C.cache_budget_mb(None) == 1024.0

    proc = run_cli("convert", FIX / "lone_bn.h5", "out.onnx", "--calibration", FIX / "lone_bn_calib.npy",
                   "--cache-mb", "lots", cwd=tmp_path)
    assert_one_line_error(proc)
    assert "--cache-mb" in proc.stderr and not (tmp_path / "out.onnx").exists()


def test_cli_ray_sigterm_cleans_up(two_level, tmp_path):
    """SIGTERM while Ray shards calibrate: exit 143, no OUT, every shard's spill folder and the Ray
    session folder removed, no Ray process of this run left."""
    import signal
    import subprocess
    import time

    pytest.importorskip("ray", reason='the ray extra is not installed (pip install "bnrewrite[ray]")')
    tmp = tempfile.mkdtemp(prefix="bnr", dir="/tmp")
    spill = tmp_path / "spill"
    spill.mkdir()
    np.save(tmp_path / "d.npy", np.random.default_rng(2).normal(0, 1, (20000, 6)).astype("float32"))
    env = dict(os.environ, TMPDIR=tmp)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnrewrite", "convert", str(two_level[0]), "out.onnx", "--calibration", "d.npy",
         "--batch-size", "1", "--engine", "ray", "--shards", "2", "--cache-mb", "0", "--cache-dir", str(spill)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not any(spill.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # a shard has made its spill folder: calibration is under way
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 143, err[-2000:]
        assert "Traceback" not in err
        assert not (tmp_path / "out.onnx").exists()
        assert list(spill.iterdir()) == []
        assert os.listdir(tmp) == []  # the Ray session folder too
        left = subprocess.run(["pgrep", "-f", tmp], capture_output=True, text=True).stdout.split()
        assert left == [], left
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_with_custom_objects_file(ray_cluster, tmp_path):
    """Layers from a --custom-objects file reach the actors (their module exists only in the driver)."""
    import keras

    import bnrewrite
    from bnrewrite.calibration import calibrate
    from bnrewrite.custom import load_custom_objects
    from hardening_models import CUSTOM_MODULE

    (tmp_path / "my_layers.py").write_text(CUSTOM_MODULE)
    objs = load_custom_objects(tmp_path / "my_layers.py")
    x = keras.Input((4,), name="x")
    h = keras.layers.BatchNormalization(name="bn")(objs["Scale"](factor=3.0, name="scale")(x))
    model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    model.save(tmp_path / "custom.keras")
    data = np.random.default_rng(12).normal(1, 2, (90, 4)).astype("float32")
    stats = {}
    for engine, shards in (("local", 1), ("ray", 2)):
        mg = bnrewrite.load(tmp_path / "custom.keras", custom_objects=objs)
        calibrate(mg, data, batch_size=16, custom_objects=objs, engine=engine, shards=shards)
        stats[engine] = {k: np.array(mg.layer("bn").weights[k]) for k in ("moving_mean", "moving_variance")}
    y = data.astype(np.float64) * 3.0  # Scale's weights are ones
    for k in stats["local"]:
        np.testing.assert_array_equal(stats["ray"][k], stats["local"][k], err_msg=k)
    np.testing.assert_allclose(stats["ray"]["moving_variance"], y.var(0, ddof=1), rtol=1e-6)


def test_automatic_batch_size(two_level, tmp_path):
    """Chosen from the largest activation (128 MiB per batch, 32..256 in steps of 32); 32 when the batch
    axis may hold more than samples (an unwrapped TimeDistributed's reshape)."""
    import keras

    import bnrewrite
    from bnrewrite.calibration import calibrate
    from bnrewrite.passes import PassContext, PassManager, UnwrapTimeDistributed

    _, rep = run(two_level[0], two_level[2][:300])
    assert rep["batch_size"] == 256  # 8 floats per sample: the cap
    x = keras.Input((64, 64, 64), name="x")  # 1 MiB per sample -> 128 samples
    m = keras.Model(x, keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(64, 1, name="c")(x)))
    data = np.random.default_rng(1).normal(0, 1, (4, 64, 64, 64)).astype("float32")
    assert calibrate(bnrewrite.load(m), data)["batch_size"] == 128
    for shape, want in (((66, 66, 64), 128), ((80, 80, 64), 64)):  # 120 and 82 samples fill 128 MiB
        x = keras.Input(shape, name="x")  # the nearest power of two, in ratio
        m = keras.Model(x, keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(64, 1, name="c")(x)))
        data = np.random.default_rng(1).normal(0, 1, (4, *shape)).astype("float32")
        assert calibrate(bnrewrite.load(m), data)["batch_size"] == want, shape
    x = keras.Input((6, 8, 8, 4), name="clip")  # TimeDistributed(Conv2D) -> BN, unwrapped to a reshape
    y = keras.layers.TimeDistributed(keras.layers.Conv2D(4, 1), name="td")(x)
    m = keras.Model(x, keras.layers.BatchNormalization(name="bn")(y))
    mg = bnrewrite.load(m)
    PassManager([UnwrapTimeDistributed()]).run(mg, PassContext())
    clips = np.random.default_rng(2).normal(0, 1, (10, 6, 8, 8, 4)).astype("float32")
    rep = calibrate(mg, clips)
    assert rep["batch_size"] == 32 and rep["samples"] == 10
    # Keras 3 unwrapped TimeDistributed (a keras.ops.reshape node): statistics over batch, time and space
    h = keras.Model(x, y).predict(clips, verbose=0).astype(np.float64)
    np.testing.assert_allclose(mg.layer("bn").weights["moving_mean"], h.mean((0, 1, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mg.layer("bn").weights["moving_variance"], h.var((0, 1, 2, 3), ddof=1), rtol=1e-5)
