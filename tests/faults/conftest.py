"""Fault tests run against their own stack (own database and RabbitMQ vhost), since they
kill its processes."""

from tests.integration.conftest import stack, stack_database_url, vhost_broker_url

__all__ = ["stack", "stack_database_url", "vhost_broker_url"]
