"""Shared, session-scoped fixtures: every test model is built once, every
(model, output format) conversion runs once, however many tests look at it."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

import models  # noqa: E402  (tests/models.py)

#: tolerance of every "same outputs" comparison (the issue's 1e-4)
ATOL = 1e-4
RTOL = 1e-4


def assert_close(got, want, what=""):
    """Outputs agree within ATOL + RTOL * |want| element-wise (and shapes match)."""
    import numpy as np

    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=what)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def get_model(model_dir):
    """``get_model(model_id) -> models.Built``, built (and saved) at most once."""
    cache: dict[str, models.Built] = {}

    def get(model_id: str) -> models.Built:
        if model_id not in cache:
            cache[model_id] = models.build(model_id, model_dir)
        return cache[model_id]

    return get


@pytest.fixture(scope="session", params=models.MODEL_IDS)
def built(request, get_model):
    """Each test model in turn (tf_keras .h5 and Keras 3 .keras)."""
    return get_model(request.param)


@pytest.fixture(scope="session")
def get_graph(get_model):
    """``get_graph(model_id) -> ModelGraph`` from ``bnrewrite.load``, read once."""
    import bnrewrite

    cache = {}

    def get(model_id):
        if model_id not in cache:
            cache[model_id] = bnrewrite.load(get_model(model_id).path)
        return cache[model_id]

    return get


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="session")
def get_converted(get_model, out_dir):
    """``get_converted(model_id, suffix) -> (report, out_path)``.

    Runs ``bnrewrite.convert`` once per (model, suffix) with the default
    options (verification on, BN folding on); a failure is remembered and
    re-raised for every test that asks for the same conversion.
    """
    import bnrewrite

    cache: dict = {}

    def get(model_id: str, suffix: str):
        key = (model_id, suffix)
        if key not in cache:
            b = get_model(model_id)
            dst = out_dir / f"{b.path.stem}.out{suffix}"
            try:
                cache[key] = (bnrewrite.convert(b.path, dst), dst)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                cache[key] = e
        got = cache[key]
        if isinstance(got, BaseException):
            raise got
        return got

    return get
