"""``--engine ray:ADDRESS``: joining a running Ray cluster (started here with ``ray start --head``).

Its own module, so that it runs after tests/test_engines.py has shut its in-process Ray down; the
cluster is stopped by killing its processes (found by its temp folder), not with ``ray stop``, which
would stop every Ray on the machine. The reference is numpy (ddof=1) and the local engine's bits.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from conftest import ROOT
from test_cli import assert_one_line_error, run_cli

FIX = ROOT / "fixtures"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason='the ray extra is not installed (pip install "bnrewrite[ray]")')
    ray_bin = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    tmp = tempfile.mkdtemp(prefix="bnc", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    # token authentication, the token given in the environment as a cluster's users would (no ~/.ray file)
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", TF_CPP_MIN_LOG_LEVEL="3", **token)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    started = subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={tmp}",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, env=env, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}", tmp, token
    finally:
        for sig in ("-TERM", "-KILL"):
            subprocess.run(["pkill", sig, "-f", tmp], capture_output=True)
            time.sleep(1)
        shutil.rmtree(tmp, ignore_errors=True)


def test_join_running_cluster(cluster, tmp_path):
    address, session, token = cluster
    data = np.random.default_rng(9).normal(-2, 0.5, (200, 1)).astype("float32")
    np.save(tmp_path / "d.npy", data)
    per_channel = {}
    for name, extra in (("local", []), ("joined", ["--engine", f"ray:{address}", "--shards", "2"])):
        proc = run_cli("convert", FIX / "lone_bn.h5", f"{name}.onnx", "--calibration", "d.npy", "--batch-size", "16",
                       "--report", f"{name}.json", *extra, cwd=tmp_path, env_extra=token)
        assert proc.returncode == 0, proc.stderr[-3000:]
        cal = json.loads((tmp_path / f"{name}.json").read_text())["calibration"]
        per_channel[name] = cal["per_channel"]
    assert per_channel["joined"] == per_channel["local"]
    x = data.astype(np.float64)
    np.testing.assert_allclose(per_channel["joined"]["bn"]["moving_variance"], x.var(0, ddof=1), rtol=1e-6)
    # the cluster is left running for its owner
    assert subprocess.run(["pgrep", "-f", session], capture_output=True).stdout.strip()


def test_unreachable_address_is_one_line_quickly(tmp_path):
    port = _free_port()  # nothing listens there
    t = time.monotonic()
    proc = run_cli("convert", FIX / "lone_bn.h5", "out.onnx", "--calibration", FIX / "lone_bn_calib.npy",
                   "--engine", f"ray:127.0.0.1:{port}", cwd=tmp_path)
    assert_one_line_error(proc)
    assert "no Ray cluster answers" in proc.stderr and time.monotonic() - t < 60
    assert not (tmp_path / "out.onnx").exists()
