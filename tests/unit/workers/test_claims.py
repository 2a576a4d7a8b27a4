"""Chunk claims on real PostgreSQL advisory locks: a replica never takes a chunk another
holds, and one whose own chunk is held works on others before waiting for it."""

from __future__ import annotations

import threading
import time

from sqlalchemy import create_engine, text

from workers.claims import claim_chunks, namespace

WAITING = text("SELECT x FROM unnest(CAST(:ids AS bigint[])) AS x WHERE x <> :own LIMIT :look")
NS = namespace("gen:test-claims")


def hold(pg_url: str, chunk_id: int, release: threading.Event, held: threading.Event) -> None:
    """Another replica holding ``chunk_id`` until ``release``."""
    engine = create_engine(pg_url)
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": NS, "key": chunk_id})
        held.set()
        release.wait(30)
    engine.dispose()


def test_a_held_own_chunk_is_skipped_then_waited_for(pg_url: str) -> None:
    release, held = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold, args=(pg_url, 101, release, held))
    holder.start()
    held.wait(10)
    try:
        with claim_chunks(pg_url, NS, 101, WAITING, {"ids": [101, 102, 103, 104]}, 2,
                          wait_own=False) as claim:
            # The own chunk is held elsewhere: the others are taken meanwhile.
            assert claim.chunks == [102, 103]
            threading.Timer(0.5, release.set).start()
            started = time.monotonic()
            claim.wait_for(101)
            assert time.monotonic() - started >= 0.3
            assert claim.chunks == [102, 103, 101]
    finally:
        release.set()
        holder.join()


def test_claimed_chunks_are_skipped_by_a_second_replica(pg_url: str) -> None:
    ids = {"ids": [201, 202, 203]}
    with claim_chunks(pg_url, NS, 201, WAITING, ids, 5) as first:
        assert first.chunks == [201, 202, 203]
        with claim_chunks(pg_url, NS, 204, WAITING, ids, 5) as second:
            assert second.chunks == [204]
    # Released with the first block: a later claim gets them.
    with claim_chunks(pg_url, NS, 204, WAITING, ids, 5) as third:
        assert third.chunks == [204, 201, 202, 203]


def test_waiting_for_the_own_chunk_blocks_until_it_is_free(pg_url: str) -> None:
    release, held = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold, args=(pg_url, 301, release, held))
    holder.start()
    held.wait(10)
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    with claim_chunks(pg_url, NS, 301, WAITING, {"ids": [302]}, 1) as claim:
        assert time.monotonic() - started >= 0.3
        assert claim.chunks == [301, 302]
    holder.join()


def test_no_claim_is_taken_past_the_limit(pg_url: str) -> None:
    # Finding and claiming is one statement: the scan must stop at the limit, leaving the
    # later chunks to another replica.
    ids = {"ids": [401, 402, 403, 404, 405, 406]}
    with claim_chunks(pg_url, NS, 401, WAITING, ids, 2) as first:
        assert first.chunks == [401, 402, 403]
        with claim_chunks(pg_url, NS, 407, WAITING, ids, 10) as second:
            assert second.chunks == [407, 404, 405, 406]
