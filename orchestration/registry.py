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
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("generator", "ranker", "fuser")
BACKENDS = {
    "generator": ("transformers", "vllm", "openai"),
    "ranker": ("pairranker",),
    "fuser": ("genfuser", "aggregator"),
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


class RegistryError(ValueError):
    pass


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
    entries: dict[str, ModelEntry] = {}
    for position, raw in enumerate(raw_entries, start=1):
        where = f"{source}: models[{position}]"
        entry = _parse_entry(raw, where, base_dir)
        if entry.name in entries:
            raise RegistryError(f"{where}: name {entry.name!r} appears twice")
        entries[entry.name] = entry
    for role in ("ranker", "fuser"):
        if len([e for e in entries.values() if e.role == role and e.default]) > 1:
            raise RegistryError(f"{source}: more than one default {role}")
    return Registry(entries=entries, source=source)


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


_cache: dict[Path | None, Registry] = {}


def get_registry(path: Path | None) -> Registry:
    """The registry at ``path``, read once per process."""
    if path not in _cache:
        _cache[path] = load_registry(path)
    return _cache[path]
