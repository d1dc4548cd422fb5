"""Test-session setup: plans and profiles go to a temporary cache, never the user's."""

import importlib.util
import os
import tempfile

import pytest


def pytest_configure(config):
    # Every test module imports contractssm, which needs torch: without it, say so once
    # instead of one collection error per module.
    if importlib.util.find_spec("torch") is None:
        raise pytest.UsageError(
            "torch is not installed in this Python; install the project first: "
            "pip install torch==2.13.0 && pip install -e '.[test]' (see README, 'Install and "
            "run the tests')"
        )


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache_dir():
    with tempfile.TemporaryDirectory(prefix="contractssm-test-cache-") as tmp:
        old = os.environ.get("CONTRACTSSM_CACHE_DIR")
        os.environ["CONTRACTSSM_CACHE_DIR"] = tmp
        yield tmp
        if old is None:
            os.environ.pop("CONTRACTSSM_CACHE_DIR", None)
        else:
            os.environ["CONTRACTSSM_CACHE_DIR"] = old
