"""configure() with another broker: the next publish goes there, not down a connection the
app pooled for the broker before."""

from __future__ import annotations

from orchestration.celery_app import app, configure, configured_settings
from orchestration.settings import Settings


def _pooled_uri() -> str:
    with app.pool.acquire(block=True) as connection:
        return str(connection.as_uri())


def _producer_uri() -> str:
    with app.amqp.producer_pool.acquire(block=True) as producer:
        return str(producer.connection.as_uri())


def test_publishes_follow_a_new_broker_url(settings: Settings) -> None:
    before = configured_settings()
    away = settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:9//"})
    try:
        configure(settings)
        assert ":5672/" in _pooled_uri() and ":5672/" in _producer_uri()
        configure(away)
        assert ":9/" in _pooled_uri() and ":9/" in _producer_uri()
        # And back: the first broker's pools, which the move let go, work again.
        configure(settings)
        assert ":5672/" in _pooled_uri() and ":5672/" in _producer_uri()
    finally:
        configure(before)
    _pooled_uri()
    _producer_uri()
