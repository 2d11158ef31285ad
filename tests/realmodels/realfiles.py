"""Real model files: written by real people with real Keras versions, kept with their provenance.

The ports in ``archs.py`` follow public code, but bnrewrite writes the files; these were written by
the Keras (or tf.keras) their authors ran, with the weights and statistics they trained. Each one is
committed under ``fixtures/real/<owner>__<repo>/`` and described in ``fixtures/real/manifest.json``:
where it comes from (repository, commit, path, licence as read), its sha256 (checked before use),
what wrote it and what each output format is expected to give (``"ok"``, or the start of the
refusal bnrewrite must give). A case of the set (``CASES``) "builds" by copying the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "fixtures" / "real"
MANIFEST = ROOT / "manifest.json"


def entries() -> list[dict]:
    if not MANIFEST.exists():
        return []
    return json.loads(MANIFEST.read_text())["files"]


def sha256(path: Path) -> str:
    """Of a file's bytes; of a folder (a SavedModel), of the lines ``<sha256>  <relative path>`` of its
    files in sorted order (what ``sha256sum`` prints)."""
    path = Path(path)
    if path.is_dir():
        lines = "".join(f"{sha256(p)}  {p.relative_to(path).as_posix()}\n"
                        for p in sorted(path.rglob("*")) if p.is_file())
        return hashlib.sha256(lines.encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def copy_into(entry: dict, dst: Path) -> Path:
    """Copy the committed file to ``dst`` after checking it is the file the manifest names."""
    src = ROOT / entry["file"]
    got = sha256(src)
    if got != entry["sha256"]:
        raise RuntimeError(f"{src}: sha256 {got} is not the manifest's {entry['sha256']}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst
