"""Pruning removes old bookkeeping rows and nothing recent or failed."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, col, func, select

from db.api_keys import create_key
from db.models import ApiSession, Chord, ChordPart, Outbox, OutboxStatus, utcnow
from db.retention import prune


def _rows(session: Session, tag: str, age: timedelta) -> None:
    at = utcnow() - age
    session.add(Chord(group_id=f"{tag}-g", size=2, created_at=at))
    session.add_all([ChordPart(group_id=f"{tag}-g", task_id=f"{tag}-t{i}", state="SUCCESS",
                               created_at=at) for i in range(2)])
    session.add_all([Outbox(kind="signature", dedup_key=f"{tag}-{status}", status=status,
                            created_at=at)
                     for status in (OutboxStatus.SENT, OutboxStatus.DROPPED,
                                    OutboxStatus.FAILED, OutboxStatus.PENDING)])
    session.flush()


def _left(session: Session, tag: str) -> tuple[int, int, list[str]]:
    chords = session.exec(select(func.count()).select_from(Chord)
                          .where(col(Chord.group_id).like(f"{tag}-%"))).one()
    parts = session.exec(select(func.count()).select_from(ChordPart)
                         .where(col(ChordPart.group_id).like(f"{tag}-%"))).one()
    outbox = sorted(o.status for o in session.exec(
        select(Outbox).where(col(Outbox.dedup_key).like(f"{tag}-%"))))
    return chords, parts, outbox


def test_old_sent_and_dropped_rows_go_recent_and_failed_ones_stay(session: Session) -> None:
    _rows(session, "old", timedelta(days=10))
    _rows(session, "new", timedelta(hours=1))
    before = utcnow() - timedelta(days=7)
    counted = prune(session, before, dry_run=True)
    assert _left(session, "old")[0] == 1  # a dry run deletes nothing
    done = prune(session, before)
    assert done == counted
    assert (done.chords, done.chord_parts) >= (1, 2) and done.outbox >= 2
    assert _left(session, "old") == (0, 0, ["failed", "pending"])
    assert _left(session, "new") == (1, 2, ["dropped", "failed", "pending", "sent"])


def test_expired_page_sessions_go_live_ones_stay(session: Session) -> None:
    key_id = create_key(session, "retention", "auditor").key_id
    now = utcnow()
    session.add_all([ApiSession(token_hash=f"retention-{name}", key_id=key_id,
                                created_at=now - timedelta(hours=13), expires_at=expires)
                     for name, expires in (("expired", now - timedelta(hours=1)),
                                           ("live", now + timedelta(hours=11)))])
    session.flush()
    assert prune(session, now - timedelta(days=7), dry_run=True).sessions >= 1
    assert prune(session, now - timedelta(days=7)).sessions >= 1
    left = session.exec(select(ApiSession.token_hash)
                        .where(col(ApiSession.key_id) == key_id)).all()
    assert left == ["retention-live"]
