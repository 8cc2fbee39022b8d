"""Shared pytest fixtures."""
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The real datasets folder: $TEACHERLM_DATA_DIR, else <repo>/../shared/data; skips if absent."""
    env = os.environ.get("TEACHERLM_DATA_DIR")
    path = pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set TEACHERLM_DATA_DIR to the folder "
                    f"described in shared/data/README.md)")
    return path
