"""Chunk leases a worker renews while it works on them.

The sweeper (orchestration/sweeper.py) re-publishes a chunk whose lease lapsed, so a
worker must keep renewing the leases of the chunks it holds, however long its model call
runs. A thread of the worker process does it every third of the lease, on its own
connection, apart from the task's transactions; a process that dies stops renewing, and
that is the signal.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from db.engine import session_scope
from orchestration import lifecycle
from orchestration.settings import Settings

log = structlog.get_logger(__name__)


class LeaseKeeper:
    def __init__(self, database_url: str, lease_seconds: int) -> None:
        self.database_url = database_url
        self.lease_seconds = lease_seconds
        self._held: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    @contextmanager
    def holding(self, chunk_ids: list[int]) -> Iterator[None]:
        with self._lock:
            self._held.update(chunk_ids)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._renew_forever,
                                                name="blendq-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.subtract(chunk_ids)
                self._held = +self._held  # drop counts that reached zero

    def renew_now(self) -> int:
        ids = self.held()
        if not ids:
            return 0
        # A lost renewal costs at most a needless sweep: no need to wait for the disk.
        with session_scope(self.database_url, flush_wal=False) as session:
            return lifecycle.renew_leases(session, ids, self.lease_seconds)

    def _renew_forever(self) -> None:
        interval = max(self.lease_seconds / 3, 0.5)
        while not self._wake.wait(interval):
            try:
                self.renew_now()
            except Exception as exc:  # the database is away: the next beat tries again
                log.warning("lease.renew_failed", error=f"{type(exc).__name__}: {exc}")


_keepers: dict[tuple[str, int], LeaseKeeper] = {}
_keepers_lock = threading.Lock()


def keeper(settings: Settings) -> LeaseKeeper:
    """This process's keeper for ``settings``' database (one renewing thread each)."""
    key = (settings.database_url, settings.chunk_lease_seconds)
    with _keepers_lock:
        found = _keepers.get(key)
        if found is None:
            found = _keepers[key] = LeaseKeeper(*key)
        return found


@contextmanager
def holding(settings: Settings, chunk_ids: list[int]) -> Iterator[None]:
    """Keep the leases of ``chunk_ids`` alive while the block runs."""
    with keeper(settings).holding(chunk_ids):
        yield
