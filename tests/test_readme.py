"""The README's Python examples run as written (on a fixture copied to ``model.h5``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_api_and_custom_pass_examples_run_as_written(tmp_path, monkeypatch):
    blocks = [b for b in _python_blocks() if "bnrewrite.load(\"model.h5\")" in b or "class DropDropout" in b]
    assert len(blocks) == 2, "the README's API and custom-pass examples"
    shutil.copy(ROOT / "fixtures" / "multi_io.h5", tmp_path / "model.h5")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model_custom.onnx").is_file()
    assert scope["report"].verification["ok"]
