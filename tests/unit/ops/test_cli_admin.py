"""The admin and audit command groups are wired into manage.py."""

from __future__ import annotations

from tests.unit.ops.test_cli import manage


def test_admin_groups_and_job_commands_are_listed() -> None:
    result = manage("--help")
    assert result.returncode == 0
    for group in ("queues", "workers", "audit"):
        assert f"  {group}" in result.stdout
    jobs = manage("jobs", "--help").stdout
    for command in ("list", "show", "retry", "submit", "cancel"):
        assert f"  {command}" in jobs


def test_audit_label_needs_exactly_one_verdict() -> None:
    result = manage("audit", "label", "1", "--author", "ana")
    assert result.returncode == 2 and "exactly one of" in result.stderr
    result = manage("audit", "label", "1", "--better", "tiny-a", "--author", "ana")
    assert result.returncode == 2 and "go together" in result.stderr
