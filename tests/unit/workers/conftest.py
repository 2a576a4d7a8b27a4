from pathlib import Path

import pytest

from workers.tiny_models import ensure_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ensure_tiny_models(tmp_path_factory.mktemp("tiny-models"))
