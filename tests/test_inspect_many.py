"""``bnrewrite inspect PATH...``: many files, folders and globs, each file in its own process.

The records are compared with the single-file ``inspect`` of the same file (one process, the
reference for what a file's audit is) -- a fleet run must not change any file's findings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _cli(*args, env=None, cwd=None):
    import os

    return subprocess.run([sys.executable, "-m", "bnrewrite", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    (root / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(FIXTURES / "lone_bn.h5", root / "lone.h5")
    shutil.copy(FIXTURES / "td_bn_stale.h5", root / "sub" / "stale.h5")
    shutil.copy(FIXTURES / "training_true.h5", root / "sub" / "deeper" / "baked.hdf5")
    shutil.copy(FIXTURES / "multi_io.keras", root / "sub" / "multi.keras")
    (root / "notes.txt").write_text("not a model")  # not a model suffix: not picked up
    (root / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature, then nothing
    return root


def test_folder_gives_one_record_per_model_file(fleet):
    r = _cli("inspect", fleet, "--json", "--jobs", "2")
    assert r.returncode == 2, r.stderr  # one unreadable file
    records = json.loads(r.stdout)
    names = sorted(Path(x["input"]["path"]).name for x in records)
    assert names == ["baked.hdf5", "broken.h5", "lone.h5", "multi.keras", "stale.h5"]
    by = {Path(x["input"]["path"]).name: x for x in records}
    assert by["broken.h5"]["error"]["exit_code"] == 2 and by["broken.h5"]["input"]["sha256"]
    assert {f["code"] for f in by["baked.hdf5"]["findings"]} >= {"TRAINING_BAKED_IN"}
    assert {f["code"] for f in by["stale.h5"]["findings"]} >= {"STALE_STATS", "TIMEDISTRIBUTED_BN"}
    # each record is what the single-file inspect says of that file
    for name in ("stale.h5", "multi.keras"):
        single = json.loads(_cli("inspect", by[name]["input"]["path"], "--json").stdout)
        assert single["findings"] == by[name]["findings"] and single["bn_layers"] == by[name]["bn_layers"]


def test_globs_strict_and_table(fleet):
    r = _cli("inspect", str(fleet / "**" / "*.h5"), str(fleet / "lone.h5"), "--strict", "--jobs", "2")
    # broken.h5 is among the matches: exit 2 beats 4
    assert r.returncode == 2, r.stderr
    assert "broken.h5" in r.stdout and "stale.h5" in r.stdout and "files, 1 unreadable" in r.stdout
    r = _cli("inspect", str(fleet / "sub" / "*.h5"), "--strict", "--json")
    assert r.returncode == 4, r.stderr  # STALE_STATS is a warning
    assert [Path(x["input"]["path"]).name for x in json.loads(r.stdout)] == ["stale.h5"]


def test_a_file_that_does_not_finish_is_its_own_record(fleet):
    r = _cli("inspect", fleet / "lone.h5", fleet / "sub" / "stale.h5", "--json", env={"BNREWRITE_INSPECT_TIMEOUT": "0.01"})
    records = json.loads(r.stdout)
    assert r.returncode == 2 and len(records) == 2
    assert all(x["error"]["code"] == "TIMEOUT" for x in records)


def test_nothing_to_inspect_is_one_line(tmp_path):
    r = _cli("inspect", tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no model files" in r.stderr
    r = _cli("inspect", str(tmp_path / "*.h5"), tmp_path / "missing.h5")
    assert r.returncode == 2 and "no such file" in r.stderr
