"""Settings for the whole test session."""

from __future__ import annotations

import os

import pytest

from vpnid.classifier.labelling.loading import CACHE_ENV


@pytest.fixture(autouse=True, scope="session")
def compiled_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Models compiled during tests go to a temporary cache, not the user's (subprocesses inherit it)."""
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("model-cache"))
