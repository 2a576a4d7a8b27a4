"""Fault tests kill and restart processes: they get a stack of their own (database,
RabbitMQ vhost, processes), which ends with this module's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestration.settings import Settings
from tests.integration.conftest import Stack, running_stack


@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(settings, "faults", tmp_path_factory.mktemp("fault-logs")) as running:
        yield running
