"""Every file bnrewrite writes: checked before any work, placed without clobbering, cleaned up.

bnrewrite runs unattended in CI on files from many hands, so what it *writes*
must never cost anyone data:

* :func:`check_outputs` refuses, before any work is done, every output path
  (``OUT``, ``--report``, ...) that is an input file (same device and inode,
  so any spelling, a symlink or a hard link to it; even with ``--force``), is
  the same file as another output, is a directory, a FIFO, a device or a
  socket, exists without ``force``, or lies in a folder that is missing, not
  a folder or not writable;
* :func:`write_temp` writes to ``NAME`` inside a private folder (mode 0700,
  made by ``mkdtemp``) beside the destination, named
  ``.NAME.bnrewrite-tmp-XXXXXXXX`` so a leftover is recognisable; the writer
  gets a path nobody else can create or replace (in a shared folder a name
  reserved and released could be taken by a planted symlink in between), and
  :func:`place` moves it into place: without ``force`` it
  never replaces a file that appeared in the meantime (``os.link`` is atomic
  and fails if the name exists; where hard links are not supported an
  ``O_CREAT | O_EXCL`` reservation is used), with ``force`` it is
  ``os.replace``;
* every temporary file and folder this process makes (those temporary
  outputs, the calibration spill folder) is in a registry, removed by
  :func:`remove_temps` -- which the CLI calls on every failure and on SIGINT,
  SIGTERM and SIGHUP (:func:`handle_signals`) -- and at interpreter exit.

Signals: :func:`handle_signals` makes SIGTERM and SIGHUP behave like Ctrl-C:
the handler raises :class:`~bnrewrite.errors.Interrupted` (a
``KeyboardInterrupt``) in the main thread; the CLI removes the registered
temporaries and exits 128 + signal number (130, 143, 129). A signal that is
ignored when the handlers are installed (``nohup``) stays ignored.

Python runs a signal handler only when the main thread is back in the interpreter; a
long TensorFlow or onnxruntime kernel (a 1024-wide pooling window of a hostile file
ran for 5 minutes past SIGTERM) keeps it away. A watchdog thread therefore reads
the signal from the interpreter's wakeup fd (written by the C-level handler at
once; those kernels release the GIL): if the main thread has not taken the signal
within :data:`STOP_GRACE` seconds, the watchdog removes the temporaries itself,
prints the same one line and ends the process with the same exit code.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import InputError, Interrupted

TEMP_MARK = ".bnrewrite-tmp-"
SPILL_PREFIX = "bnrewrite-calib-"
STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)

# ---------------------------------------------------------------- registry of temporaries
_temps: dict[str, str] = {}  # path -> "file" | "dir", in creation order
_owner = os.getpid()  # a forked child must not remove its parent's files
_atexit_done = False


def register_temp(path, kind: str = "file") -> None:
    """Remember a temporary file (``kind="file"``) or folder (``"dir"``) for :func:`remove_temps`."""
    global _atexit_done, _owner
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    if not _temps:
        _owner = os.getpid()
    _temps[os.fspath(path)] = kind
    if not _atexit_done:
        atexit.register(remove_temps)
        _atexit_done = True


def unregister_temp(path) -> None:
    """Forget ``path`` (it was placed, or removed by its owner)."""
    _temps.pop(os.fspath(path), None)


def registered_temps() -> list[str]:
    return list(_temps)


def remove_temps() -> list[str]:
    """Remove every registered temporary file and folder (newest first); return what was there."""
    if os.getpid() != _owner:
        return []
    removed = []
    with _signals_deferred():
        for path, kind in reversed(list(_temps.items())):
            try:
                if kind == "dir":
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path)
                else:
                    os.unlink(path)
                    removed.append(path)
            except FileNotFoundError:
                pass
            except OSError:
                continue  # keep it registered: atexit tries again
            _temps.pop(path, None)
    return removed


def discard(tmp) -> None:
    """Remove one temporary output made by :func:`write_temp` (a failed or unverified output)."""
    tmp = Path(tmp)
    with _signals_deferred():
        if _temps.get(os.fspath(tmp.parent)) != "dir":  # its private folder goes with it (_release)
            tmp.unlink(missing_ok=True)
        _release(tmp)


def _release(tmp: Path) -> None:
    """Forget ``tmp`` (placed or discarded) and remove its private folder."""
    unregister_temp(tmp)
    if _temps.get(os.fspath(tmp.parent)) == "dir":
        shutil.rmtree(tmp.parent, ignore_errors=True)
        unregister_temp(tmp.parent)


def make_temp_dir(prefix: str = SPILL_PREFIX, dir=None) -> str:
    """``tempfile.mkdtemp`` whose folder is registered at once (a signal cannot slip in between)."""
    with _signals_deferred():
        path = tempfile.mkdtemp(prefix=prefix, dir=None if dir is None else os.fspath(dir))
        register_temp(path, "dir")
    return path


# ---------------------------------------------------------------- signals
_received: int | None = None  # the first stop signal of this run
_pending: int | None = None  # arrived inside a deferred section
_defer = 0
_quiet = False  # exiting: signals are recorded, not raised


#: seconds the main thread has to take a stop signal before the watchdog stops the process itself
STOP_GRACE = 3.0
_taken = 0  # stop signals the main thread's handler has run for


def _handler(signum, frame):
    global _received, _pending, _taken
    _taken += 1
    if _received is None:
        _received = signum
    if _quiet:
        return
    if _defer:
        _pending = _pending or signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_deferred():
    """Run a few lines (create + register, link + unlink + unregister) without a signal in between."""
    global _defer, _pending
    _defer += 1
    try:
        yield
    finally:
        _defer -= 1
        if _defer == 0 and _pending is not None and not _quiet:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def interrupted() -> int | None:
    """The stop signal received since the handlers were installed, or None."""
    return _received


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if a stop signal arrived: a framework with a bare ``except:``
    (Keras has several) can swallow the exception the handler raised, so the pipeline checks
    again at each stage and before anything is put in place."""
    signum = interrupted()
    if signum is not None:
        raise Interrupted(signum)


def exiting() -> None:
    """From now on signals are recorded but raise nothing (the CLI is cleaning up and exiting)."""
    global _quiet
    _quiet = True


def install_signal_handlers() -> Callable[[], None]:
    """Handle SIGINT, SIGTERM and SIGHUP like Ctrl-C (raise :class:`Interrupted` in the main thread).

    Returns a function that restores the previous handlers. Signals that are
    ignored (``SIG_IGN``, e.g. SIGHUP under ``nohup``) are left ignored. Does
    nothing outside the main thread (Python allows handlers only there).
    """
    global _received, _pending, _quiet, _defer, _taken
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _received = _pending = None
    _quiet, _defer, _taken = False, 0, 0
    previous = {}
    for s in STOP_SIGNALS:
        old = signal.getsignal(s)
        if old == signal.SIG_IGN:
            continue
        previous[s] = old
        signal.signal(s, _handler)
    stop_watchdog = _start_watchdog()

    def restore() -> None:
        global _received, _pending
        stop_watchdog()
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        # a signal belongs to the run it stopped: a later run in this process starts clean
        _received = _pending = None

    return restore


def _start_watchdog() -> Callable[[], None]:
    """Start the thread that stops the process when a stop signal is not taken by the main thread
    within :data:`STOP_GRACE` (module docstring); return the function that ends it."""
    import socket

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread after all
        reader.close()
        writer.close()
        return lambda: None
    done = threading.Event()
    seen = 0

    def watch() -> None:
        nonlocal seen
        while not done.is_set():
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            stops = [b for b in data if b in STOP_SIGNALS]
            if not stops:
                continue
            signum, seen = stops[0], seen + len(stops)
            waited = 0.0
            while waited < STOP_GRACE and _taken < seen and not done.is_set():
                done.wait(0.05)
                waited += 0.05
            if _taken >= seen or done.is_set() or _quiet:
                continue  # the main thread took it: the usual cleanup runs there
            remove_temps()
            stop = Interrupted(signum)
            os.write(2, (stop.stop_line + "\n").encode())
            os._exit(stop.exit_code)

    thread = threading.Thread(target=watch, name="bnrewrite-stop-watchdog", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        signal.set_wakeup_fd(old_fd)
        writer.close()
        thread.join(timeout=1.0)
        reader.close()

    return stop


@contextlib.contextmanager
def handle_signals():
    """``install_signal_handlers()`` for the duration of a ``with`` block."""
    global _quiet
    restore = install_signal_handlers()
    try:
        yield
    finally:
        _quiet = True
        restore()
        _quiet = False


# ---------------------------------------------------------------- checks before any work
def _stat(path: Path, follow: bool = True) -> os.stat_result | None:
    try:
        return os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:  # e.g. ELOOP, EACCES on a parent
        raise InputError(f"{path}: cannot be examined ({e.strerror or e})") from None


def _input_ids(inputs: Iterable) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) of every input file (a folder input: the files directly in it)."""
    ids: dict[tuple[int, int], str] = {}
    for p in inputs:
        if p is None:
            continue
        p = Path(p)
        st = _stat(p)
        if st is None:
            continue
        ids.setdefault((st.st_dev, st.st_ino), str(p))
        if stat.S_ISDIR(st.st_mode):
            try:
                entries = list(os.scandir(p))
            except OSError:
                entries = []
            for e in entries:
                try:
                    if e.is_file():
                        est = e.stat()
                        ids.setdefault((est.st_dev, est.st_ino), e.path)
                except OSError:
                    continue
    return ids


def _kind(mode: int) -> str | None:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def check_folder(folder, what: str = "output folder") -> None:
    """``folder`` exists, is a folder and is writable (files can be created in it)."""
    folder = Path(folder)
    st = _stat(folder)
    if st is None:
        raise InputError(f"{folder}: {what} does not exist")
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{folder}: {what} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: {what} is not writable")


def check_outputs(
    outputs: Sequence[tuple[object, str]],
    *,
    inputs: Iterable = (),
    force: bool = False,
) -> None:
    """Refuse, before any work, every output that would lose data or fail late.

    ``outputs`` is a list of ``(path, what)``: ``what`` names the output in
    messages (``"output"`` for OUT, ``"--report"``); ``None`` paths are
    skipped. ``inputs`` are the files (or folders of files) the run reads:
    no output may be one of them, whatever the spelling and even with
    ``force`` (same ``st_dev``/``st_ino``: symlinks and hard links included).
    Raises :class:`~bnrewrite.errors.InputError` (exit 2) naming the path.
    """
    input_ids = _input_ids(inputs)
    seen: dict[tuple, tuple[str, str]] = {}  # identity -> (path, what)
    for raw, what in outputs:
        if raw is None:
            continue
        path = Path(raw)
        if path.name in ("", ".", ".."):
            raise InputError(f"{path}: {what} names a folder, not a file")
        lst = _stat(path, follow=False)
        st = _stat(path) if lst is not None else None
        if st is not None and (st.st_dev, st.st_ino) in input_ids:
            src = input_ids[(st.st_dev, st.st_ino)]
            label = "output" if what == "output" else what
            raise InputError(
                f"{path}: {label} is the input file{'' if src == str(path) else f' {src}'}; "
                "refusing to overwrite it (also with --force)"
            )
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise InputError(f"{path}: {'' if what == 'output' else what + ' '}is a directory")
        if st is not None and _kind(st.st_mode):
            raise InputError(f"{path}: {what} is {_kind(st.st_mode)}, not a regular file; refusing to write to it")
        if lst is not None and not force:
            raise InputError(f"{path}: {'' if what == 'output' else what + ' '}already exists "
                             "(use --force to overwrite)")
        check_folder(path.parent, "output folder" if what == "output" else f"{what} folder")
        pst = os.stat(path.parent)
        keys = [("entry", pst.st_dev, pst.st_ino, path.name.casefold())]
        if st is not None:
            keys.append(("file", st.st_dev, st.st_ino))
        for key in keys:
            if key in seen:
                other, other_what = seen[key]
                raise InputError(f"{path}: {what} is the same file as the {other_what} {other}")
        for key in keys:
            seen[key] = (str(path), what)


# ---------------------------------------------------------------- writing and placing
def write_temp(dst, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a fresh path in a private folder beside ``dst``; return that path.

    ``tmp`` has ``dst``'s name (Keras picks the format from the suffix) and
    does not exist yet (some Keras versions refuse to save over a file). The
    folder is registered (removed on any failure, on a stop signal and at
    exit); the caller verifies ``tmp`` and then calls :func:`place` or
    :func:`discard`.
    """
    dst = Path(dst)
    with _signals_deferred():
        try:
            # a Path, so that the registered name is spelled as tmp.parent is ("./x" is "x")
            folder = Path(tempfile.mkdtemp(prefix=f".{dst.name}{TEMP_MARK}", dir=dst.parent))
        except OSError as e:
            raise InputError(f"{dst.parent}: cannot create a temporary folder ({e.strerror})") from None
        register_temp(folder, "dir")
    tmp = folder / dst.name
    try:
        write(tmp)
    except BaseException:
        discard(tmp)
        raise
    return tmp


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS,
            errno.EACCES, errno.EINVAL}


def _appeared(dst: Path) -> InputError:
    return InputError(f"{dst}: appeared while bnrewrite was working (another run?); "
                      "not overwriting it (use --force to overwrite)")


def place(tmp, dst, *, force: bool = False) -> None:
    """Move the finished temporary file ``tmp`` to ``dst``.

    Without ``force`` a file at ``dst`` -- one that appeared since the checks,
    e.g. from a concurrent run -- is never replaced: :class:`InputError`
    (exit 2), and ``tmp`` is left to the caller (to :func:`discard`). With
    ``force`` an existing regular file (or symlink, which is replaced, not
    followed) is replaced atomically; a directory, FIFO or device is refused.
    """
    tmp, dst = Path(tmp), Path(dst)
    check_interrupted()  # OUT is never put in place after a stop signal
    _fsync(tmp)  # the data is on disk before the name points to it
    if force:
        lst = _stat(dst, follow=False)
        if lst is not None and not (stat.S_ISREG(lst.st_mode) or stat.S_ISLNK(lst.st_mode)):
            kind = "a directory" if stat.S_ISDIR(lst.st_mode) else (_kind(lst.st_mode) or "not a regular file")
            raise InputError(f"{dst}: is {kind}; refusing to replace it")
        with _signals_deferred():
            os.replace(tmp, dst)
            _release(tmp)
        return
    try:
        with _signals_deferred():
            os.link(tmp, dst)  # atomic, and fails if dst exists
            os.unlink(tmp)
            _release(tmp)
        return
    except FileExistsError:
        raise _appeared(dst) from None
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
    # No hard links here (some network or FAT file systems): reserve the name, then replace it.
    with _signals_deferred():
        try:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise _appeared(dst) from None
        register_temp(dst)  # our empty reservation: removed if we are stopped now
        try:
            mine = os.fstat(fd)
        finally:
            os.close(fd)
    try:
        with _signals_deferred():
            os.replace(tmp, dst)
            _release(tmp)
            unregister_temp(dst)
    except BaseException:
        st = _stat(dst, follow=False)
        if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            discard(dst)
        else:
            unregister_temp(dst)
        raise


def write_text(dst, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``dst`` through a temporary file and :func:`place` (never a partial file)."""
    tmp = write_temp(dst, lambda p: p.write_text(text, encoding="utf-8"))
    try:
        place(tmp, dst, force=force)
    except BaseException:
        discard(tmp)
        raise
