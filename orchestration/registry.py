"""The model registry: which generators, rankers and fusers exist and how to load them.

A TOML file (``BLENDQ_REGISTRY_PATH``) with one ``[[models]]`` table per entry::

    [[models]]
    name = "tiny-a"            # also names the queue gen.<name> for generators
    role = "generator"         # generator | ranker | fuser
    backend = "transformers"   # generators: transformers | vllm | openai;
                               # rankers: pairranker; fusers: genfuser | aggregator
    path = "/models/qwen-0.5b" # a directory, builtin:NAME for the tiny models, or for
                               # the openai backend the server's base URL (…/v1)
    revision = ""              # optional; empty means "derive from the weights"
    default = true             # optional; the ranker / fuser used when a job names none
    [models.params]            # decoding or fusion parameters
    max_new_tokens = 64        # also temperature, top_p, seed, batch_size
    overflow = "truncate"      # or "fail": what a prompt longer than the context gets
    # openai backend: model, endpoint ("chat" | "completions"), concurrency, timeout,
    # max_retries, api_key_env (the NAME of the variable that holds the key)

Relative paths are resolved against the registry file's folder.

Where a process finds its registry (``get_registry``):

1. ``BLENDQ_REGISTRY_PATH`` set: that file, read once per process, as before. It overrides
   the database for this process only (a single host, a test, a trial of a new entry).
2. Otherwise the database (``registered_model``, filled by ``manage.py models register``
   or ``models import FILE``): a worker host needs only the database and broker URLs and
   its weights. Re-read at most every ``DATABASE_REFRESH_SECONDS``; while the database is
   unreachable the last registry read stays in use.
3. A database that holds no entries (or is not migrated, or not even created yet): the
   built-in tiny models.
"""

from __future__ import annotations

import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from db.engine import session_scope
from db.queries_registry import ModelRow, has_registry_table, registered_models
from orchestration.settings import get_settings

ROLES = ("generator", "ranker", "fuser")
# "null": no compute, for measuring the control plane (workers/null_models.py).
BACKENDS = {
    "generator": ("transformers", "vllm", "openai", "null"),
    "ranker": ("pairranker", "null"),
    "fuser": ("genfuser", "aggregator", "null"),
}
BUILTIN_PREFIX = "builtin:"

# Tiny random models built on first use: the embedded default that needs no download.
BUILTIN_REGISTRY = """
[[models]]
name = "tiny-a"
role = "generator"
backend = "transformers"
path = "builtin:tiny-a"
params = { max_new_tokens = 24, temperature = 0.0 }

[[models]]
name = "tiny-b"
role = "generator"
backend = "transformers"
path = "builtin:tiny-b"
params = { max_new_tokens = 24, temperature = 0.0 }

[[models]]
name = "tiny-c"
role = "generator"
backend = "transformers"
path = "builtin:tiny-c"
params = { max_new_tokens = 24, temperature = 0.0 }

[[models]]
name = "tiny-ranker"
role = "ranker"
backend = "pairranker"
path = "builtin:tiny-ranker"
default = true

[[models]]
name = "tiny-fuser"
role = "fuser"
backend = "genfuser"
path = "builtin:tiny-fuser"
default = true
params = { top_k = 3, num_beams = 2, max_new_tokens = 24 }
"""


# How stale a process's copy of the database registry may get: a model registered or
# removed is seen by running processes within this many seconds.
DATABASE_REFRESH_SECONDS = 10.0


class RegistryError(ValueError):
    pass


class RegistryUnavailable(RegistryError):
    """The database could not be read and this process has no registry from it yet."""

    def __init__(self, message: str, *, missing_database: bool = False) -> None:
        super().__init__(message)
        # The server answered that the database does not exist (not created yet).
        self.missing_database = missing_database


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str
    backend: str
    path: str
    revision: str = ""
    default: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        return {"generator": f"gen.{self.name}", "ranker": "rank", "fuser": "fuse"}[self.role]

    @property
    def builtin(self) -> str | None:
        return self.path[len(BUILTIN_PREFIX):] if self.path.startswith(BUILTIN_PREFIX) else None


@dataclass(frozen=True)
class Registry:
    entries: dict[str, ModelEntry]
    source: str

    def get(self, name: str, role: str | None = None) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self.entries)) or "none"
            raise RegistryError(f"unknown model {name!r} (registry {self.source} has: {known})")
        if role is not None and entry.role != role:
            raise RegistryError(f"model {name!r} is a {entry.role}, not a {role}")
        return entry

    def by_role(self, role: str) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.role == role]

    def default(self, role: str) -> ModelEntry | None:
        entries = self.by_role(role)
        marked = [e for e in entries if e.default]
        if marked:
            return marked[0]
        return entries[0] if len(entries) == 1 else None


def parse_registry(text: str, source: str, base_dir: Path | None = None) -> Registry:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{source}: not valid TOML: {exc}") from exc
    raw_entries = data.get("models")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise RegistryError(f"{source}: needs at least one [[models]] table")
    return _registry_of(
        [(f"{source}: models[{position}]", raw) for position, raw in
         enumerate(raw_entries, start=1)], source, base_dir)


def _registry_of(raws: list[tuple[str, Any]], source: str,
                 base_dir: Path | None = None) -> Registry:
    """``raws``: (where, raw table) pairs, ``where`` naming the entry in error messages."""
    entries: dict[str, ModelEntry] = {}
    for where, raw in raws:
        entry = _parse_entry(raw, where, base_dir)
        if entry.name in entries:
            raise RegistryError(f"{where}: name {entry.name!r} appears twice")
        entries[entry.name] = entry
    for role in ("ranker", "fuser"):
        if len([e for e in entries.values() if e.role == role and e.default]) > 1:
            raise RegistryError(f"{source}: more than one default {role}")
    return Registry(entries=entries, source=source)


def parse_entry(raw: dict[str, Any], where: str) -> ModelEntry:
    """One entry from fields given one by one (``models register``), checked as a
    registry file's table is."""
    return _parse_entry(raw, where, None)


def _parse_entry(raw: Any, where: str, base_dir: Path | None) -> ModelEntry:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: must be a table")
    for key in ("name", "role", "backend", "path"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise RegistryError(f"{where}: field {key!r} must be a non-empty string")
    unknown = set(raw) - {"name", "role", "backend", "path", "revision", "default", "params"}
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name, role, backend = raw["name"], raw["role"], raw["backend"]
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise RegistryError(f"{where}: name {name!r} may hold only letters, digits, - _ .")
    if role not in ROLES:
        raise RegistryError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if backend not in BACKENDS[role]:
        raise RegistryError(
            f"{where}: backend {backend!r} is not one of {', '.join(BACKENDS[role])} for {role}"
        )
    if not isinstance(raw.get("default", False), bool):
        raise RegistryError(f"{where}: field 'default' must be true or false")
    if not isinstance(raw.get("revision", ""), str):
        raise RegistryError(f"{where}: field 'revision' must be a string")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise RegistryError(f"{where}: field 'params' must be a table")
    path = raw["path"]
    if base_dir is not None and not path.startswith(BUILTIN_PREFIX) and path.startswith("."):
        path = str((base_dir / path).resolve())
    return ModelEntry(
        name=name, role=role, backend=backend, path=path,
        revision=str(raw.get("revision", "")), default=bool(raw.get("default", False)),
        params=dict(params),
    )


def load_registry(path: Path | None) -> Registry:
    if path is None:
        return parse_registry(BUILTIN_REGISTRY, "built-in registry")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc.strerror}") from exc
    return parse_registry(text, str(path), base_dir=path.parent)


def entry_row(entry: ModelEntry, paused: bool = False) -> ModelRow:
    """The row that stores ``entry`` in ``registered_model``."""
    return ModelRow(name=entry.name, role=entry.role, backend=entry.backend, path=entry.path,
                    revision=entry.revision, queue=entry.queue, params=dict(entry.params),
                    is_default=entry.default, paused=paused)


def registry_from_rows(rows: list[ModelRow], source: str) -> Registry:
    """The registry the rows hold, checked as a file is: a row written by hand with a bad
    role or backend is reported by name instead of failing a task later."""
    return _registry_of(
        [(f"{source}: model {r.name!r}",
          {"name": r.name, "role": r.role, "backend": r.backend, "path": r.path,
           "revision": r.revision, "default": r.is_default, "params": r.params})
         for r in rows], source)


def database_source(database_url: str) -> str:
    """How a database registry names itself in messages (no password)."""
    return f"database {make_url(database_url).render_as_string(hide_password=True)}"


def load_database_registry(database_url: str) -> Registry | None:
    """The registry stored in the database; None when it holds no entries (or has no
    registry table yet). Raises RegistryUnavailable when the database cannot be read
    (``missing_database`` when it does not exist)."""
    try:
        with session_scope(database_url) as session:
            rows = registered_models(session) if has_registry_table(session) else []
    except SQLAlchemyError as exc:
        raise RegistryUnavailable(
            f"cannot read the model registry from {database_source(database_url)}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
            missing_database=_no_such_database(exc)) from exc
    return registry_from_rows(rows, database_source(database_url)) if rows else None


def _no_such_database(exc: SQLAlchemyError) -> bool:
    # The server's FATAL for an unknown database name; libpq gives no SQLSTATE for a
    # failed connection, so the message is all there is.
    message = str(exc)
    return 'database "' in message and '" does not exist' in message


_cache: dict[Path | None, Registry] = {}
# database URL -> (monotonic time read, registry); the built-in one when the table is empty.
_db_cache: dict[str, tuple[float, Registry]] = {}
_lock = threading.Lock()


def get_registry(path: Path | None, database_url: str | None = None) -> Registry:
    """This process's registry (see the module's docstring for where it comes from).

    ``database_url``: the database to read when ``path`` is None; by default the one the
    process's Celery app was configured with, else ``BLENDQ_DATABASE_URL``."""
    if path is not None:
        with _lock:
            if path not in _cache:
                _cache[path] = load_registry(path)
            return _cache[path]
    url = database_url or _configured_database_url()
    with _lock:
        cached = _db_cache.get(url)
        if cached is not None and time.monotonic() - cached[0] < DATABASE_REFRESH_SECONDS:
            return cached[1]
        try:
            stored = load_database_registry(url)
        except RegistryUnavailable as exc:
            if cached is not None:
                return cached[1]  # a database outage must not make known models unknown
            if not exc.missing_database:
                raise
            stored = None  # not created yet (a fresh machine): it holds no entries either
        registry = stored or load_registry(None)
        _db_cache[url] = (time.monotonic(), registry)
        return registry


def forget_cached() -> None:
    """Re-read every registry on next use (after this process changed the database)."""
    with _lock:
        _cache.clear()
        _db_cache.clear()


def _configured_database_url() -> str:
    # Imported here: celery_app imports this module. Its recorded settings, not app.conf:
    # reading app.conf of an unconfigured app computes defaults, which read the registry.
    from orchestration import celery_app

    configured = celery_app._configured
    return configured[0].database_url if configured else get_settings().database_url
