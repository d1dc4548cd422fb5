"""Test-session setup: plans and profiles go to a temporary cache, never the user's."""

import os
import tempfile

import pytest


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
