"""Outputs, signals and logs: every row of "Outputs, signals and logs" in ``docs/hardening.md``.

What bnrewrite *writes* must never cost anyone data, and what it *prints* must
never be driven by the model file:

* every output path (``OUT``, ``--report``) is checked before any work: not an
  input (any spelling, hard links), not each other, folder present and
  writable, no FIFO/device, existing files only with ``--force``;
* the final placement never clobbers a file that appeared meanwhile (two
  concurrent runs to one ``OUT``: exactly one wins);
* SIGTERM, SIGHUP and SIGINT remove every temporary file and folder
  (``.NAME.bnrewrite-tmp-*`` beside ``OUT``, the calibration spill folder) and
  exit 143 / 129 / 130;
* the calibration spill is capped on disk;
* layer names, config values, paths and error messages reach stdout/stderr
  with control characters and rich markup escaped, and cut when long.

The command lines run for real: the refusals and the hostile-text cases in ONE
fresh process through ``tests/cli_batch.py``; the signal and concurrency cases
as separate ``python -m bnrewrite`` processes, all started at once (module
fixture) so their TensorFlow imports overlap.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

FIXTURES = ROOT / "fixtures"
ERROR_PREFIX = "bnrewrite: error: "
TEMP_MARK = ".bnrewrite-tmp-"
HOSTILE_NAME = "x\x1b[2J\x9b31m[bold]\rALL CHECKS PASSED"  # Keras 3 accepts it (no "/")
SLASH_NAME = "x\x1b[2J[/]ALL CHECKS PASSED"  # Keras 3 refuses "/" in a layer name
RAW_CONTROL = ("\x1b", "\x9b", "\r", "\x07")  # must never reach a log
HUGE = 5_000_000  # characters of a hostile config value


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra)
    return env


# The child gets default dispositions for the stop signals even if this test runs in a
# background job (SIGINT ignored) or under nohup (SIGHUP ignored): bnrewrite rightly keeps
# ignored signals ignored. Then the real entry point, as `python -m bnrewrite` runs it.
_ENTRY = ("import signal, sys\n"
          "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
          "    signal.signal(s, signal.SIG_DFL)\n"
          "from bnrewrite.cli import main\n"
          "main(args=sys.argv[1:], prog_name='bnrewrite')\n")


def _popen(args, cwd: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _ENTRY, *map(str, args)], cwd=cwd, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _leftovers(*dirs: Path) -> list[str]:
    return [str(p) for d in dirs for p in d.rglob("*") if TEMP_MARK in p.name or p.name.startswith("bnrewrite-calib-")]


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# --------------------------------------------------------------------------
# hostile model files (no TensorFlow needed to make them)
# --------------------------------------------------------------------------

def _rename_layers(src: Path, dst: Path, names: dict[str, str]) -> Path:
    """A Keras 3 archive with layers renamed in config.json (weights are stored by path, not name)."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zo:
        for member in zi.namelist():
            data = zi.read(member)
            if member == "config.json":
                text = data.decode()
                for old, new in names.items():
                    text = text.replace(json.dumps(old), json.dumps(new))
                data = text.encode()
            zo.writestr(member, data)
    return dst


def _config_value(src: Path, dst: Path, layer_class: str, key: str, value: str) -> Path:
    """A tf.keras .h5 whose first ``layer_class`` config has an extra key Keras 3 does not take."""
    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        layer = next(lay for lay in cfg["config"]["layers"] if lay["class_name"] == layer_class)
        layer["config"][key] = value
        f.attrs["model_config"] = json.dumps(cfg)
    return dst


# --------------------------------------------------------------------------
# the scene: inputs, then every subprocess started at once
# --------------------------------------------------------------------------

@dataclass
class Case:
    argv: list[str]
    cwd: Path
    before: dict = field(default_factory=dict)  # name -> bytes of every file there before


@dataclass
class SignalRun:
    code: object = None
    stdout: str = ""
    stderr: str = ""
    attempts: int = 0
    seconds: float = 0.0


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _signal_run(args, cwd: Path, ready, signum: int, result: SignalRun, *, freeze: bool = False,
                reset=lambda: None, env: dict | None = None, timeout: float = 240) -> None:
    """Start bnrewrite, wait until ``ready()`` (a temp file or the spill folder exists), send ``signum``.

    ``freeze``: SIGSTOP the process first and confirm ``ready()`` still holds, so a short window
    (the temporary OUT exists only while writing and verifying) is hit for sure; SIGCONT after.
    A run that finished before the window was seen is repeated (at most 3 times).
    """
    t0 = time.monotonic()
    for attempt in range(1, 4):
        reset()
        p = _popen(args, cwd, **(env or {}))
        sent = False
        try:
            while p.poll() is None and time.monotonic() - t0 < timeout:
                if ready():
                    if freeze:
                        p.send_signal(signal.SIGSTOP)
                        if not ready():
                            p.send_signal(signal.SIGCONT)
                            continue
                    p.send_signal(signum)
                    sent = True
                    if freeze:
                        p.send_signal(signal.SIGCONT)
                    break
                time.sleep(0.003)
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if sent:
            result.code, result.stdout, result.stderr = p.returncode, out.decode(), err.decode()
            result.attempts, result.seconds = attempt, time.monotonic() - t0
            return
    result.code, result.stderr = "window missed", err.decode()


class Scene:
    def __init__(self, root: Path):
        self.root = root
        self.cases: dict[str, Case] = {}
        self.threads: list[threading.Thread] = []
        self.signals: dict[str, SignalRun] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self._batch: subprocess.Popen | None = None
        self._batch_results: dict | None = None

    # ---- inputs
    def inputs(self) -> None:
        inp = self.root / "in"
        inp.mkdir()
        self.lone = Path(shutil.copy(FIXTURES / "lone_bn.h5", inp / "lone_bn.h5"))
        self.domain = Path(shutil.copy(FIXTURES / "domain_shift.h5", inp / "domain_shift.h5"))
        self.lone_calib = Path(shutil.copy(FIXTURES / "lone_bn_calib.npy", inp / "lone_bn_calib.npy"))
        # many single-sample batches: a 2-level model spills from the first batch on and runs for minutes
        rng = np.random.default_rng(0)
        self.long_calib = inp / "long_calib.npy"
        np.save(self.long_calib, rng.normal(3.0, 1.0, (300_000, 8)).astype(np.float32))
        self.short_calib = inp / "short_calib.npy"
        np.save(self.short_calib, rng.normal(3.0, 1.0, (2_000, 8)).astype(np.float32))
        self.hostile = _rename_layers(FIXTURES / "lone_bn.keras", inp / "hostile.keras",
                                      {"bn": HOSTILE_NAME + "A" * HUGE})  # a 5 MB layer name
        self.slash = _rename_layers(FIXTURES / "lone_bn.keras", inp / "slash.keras", {"bn": SLASH_NAME})
        self.value = _config_value(FIXTURES / "domain_shift.h5", inp / "value.h5", "Dense", "evil",
                                   "[/]\x1b[2J\rALL CHECKS PASSED" + "A" * HUGE)
        self.custom = inp / "my_layers.py"
        self.custom.write_text("custom_objects = {}\n")

    # ---- batch cases (one process)
    def add(self, cid: str, *argv, setup=None) -> Case:
        d = self.root / cid
        d.mkdir()
        if setup:
            setup(d)
        case = Case([str(a) for a in argv], d)
        case.before = _snapshot(d)
        self.cases[cid] = case
        return case

    def start_batch(self) -> None:
        spec = self.root / "cases.json"
        self.results_path = self.root / "results.json"
        spec.write_text(json.dumps([{"id": k, "argv": c.argv, "cwd": str(c.cwd)} for k, c in self.cases.items()]))
        self._batch = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_batch.py"), str(spec),
                                        str(self.results_path)], env=_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)

    def batch(self, cid: str) -> dict:
        if self._batch_results is None:
            _, err = self._batch.communicate(timeout=900)
            assert self.results_path.exists(), err.decode()[-3000:]
            self._batch_results = json.loads(self.results_path.read_text())
        assert cid in self._batch_results, sorted(self._batch_results)
        return self._batch_results[cid]

    # ---- signal and concurrency runs (own processes, in threads)
    def start_signal(self, name: str, *args, **kw) -> None:
        self.signals[name] = SignalRun()
        t = threading.Thread(target=_signal_run, args=(*args, self.signals[name]), kwargs=kw, daemon=True)
        t.start()
        self.threads.append(t)

    def signal_result(self, name: str) -> SignalRun:
        for t in self.threads:
            t.join(timeout=600)
        return self.signals[name]

    def finish(self) -> None:
        for p in [self._batch, *self.procs.values()]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def _setup_cases(s: Scene) -> None:
    lone, calib = s.lone, s.lone_calib

    def put(name: str, data: bytes = b"precious\n"):
        return lambda d: (d / name).write_bytes(data)

    def copy_input(d: Path) -> None:
        shutil.copy(lone, d / "m.h5")
        (d / "sub").mkdir()

    # -- --report and OUT against the inputs, each other, existing files and folders
    s.add("report_is_input", "convert", "m.h5", "out.onnx", "--report", "m.h5", setup=copy_input)
    s.add("report_is_input_spelled", "convert", "m.h5", "out.onnx", "--report", "sub/../m.h5", "--force",
          setup=copy_input)
    s.add("report_is_input_hardlink", "convert", "m.h5", "out.onnx", "--report", "link.json", "--force",
          setup=lambda d: (copy_input(d), os.link(d / "m.h5", d / "link.json")))
    s.add("report_is_calibration", "convert", lone, "out.onnx", "--calibration", "data.npy",
          "--report", "data.npy", "--force", setup=lambda d: shutil.copy(calib, d / "data.npy"))
    s.add("report_is_custom_objects", "convert", lone, "out.onnx", "--custom-objects", "layers.py",
          "--report", "./layers.py", "--force", setup=lambda d: shutil.copy(s.custom, d / "layers.py"))
    s.add("report_is_out", "convert", lone, "out.onnx", "--report", "./out.onnx")
    s.add("report_is_out_existing", "convert", lone, "out.onnx", "--report", "out.onnx", "--force",
          setup=put("out.onnx", b"an earlier export\n"))
    s.add("report_exists", "convert", lone, "out.onnx", "--report", "report.json",
          setup=put("report.json", b'{"an": "earlier report"}\n'))
    s.add("report_exists_force", "convert", lone, "out.onnx", "--report", "report.json", "--force", "-q",
          setup=put("report.json", b'{"an": "earlier report"}\n'))
    s.add("report_new", "convert", lone, "out.onnx", "--report", "report.json", "-q")
    s.add("report_folder_missing", "convert", lone, "out.onnx", "--report", "no/such/folder/report.json")
    s.add("report_folder_is_file", "convert", lone, "out.onnx", "--report", "notes.txt/report.json",
          setup=put("notes.txt"))
    s.add("report_is_fifo", "convert", lone, "out.onnx", "--report", "report.fifo", "--force",
          setup=lambda d: os.mkfifo(d / "report.fifo"))
    s.add("report_is_device", "convert", lone, "out.onnx", "--report", os.devnull, "--force")
    s.add("out_is_input_hardlink", "convert", "m.h5", "out.h5", "--force",
          setup=lambda d: (copy_input(d), os.link(d / "m.h5", d / "out.h5")))
    s.add("calibration_is_fifo", "convert", lone, "out.onnx", "--calibration", "data.npy",
          setup=lambda d: os.mkfifo(d / "data.npy"))
    s.add("cache_dir_missing", "convert", s.domain, "out.onnx", "--calibration", s.short_calib,
          "--cache-dir", "no/such/cache")
    if not _is_root():
        def read_only(d: Path) -> None:
            (d / "ro").mkdir()
            (d / "ro").chmod(0o555)

        s.add("report_folder_read_only", "convert", lone, "out.onnx", "--report", "ro/report.json",
              setup=read_only)
    # -- the spill cap and folder through the command line
    s.add("spill_cap_cli", "convert", s.domain, "out.onnx", "--calibration", s.short_calib, "--cache-mb", "0",
          "--cache-dir", "cache", "--max-spill-gb", "0.00001", setup=lambda d: (d / "cache").mkdir())
    # -- hostile text
    s.add("hostile_name_convert", "convert", s.hostile, "out.keras")
    s.add("hostile_name_inspect", "inspect", s.hostile)
    s.add("hostile_slash_name", "convert", s.slash, "out.onnx")
    s.add("hostile_config_value", "convert", s.value, "out.onnx")

    def markup_folders(d: Path) -> None:  # "[/]" in a path: folders "in[" and "out["
        (d / "in[").mkdir()
        (d / "out[").mkdir()
        shutil.copy(lone, d / "in[" / "]m.h5")

    s.add("hostile_markup_path", "convert", "in[/]m.h5", "out[/]o.onnx", "--report", "out[/]r.json",
          setup=markup_folders)
    s.add("hostile_path", "convert", "nope\x1b[2J\rALL CHECKS PASSED.h5", "out.onnx")
    s.add("huge_path", "convert", ("d" * 200 + "/") * 15 + "model.h5", "out.onnx")


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _setup_signals(s: Scene) -> None:
    root = s.root
    for name, signum in (("sigterm", signal.SIGTERM), ("sighup", signal.SIGHUP), ("sigint", signal.SIGINT)):
        d = root / name
        (d / "tmp").mkdir(parents=True)

        def spill_ready(tmp=d / "tmp"):
            return any(p.name.startswith("bnrewrite-calib-") and any(p.iterdir()) for p in tmp.iterdir())

        s.start_signal(name, ["convert", s.domain, "out.onnx", "--calibration", s.long_calib, "--batch-size", "1",
                              "--cache-mb", "0", "--report", "report.json"], d, spill_ready, signum,
                       env={"TMPDIR": str(d / "tmp")})
    d = root / "sigterm_out"
    d.mkdir()

    def out_ready(d=d):
        return any(TEMP_MARK in p.name for p in d.iterdir())

    def reset(d=d):
        for p in d.iterdir():
            p.unlink()

    s.start_signal("sigterm_out", ["convert", s.domain, "out.keras", "--report", "report.json"], d, out_ready,
                   signal.SIGTERM, freeze=True, reset=reset)
    d = root / "concurrent"
    d.mkdir()
    for i in (1, 2):
        s.procs[f"concurrent{i}"] = _popen(["convert", s.lone, "same.onnx", "-q"], d)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    s = Scene(tmp_path_factory.mktemp("outputs"))
    s.inputs()
    _setup_cases(s)
    s.start_batch()
    _setup_signals(s)
    yield s
    s.finish()


# --------------------------------------------------------------------------
# assertions
# --------------------------------------------------------------------------

def assert_refused(s: Scene, cid: str, *words: str) -> str:
    """Exit 2, one error line naming ``words``, no traceback, and the folder exactly as before."""
    r, case = s.batch(cid), s.cases[cid]
    assert r["code"] == 2, (cid, r)
    assert "Traceback" not in r["stderr"] + r["stdout"], r["stderr"]
    lines = _lines(r["stderr"])
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), lines
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    assert _snapshot(case.cwd) == case.before, (cid, _listing(case.cwd))  # no OUT, no report, nothing changed
    return lines[0]


def assert_clean_text(text: str) -> None:
    for ch in RAW_CONTROL:
        assert ch not in text, (repr(ch), text[:2000])
    assert not any(ln.lstrip().startswith("ALL CHECKS PASSED") for ln in text.splitlines()), text[:2000]


# --------------------------------------------------------------------------
# --report and OUT: checked before any work
# --------------------------------------------------------------------------

def test_report_is_input(scene):
    """``--report m.h5`` used to exit 0 and leave the model as JSON; any spelling, a hard link,
    the calibration data and the --custom-objects file are inputs too, also with --force."""
    assert_refused(scene, "report_is_input", "m.h5", "--report is the input file")
    assert_refused(scene, "report_is_input_spelled", "--report is the input file")
    assert_refused(scene, "report_is_input_hardlink", "link.json", "--report is the input file", "m.h5")
    assert_refused(scene, "report_is_calibration", "data.npy", "--report is the input file")
    assert_refused(scene, "report_is_custom_objects", "layers.py", "--report is the input file")


def test_output_hardlink_to_input(scene):
    """OUT that is a hard link to IN (another name, same inode): refused even with --force."""
    assert_refused(scene, "out_is_input_hardlink", "out.h5", "output is the input file", "m.h5")


def test_report_is_out(scene):
    """``--report o.onnx`` used to replace the verified output with JSON."""
    assert_refused(scene, "report_is_out", "--report is the same file as the output")
    assert_refused(scene, "report_is_out_existing", "--report is the same file as the output")


def test_report_exists(scene):
    """An existing report is kept without --force (the run stops before any work: no OUT)."""
    assert_refused(scene, "report_exists", "report.json", "--report already exists", "--force")


def test_report_exists_force(scene):
    r, d = scene.batch("report_exists_force"), scene.cases["report_exists_force"].cwd
    assert r["code"] == 0, r
    assert json.loads((d / "report.json").read_text())["ok"] is True
    assert _listing(d) == ["out.onnx", "report.json"]


def test_report_new(scene):
    r, d = scene.batch("report_new"), scene.cases["report_new"].cwd
    assert r["code"] == 0 and r["stderr"] == "", r
    assert json.loads((d / "report.json").read_text())["ok"] is True
    assert _listing(d) == ["out.onnx", "report.json"]


def test_report_folder_missing(scene):
    """Used to fail after OUT was written (exit 2 with OUT on disk); now before any work."""
    assert_refused(scene, "report_folder_missing", "no/such/folder", "does not exist")


def test_report_folder_not_writable(scene):
    """A folder that cannot take the report: a path under a file (any user), a read-only folder
    (skipped as root, where permissions do not apply; see test_check_outputs_read_only_folder)."""
    assert_refused(scene, "report_folder_is_file", "notes.txt", "not a folder")
    if "report_folder_read_only" in scene.cases:
        assert_refused(scene, "report_folder_read_only", "ro", "not writable")


def test_report_fifo_or_device(scene):
    """A FIFO would block the write, a device (/dev/null) would be replaced as root: refused, even with --force."""
    assert_refused(scene, "report_is_fifo", "report.fifo", "FIFO")
    assert_refused(scene, "report_is_device", os.devnull, "device")


def test_calibration_fifo(scene):
    """A FIFO as calibration data used to block forever; refused before TensorFlow is imported."""
    assert_refused(scene, "calibration_is_fifo", "data.npy", "FIFO")
    assert scene.batch("calibration_is_fifo")["seconds"] < 30


def test_cache_dir_missing(scene):
    assert_refused(scene, "cache_dir_missing", "no/such/cache", "--cache-dir", "does not exist")


def test_check_outputs_read_only_folder(tmp_path, monkeypatch):
    """The writability check itself (as root os.access grants everything, so it is simulated)."""
    from bnrewrite.errors import InputError
    from bnrewrite.outputs import check_outputs

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real(p, mode))
    (tmp_path / "ro").mkdir()
    (tmp_path / "in.h5").write_bytes(b"x")
    with pytest.raises(InputError, match="ro: --report folder is not writable"):
        check_outputs([(tmp_path / "out.onnx", "output"), (tmp_path / "ro" / "r.json", "--report")],
                      inputs=[tmp_path / "in.h5"])
    check_outputs([(tmp_path / "out.onnx", "output"), (tmp_path / "r.json", "--report")], inputs=[tmp_path / "in.h5"])


# --------------------------------------------------------------------------
# placement: no clobbering, concurrent runs
# --------------------------------------------------------------------------

def _placement_wired() -> bool:
    import importlib
    import inspect
    import re

    source = inspect.getsource(importlib.import_module("bnrewrite.convert").convert)
    return re.search(r"(?<![\w.])place\(|outputs\.place\(", source) is not None


@pytest.mark.xfail(not _placement_wired(), strict=True,
                   reason="convert() still renames with os.replace: the lead wires outputs.place(tmp, dst, force=force)")
def test_concurrent_runs_same_out(scene):
    """Two runs to the same OUT without --force, started together (both pass the up-front check):
    exactly one succeeds, the other stops with exit 2 and leaves nothing; OUT is a complete ONNX."""
    import onnx

    runs = {}
    for name in ("concurrent1", "concurrent2"):
        out, err = scene.procs[name].communicate(timeout=600)
        runs[name] = (scene.procs[name].returncode, err.decode())
    codes = sorted(code for code, _ in runs.values())
    assert codes == [0, 2], runs
    loser = next(err for code, err in runs.values() if code == 2)
    assert len(_lines(loser)) == 1 and ("appeared while" in loser or "already exists" in loser), loser
    d = scene.root / "concurrent"
    assert _listing(d) == ["same.onnx"]
    onnx.checker.check_model(onnx.load(str(d / "same.onnx")))


def test_place_never_clobbers(tmp_path, monkeypatch):
    """outputs.place: a file that appeared meanwhile is kept without force (os.link, and the
    O_EXCL reservation where hard links are unsupported), replaced with force; temp names are
    recognisable and nothing is left behind."""
    from bnrewrite import outputs
    from bnrewrite.errors import InputError

    dst = tmp_path / "model.onnx"
    for link_works in (True, False):
        if not link_works:
            def no_link(a, b):
                raise OSError(errno.EPERM, "Operation not permitted")

            monkeypatch.setattr(os, "link", no_link)
        dst.write_bytes(b"appeared meanwhile\n")
        tmp = outputs.write_temp(dst, lambda p: p.write_bytes(b"new\n"))
        # dst's own name, in a private (0700) folder beside it: nobody else can plant a link there
        assert tmp.name == "model.onnx" and tmp.parent.parent == tmp_path
        assert tmp.parent.name.startswith(".model.onnx" + TEMP_MARK)
        assert stat.S_IMODE(tmp.parent.stat().st_mode) == 0o700
        assert str(tmp.parent) in outputs.registered_temps()
        with pytest.raises(InputError, match="appeared while bnrewrite was working"):
            outputs.place(tmp, dst)
        assert dst.read_bytes() == b"appeared meanwhile\n"
        outputs.place(tmp, dst, force=True)
        assert dst.read_bytes() == b"new\n" and _listing(tmp_path) == ["model.onnx"]
        dst.unlink()
        tmp = outputs.write_temp(dst, lambda p: p.write_bytes(b"fresh\n"))
        outputs.place(tmp, dst)
        assert dst.read_bytes() == b"fresh\n" and _listing(tmp_path) == ["model.onnx"]
        assert str(tmp) not in outputs.registered_temps() and str(tmp.parent) not in outputs.registered_temps()
        dst.unlink()
    # a relative destination ("./x" and "x" are one folder): the private folder goes too
    monkeypatch.chdir(tmp_path)
    outputs.place(outputs.write_temp(Path("rel.onnx"), lambda p: p.write_bytes(b"r\n")), Path("rel.onnx"))
    assert _listing(tmp_path) == ["rel.onnx"] and not outputs.registered_temps()
    Path("rel.onnx").unlink()
    # write_text: the report path; a failing writer leaves nothing
    outputs.write_text(tmp_path / "r.json", "{}")
    with pytest.raises(InputError, match="appeared"):
        outputs.write_text(tmp_path / "r.json", "{1}")
    assert (tmp_path / "r.json").read_text() == "{}" and _listing(tmp_path) == ["r.json"]
    with pytest.raises(ZeroDivisionError):
        outputs.write_temp(dst, lambda p: (p.write_bytes(b"half"), 1 / 0))
    assert _listing(tmp_path) == ["r.json"]


# --------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name, code, signame", [("sigterm", 143, "SIGTERM"), ("sighup", 129, "SIGHUP"),
                                                 ("sigint", 130, "SIGINT")])
def test_signal_during_calibration(scene, name, code, signame):
    """SIGTERM (CI timeout, docker stop), SIGHUP and SIGINT while calibration spills to disk:
    the spill folder is removed, nothing is left beside OUT, exit 128 + signal number."""
    r = scene.signal_result(name)
    assert r.code == code, (r.code, r.stderr[-3000:])
    assert _lines(r.stderr) == [f"bnrewrite: interrupted ({signame}); temporary files removed"], r.stderr
    d = scene.root / name
    assert _leftovers(d) == []  # the spill folder (bnrewrite-calib-* in $TMPDIR) is gone
    assert _listing(d) == ["tmp"]  # no OUT, no report, no temporary file


def test_sigterm_while_writing_out(scene):
    """SIGTERM while the temporary OUT (``.out.keras.bnrewrite-tmp-*``) is written and verified:
    it is removed, no report is written, exit 143."""
    r = scene.signal_result("sigterm_out")
    assert r.code == 143, (r.code, r.stderr[-3000:])
    assert _lines(r.stderr) == ["bnrewrite: interrupted (SIGTERM); temporary files removed"], r.stderr
    d = scene.root / "sigterm_out"
    assert _leftovers(d) == [] and "report.json" not in _listing(d), _listing(d)
    # the process was frozen while the temporary file existed, so OUT was not placed
    # (unless it froze inside place() itself, between link and unlink: then OUT is complete)
    if (d / "out.keras").exists():
        assert zipfile.ZipFile(d / "out.keras").testzip() is None


def test_signal_handler_in_process(tmp_path):
    """The handler raises Interrupted (a KeyboardInterrupt: ``except Exception`` cannot swallow it)
    with exit code 128 + n; a signal inside a create-and-register section is raised at its end;
    remove_temps removes what is registered; the previous handlers come back."""
    from bnrewrite import outputs
    from bnrewrite.errors import Interrupted

    before = signal.getsignal(signal.SIGTERM)
    # SIGHUP, unless this run ignores it (under nohup it stays ignored, by design): then SIGTERM again
    other = signal.SIGHUP if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else signal.SIGTERM
    f = tmp_path / "f.tmp"
    f.write_bytes(b"x")
    outputs.register_temp(f)
    d = outputs.make_temp_dir(dir=tmp_path)
    (Path(d) / "1.bin").write_bytes(b"spill")
    with outputs.handle_signals():
        with pytest.raises(Interrupted) as err:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this
            except Exception:  # noqa: BLE001 - what a framework might do; must not catch it
                pytest.fail("Interrupted was caught by except Exception")
        assert err.value.exit_code == 143 and err.value.signum == signal.SIGTERM
        assert isinstance(err.value, KeyboardInterrupt)
        with pytest.raises(Interrupted):
            with outputs._signals_deferred():
                os.kill(os.getpid(), other)
                time.sleep(0.05)
                reached = True  # the deferred section runs to its end
        assert reached
        assert outputs.interrupted() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
    assert {str(f), d} <= set(outputs.remove_temps())
    assert _listing(tmp_path) == []


_LONG_KERNEL = """
import sys, time
from pathlib import Path
from bnrewrite import outputs
import tensorflow as tf

d = outputs.make_temp_dir(dir=sys.argv[1])
(Path(d) / "part.bin").write_bytes(b"x")
with outputs.handle_signals():
    x = tf.random.normal([1, 2048, 2048, 1])
    print("in kernel", flush=True)
    t0 = time.time()
    tf.nn.max_pool2d(x, 768, 1, "VALID")  # minutes in one C++ kernel (a hostile file's pooling window)
    print("kernel finished after", time.time() - t0, flush=True)
"""


def test_stop_signal_during_a_long_kernel(tmp_path):
    """Red-team round 5: a file whose pooling window (or transposed-convolution stride) keeps one
    TensorFlow kernel busy for minutes kept SIGTERM from Python's handler, which runs only between
    bytecodes: the process exited 5 minutes later. The watchdog takes the signal from the wakeup fd
    and, when the main thread has not taken it within STOP_GRACE, removes the temporaries and exits
    143 with the usual one line."""
    from bnrewrite import outputs

    proc = subprocess.Popen([sys.executable, "-c", _LONG_KERNEL, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        assert proc.stdout.readline().strip() == "in kernel"
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert outputs.STOP_GRACE - 0.5 < took < outputs.STOP_GRACE + 20, took
    assert _lines(err)[-1:] == ["bnrewrite: interrupted (SIGTERM); temporary files removed"], err[-2000:]
    assert _listing(tmp_path) == []  # the registered folder is gone


# --------------------------------------------------------------------------
# calibration spill: cap and folder
# --------------------------------------------------------------------------

def test_spill_cap_unit(tmp_path):
    """The cap is on the bytes on disk *now* (dropped tensors free it); the folder is registered
    and removed by close(); the message names the option and what to do."""
    from bnrewrite import outputs
    from bnrewrite.calibration import _Cache, default_max_spill_bytes
    from bnrewrite.errors import InputError

    cache = _Cache(0, str(tmp_path), max_disk_bytes=2 * 400, cap_given=True)
    a = np.ones((100,), np.float32)  # 400 bytes
    cache.put(("t", 0), 0, a)
    cache.put(("t", 0), 1, a)
    spill = cache._dir
    assert spill in outputs.registered_temps() and Path(spill).parent == tmp_path
    with pytest.raises(InputError) as err:
        cache.put(("u", 0), 0, a)
    assert str(err.value) == ("calibration spill reached --max-spill-gb 0.0 GB; raise it, lower --max-samples, "
                              "or give more --cache-mb")
    np.testing.assert_array_equal(cache.get(("t", 0), 1), a)
    cache.drop(("t", 0))
    cache.put(("u", 0), 0, a)  # room again
    assert cache.peak_disk_bytes == 800
    cache.close()
    assert _listing(tmp_path) == [] and spill not in outputs.registered_temps()
    # default: 4x the calibration data when its size is known, at least 8 GiB
    assert default_max_spill_bytes(np.zeros((10, 4), np.float32)) == 8 * 2**30
    assert default_max_spill_bytes(iter([])) == 8 * 2**30
    big = tmp_path / "big.npy"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate(3 * 2**30)
    assert default_max_spill_bytes(big) == 12 * 2**30


def test_spill_cap_calibrate(tmp_path):
    """calibrate(cache_dir=, max_spill_gb=) on a real model: the spill folder is made in cache_dir
    and removed; a cap that is too small stops with the message; the result is unchanged by the cap."""
    import bnrewrite
    from bnrewrite.calibration import calibrate
    from bnrewrite.errors import InputError

    x = np.random.default_rng(1).normal(3.0, 1.0, (600, 8)).astype(np.float32)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    mg = bnrewrite.load(FIXTURES / "domain_shift.h5")
    with pytest.raises(InputError, match=r"calibration spill reached --max-spill-gb .*raise it"):
        calibrate(mg, x, cache_mb=0, batch_size=50, cache_dir=cache_dir, max_spill_gb=1000 / 2**30)
    assert _listing(cache_dir) == []
    spilled = calibrate(bnrewrite.load(FIXTURES / "domain_shift.h5"), x, cache_mb=0, batch_size=50,
                        cache_dir=cache_dir)
    in_ram = calibrate(bnrewrite.load(FIXTURES / "domain_shift.h5"), x, batch_size=50)
    assert spilled["cache"]["peak_disk_bytes"] > 0 and in_ram["cache"]["peak_disk_bytes"] == 0
    assert spilled["cache"]["max_spill_bytes"] == 8 * 2**30
    assert _listing(cache_dir) == []
    assert [r["new_variance"] for r in spilled["layers"]] == [r["new_variance"] for r in in_ram["layers"]]


def _spill_options_wired() -> bool:
    import importlib
    import inspect

    return "max_spill_gb" in inspect.getsource(importlib.import_module("bnrewrite.passes.calibrate_bn"))


@pytest.mark.xfail(not _spill_options_wired(), strict=True,
                   reason="the calibrate_bn pass does not pass cache_dir/max_spill_gb to calibrate() yet (lead)")
def test_spill_cap_cli(scene):
    """--max-spill-gb and --cache-dir through the command line: exit 2 with the message, the
    spill folder in --cache-dir is removed, no OUT."""
    r, d = scene.batch("spill_cap_cli"), scene.cases["spill_cap_cli"].cwd
    assert r["code"] == 2, r
    assert _lines(r["stderr"]) == [ERROR_PREFIX + "calibration spill reached --max-spill-gb 0.0 GB; raise it, "
                                   "lower --max-samples, or give more --cache-mb"], r["stderr"]
    assert _listing(d) == ["cache"] and _listing(d / "cache") == []


# --------------------------------------------------------------------------
# hostile text in logs
# --------------------------------------------------------------------------

def test_hostile_layer_name(scene):
    """A 5 MB layer name starting ``x ESC[2J CSI31m [bold] CR ALL CHECKS PASSED``: convert and inspect
    exit 0 and print the name with its control characters escaped, its markup shown literally and
    cut to a bounded length with the original length -- no escape sequence, no carriage return,
    no faked line, no 5 MB of stdout."""
    for cid in ("hostile_name_convert", "hostile_name_inspect"):
        r = scene.batch(cid)
        assert r["code"] == 0, (cid, r)
        assert r["stderr"] == "", r["stderr"]
        assert_clean_text(r["stdout"])
        flat = r["stdout"].replace("\n", " ")
        assert "x\\x1b[2J\\x9b31m[bold]\\rALL CHECKS PASSED" in flat, r["stdout"]
        assert f"({len(HOSTILE_NAME) + HUGE:,} chars)" in flat, r["stdout"]
        assert len(r["stdout"]) < 10_000, len(r["stdout"])
    assert _listing(scene.cases["hostile_name_convert"].cwd) == ["out.keras"]


def test_hostile_markup_in_paths(scene):
    """``[/]`` in the input, OUT and report paths (folders named ``in[`` and ``out[``): it used to be
    read as rich markup after OUT was written (MarkupError, exit 2); now it prints literally, exit 0."""
    r, d = scene.batch("hostile_markup_path"), scene.cases["hostile_markup_path"].cwd
    assert r["code"] == 0 and r["stderr"] == "", r
    assert "read in[/]m.h5 " in r["stdout"] and "wrote out[/]o.onnx " in r["stdout"], r["stdout"]
    assert _listing(d / "out[") == ["]o.onnx", "]r.json"]


def test_hostile_name_error(scene):
    """The same name with ``[/]`` (which Keras refuses) and a path with escapes: one clean error line."""
    for cid in ("hostile_slash_name", "hostile_path"):
        line = assert_refused(scene, cid)
        assert_clean_text(line)
    assert "nope\\x1b[2J\\rALL CHECKS PASSED.h5" in assert_refused(scene, "hostile_path", "no such file")


def test_hostile_config_value(scene):
    """A 5 MB config value starting ``[/] ESC[2J CR ALL CHECKS PASSED`` (a key Keras does not take):
    it used to be printed whole in a note, as rich markup (MarkupError after OUT was written: exit 2
    with OUT on disk). Whether it is dropped with a note (exit 0) or refused (exit 2, nothing written),
    the output is bounded and inert."""
    r, d = scene.batch("hostile_config_value"), scene.cases["hostile_config_value"].cwd
    assert r["code"] in (0, 2), r
    assert "Traceback" not in r["stdout"] + r["stderr"]
    assert_clean_text(r["stdout"] + r["stderr"])
    assert len(r["stdout"]) + len(r["stderr"]) < 10_000
    if r["code"] == 0:
        note = next(ln for ln in r["stdout"].splitlines() if "evil" in ln)
        assert "[/]" in note and "chars)" in note, note
        assert _listing(d) == ["out.onnx"]
    else:
        assert len(_lines(r["stderr"])) == 1 and r["stderr"].startswith(ERROR_PREFIX), r["stderr"]
        assert _listing(d) == []


def test_huge_error_message_cut(scene):
    """A 3,000-character path in an error: the line is cut in the middle (the end says what is wrong)."""
    line = assert_refused(scene, "huge_path", "/model.h5: no such file", "(3,037 chars) ...")
    assert len(line) < 1100, len(line)


def test_clean():
    from bnrewrite.textsafe import clean, for_console

    s = "x\x1b[2J\x9b[/]\rALL\nCHECKS\tPASSED\u202e\x00\x7f\udcff é 日本"
    assert clean(s) == "x\\x1b[2J\\x9b[/]\\rALL\\nCHECKS\\tPASSED\\u202e\\x00\\x7f\\udcff é 日本"
    assert for_console("[bold]x[/]") == "\\[bold]x\\[/]"
    assert clean("a" * 300) == "a" * 200 + "... (300 chars)"
    assert clean("\x1b" * 100, limit=10) == "\\x1b\\x1b... (100 chars)"  # never half an escape
    t = time.perf_counter()
    assert clean("y" * 100_000_000) == "y" * 200 + "... (100,000,000 chars)"
    assert time.perf_counter() - t < 1.0
    from rich.console import Console

    console = Console(file=open(os.devnull, "w"), force_terminal=False)
    console.print(f"[bold]note[/] {for_console('[/]' * 10)}")  # escaped markup does not raise


def test_onnxruntime_writes_no_telemetry_files(tmp_path):
    """onnxruntime 1.32 writes ``$TMPDIR/.ses`` and ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``
    (a device id and a queue of telemetry events) when imported; bnrewrite turns that off, so a
    conversion touches no file but its output."""
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    code = "import bnrewrite, onnxruntime, tf2onnx; onnxruntime.InferenceSession"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    # (Keras's own ~/.keras/keras.json and matplotlib's font cache are the frameworks' first-import set-up)
    assert not [p for p in made if p.startswith("tmp/") or "Microsoft" in p or "onnxruntime" in p], made
