"""The model registry stored in PostgreSQL: ``manage.py models register / list / remove /
import`` and what ``get_registry`` reads from it. A database of their own: these tests
commit rows, which every other test's registry would otherwise see."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine

from db.models import Job, JobStatus
from ops.cli_models import models
from orchestration import registry as registry_module
from orchestration.registry import (
    RegistryError,
    RegistryUnavailable,
    forget_cached,
    get_registry,
)
from orchestration.settings import reset_settings
from tests.conftest import ADMIN_URL, fresh_database


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    with fresh_database("_registry") as url:
        yield url


@pytest.fixture
def url(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The registry database, emptied after each test; the CLI reads it from the
    environment as ``manage.py`` does."""
    monkeypatch.setenv("BLENDQ_DATABASE_URL", db_url)
    monkeypatch.delenv("BLENDQ_REGISTRY_PATH", raising=False)
    reset_settings()
    forget_cached()
    try:
        yield db_url
    finally:
        with psycopg.connect(_libpq(db_url), autocommit=True) as conn:
            conn.execute("DELETE FROM registered_model")
            conn.execute("DELETE FROM job")
        reset_settings()
        forget_cached()


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def cli(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(models, list(args))
    assert (result.exit_code == 0) == ok, result.output
    return result


def fresh(url: str) -> registry_module.Registry:
    forget_cached()
    return get_registry(None, url)


def test_an_empty_database_gives_the_built_in_tiny_models(url: str) -> None:
    registry = fresh(url)
    assert registry.source == "built-in registry"
    assert {e.name for e in registry.by_role("generator")} == {"tiny-a", "tiny-b", "tiny-c"}


def test_register_list_remove_round_trip(url: str) -> None:
    first = cli("register", "qwen", "--role", "generator", "--backend", "transformers",
                "--path", "/models/qwen", "--param", "max_new_tokens=12", "--param",
                "temperature=0.5", "--param", 'stop="END"', "--revision", "r1")
    # The first entry takes the built-in models away from every process: said, with what
    # the registry still lacks.
    assert "the database registry was empty" in first.stderr
    assert "has no ranker and no fuser yet" in first.stderr
    second = cli("register", "pr", "--role", "ranker", "--backend", "pairranker",
                 "--path", "builtin:tiny-ranker", "--default")
    assert "was empty" not in second.stderr

    registry = fresh(url)
    assert registry.source.startswith("database ")
    # Entries in the database replace the built-in ones altogether.
    assert sorted(registry.entries) == ["pr", "qwen"]
    qwen = registry.get("qwen", "generator")
    assert (qwen.path, qwen.revision, qwen.queue) == ("/models/qwen", "r1", "gen.qwen")
    assert qwen.params == {"max_new_tokens": 12, "temperature": 0.5, "stop": "END"}
    assert registry.default("ranker") == registry.get("pr")

    listed = json.loads(cli("list", "--json").output)
    assert [(e["name"], e["role"], e["queue"]) for e in listed] == [
        ("qwen", "generator", "gen.qwen"), ("pr", "ranker", "rank")]

    assert "removed qwen" in cli("remove", "qwen").output
    assert sorted(fresh(url).entries) == ["pr"]
    assert "not registered" in cli("remove", "qwen", ok=False).output
    cli("remove", "pr")
    assert fresh(url).source == "built-in registry"


def test_register_checks_fields_as_a_registry_file_does(url: str) -> None:
    bad_backend = cli("register", "x", "--role", "ranker", "--backend", "vllm",
                      "--path", "/m", ok=False)
    assert "backend 'vllm' is not one of pairranker, null for ranker" in bad_backend.output
    bad_name = cli("register", "a b", "--role", "generator", "--backend", "vllm",
                   "--path", "/m", ok=False)
    assert "may hold only letters, digits" in bad_name.output
    bad_param = cli("register", "x", "--role", "generator", "--backend", "vllm",
                    "--path", "/m", "--param", "noequals", ok=False)
    assert "'noequals' is not KEY=VALUE" in bad_param.output
    cli("register", "x", "--role", "generator", "--backend", "vllm", "--path", "/m")
    again = cli("register", "x", "--role", "generator", "--backend", "vllm", "--path", "/n",
                ok=False)
    assert "already registered (--replace overwrites it)" in again.output
    cli("register", "x", "--role", "generator", "--backend", "vllm", "--path", "/n",
        "--replace")
    assert fresh(url).get("x").path == "/n"


def test_a_new_default_takes_over_from_the_old_one(url: str) -> None:
    for name in ("r1", "r2"):
        cli("register", name, "--role", "ranker", "--backend", "pairranker",
            "--path", f"builtin:{name}", "--default")
    registry = fresh(url)
    assert [e.name for e in registry.by_role("ranker") if e.default] == ["r2"]


def test_import_reads_the_toml_format_keeps_pauses_and_prunes(url: str, tmp_path: Path) -> None:
    cli("register", "old", "--role", "generator", "--backend", "vllm", "--path", "/old")
    cli("register", "g", "--role", "generator", "--backend", "vllm", "--path", "/before")
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("UPDATE registered_model SET paused = true WHERE name = 'g'")
    file = tmp_path / "fleet.toml"
    file.write_text('[[models]]\nname = "g"\nrole = "generator"\nbackend = "transformers"\n'
                    'path = "./weights/g"\nparams = { max_new_tokens = 8 }\n'
                    '[[models]]\nname = "f"\nrole = "fuser"\nbackend = "genfuser"\n'
                    'path = "builtin:tiny-fuser"\ndefault = true\n')

    out = cli("import", str(file), "--prune").output
    assert "imported 2 entries" in out and "(1 new, 1 replaced, 1 pruned)" in out
    registry = fresh(url)
    assert sorted(registry.entries) == ["f", "g"]
    assert registry.get("g").path == str((tmp_path / "weights" / "g").resolve())
    assert registry.get("g").params == {"max_new_tokens": 8}
    assert registry.default("fuser") == registry.get("f")
    with psycopg.connect(_libpq(url)) as conn:
        row = conn.execute("SELECT paused FROM registered_model WHERE name = 'g'").fetchone()
    assert row == (True,)  # a pause is an admin's decision, not part of the file


def test_import_of_a_bad_file_names_the_entry_and_stores_nothing(url: str,
                                                                  tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text('[[models]]\nname = "ok"\nrole = "generator"\nbackend = "vllm"\n'
                    'path = "/m"\n[[models]]\nname = "bad"\nrole = "generator"\n'
                    'backend = "nope"\npath = "/m"\n')
    out = cli("import", str(file), ok=False).output
    assert "models[2]: backend 'nope'" in out
    assert fresh(url).source == "built-in registry"


def test_remove_is_refused_while_a_job_not_yet_ended_uses_the_model(url: str) -> None:
    cli("register", "g", "--role", "generator", "--backend", "vllm", "--path", "/m")
    engine = create_engine(url)
    with Session(engine) as session:
        session.add(Job(id="job-open", models=["g"], status=JobStatus.IN_PROGRESS))
        session.add(Job(id="job-done", models=["g"], status=JobStatus.COMPLETED))
        session.commit()
    engine.dispose()
    refused = cli("remove", "g", ok=False).output
    assert "used by jobs not yet ended: job-open (--force" in refused
    assert "job-done" not in refused
    cli("remove", "g", "--force")
    assert "g" not in fresh(url).entries


def test_a_row_written_by_hand_with_a_bad_role_is_reported_by_name(url: str) -> None:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("INSERT INTO registered_model (name, role, backend, path, revision, "
                     "queue, params, is_default, paused, updated_at) VALUES ('odd', "
                     "'critic', 'x', '/m', '', 'q', '{}', false, false, now())")
    with pytest.raises(RegistryError, match="model 'odd': role 'critic' is not one of"):
        fresh(url)


def test_a_database_not_yet_migrated_holds_no_entries(tmp_path: Path) -> None:
    # The embedded run reads its registry before it upgrades its SQLite file.
    registry = fresh(f"sqlite:///{tmp_path / 'new.db'}")
    assert registry.source == "built-in registry"


def test_the_last_registry_read_stays_while_the_database_is_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_database("_registry_outage") as url:
        monkeypatch.setenv("BLENDQ_DATABASE_URL", url)
        reset_settings()
        cli("register", "g", "--role", "generator", "--backend", "vllm", "--path", "/m")
        reset_settings()
        before = fresh(url)
        assert sorted(before.entries) == ["g"]
        from db.engine import dispose_engines

        dispose_engines()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{make_url(url).database}" WITH (FORCE)')
        # Due for a re-read, which fails: known models must not become unknown.
        monkeypatch.setattr(registry_module, "DATABASE_REFRESH_SECONDS", 0.0)
        assert get_registry(None, url) is before
    # A process that never read it gets a clear error, not the built-in models (port 1 on
    # this host: nothing listens there).
    forget_cached()
    away = make_url(url).set(port=1).render_as_string(hide_password=False)
    with pytest.raises(RegistryUnavailable, match="cannot read the model registry from "
                                                  r"database postgresql.*:1/"):
        get_registry(None, away)


def test_a_database_not_created_yet_holds_no_entries() -> None:
    # A fresh machine: ``manage.py models list`` before ``db create``.
    missing = make_url(ADMIN_URL).set(drivername="postgresql+psycopg",
                                      database="blendq_registry_never_created")
    registry = fresh(missing.render_as_string(hide_password=False))
    assert registry.source == "built-in registry"
