"""The model registry: errors name the entry and the field; queues, defaults and paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.registry import (
    BUILTIN_REGISTRY,
    ModelEntry,
    RegistryError,
    get_registry,
    load_registry,
    parse_registry,
)

GEN = '[[models]]\nname = "{name}"\nrole = "generator"\nbackend = "transformers"\n' \
      'path = "{path}"\n'
RANKER = '[[models]]\nname = "{name}"\nrole = "ranker"\nbackend = "pairranker"\n' \
         'path = "/r"\n'
FUSER = '[[models]]\nname = "{name}"\nrole = "fuser"\nbackend = "genfuser"\npath = "/f"\n'


def gen(name: str = "g1", path: str = "/models/g1", extra: str = "") -> str:
    return GEN.format(name=name, path=path) + extra


def error_of(text: str, source: str = "reg.toml") -> str:
    with pytest.raises(RegistryError) as info:
        parse_registry(text, source)
    return str(info.value)


def test_builtin_registry() -> None:
    registry = load_registry(None)
    assert registry.source == "built-in registry"
    assert [e.name for e in registry.by_role("generator")] == ["tiny-a", "tiny-b", "tiny-c"]
    assert registry.default("ranker") == registry.get("tiny-ranker")
    assert registry.default("fuser") == registry.get("tiny-fuser")
    assert registry.default("generator") is None  # three, none marked
    assert registry.get("tiny-a").builtin == "tiny-a"
    assert registry.get("tiny-fuser").params == {"top_k": 3, "num_beams": 2,
                                                 "max_new_tokens": 24}
    assert registry.get("tiny-a").params == {"max_new_tokens": 24, "temperature": 0.0}
    assert parse_registry(BUILTIN_REGISTRY, "x").entries == registry.entries


def test_get_checks_role_and_names_what_exists() -> None:
    registry = load_registry(None)
    assert registry.get("tiny-b", "generator").name == "tiny-b"
    with pytest.raises(RegistryError, match=r"model 'tiny-a' is a generator, not a ranker"):
        registry.get("tiny-a", "ranker")
    with pytest.raises(RegistryError) as info:
        registry.get("nope")
    assert "unknown model 'nope'" in str(info.value)
    assert "built-in registry" in str(info.value)
    assert "tiny-a, tiny-b, tiny-c, tiny-fuser, tiny-ranker" in str(info.value)


@pytest.mark.parametrize(("role", "queue"), [("generator", "gen.qwen-7b"), ("ranker", "rank"),
                                             ("fuser", "fuse")])
def test_queue_property(role: str, queue: str) -> None:
    assert ModelEntry(name="qwen-7b", role=role, backend="b", path="/p").queue == queue


def test_builtin_property_only_for_builtin_paths() -> None:
    assert ModelEntry("a", "generator", "transformers", "builtin:tiny-x").builtin == "tiny-x"
    assert ModelEntry("a", "generator", "transformers", "/m/builtin:x").builtin is None


def test_default_rules() -> None:
    one_each = parse_registry(gen("g1") + RANKER.format(name="r1") + FUSER.format(name="f1"),
                              "s")
    # A single entry of a role is its default even unmarked.
    assert one_each.default("ranker").name == "r1"  # type: ignore[union-attr]
    assert one_each.default("fuser").name == "f1"  # type: ignore[union-attr]
    assert one_each.default("generator").name == "g1"  # type: ignore[union-attr]

    two_rankers = parse_registry(gen() + RANKER.format(name="r1") + RANKER.format(name="r2"),
                                 "s")
    assert two_rankers.default("ranker") is None
    assert two_rankers.default("fuser") is None  # none at all

    marked = parse_registry(gen() + RANKER.format(name="r1") + RANKER.format(name="r2")
                            + "default = true\n", "s")
    assert marked.default("ranker").name == "r2"  # type: ignore[union-attr]


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    base = tmp_path / "conf"
    text = (gen("dot", "./weights/a") + gen("up", "../shared/b") + gen("abs", "/opt/c")
            + gen("hub", "Qwen/Qwen2-0.5B") + gen("bi", "builtin:tiny-a"))
    registry = parse_registry(text, "s", base_dir=base)
    assert registry.get("dot").path == str((base / "weights" / "a").resolve())
    assert registry.get("up").path == str((tmp_path / "shared" / "b").resolve())
    assert registry.get("abs").path == "/opt/c"
    assert registry.get("hub").path == "Qwen/Qwen2-0.5B"  # a hub id is not a file path
    assert registry.get("bi").path == "builtin:tiny-a"
    # Without a base_dir nothing is rewritten.
    assert parse_registry(text, "s").get("dot").path == "./weights/a"


def test_load_registry_reads_a_file_relative_to_itself(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(gen("local", "./w") + RANKER.format(name="r"), encoding="utf-8")
    registry = load_registry(path)
    assert registry.source == str(path)
    assert registry.get("local").path == str(tmp_path / "w")
    assert get_registry(path) is get_registry(path)


def test_missing_registry_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(RegistryError, match=r"cannot read registry .*absent\.toml"):
        load_registry(missing)


def test_entry_fields_are_kept() -> None:
    text = gen("g", "/m", 'revision = "abc123"\n[models.params]\nmax_new_tokens = 9\n')
    entry = parse_registry(text, "s").get("g")
    assert (entry.revision, entry.default, entry.params) == ("abc123", False, {
        "max_new_tokens": 9})


# -- errors name the source, the entry and the field -------------------------------------

def test_bad_toml() -> None:
    message = error_of('[[models]]\nname = "a\n', "conf/models.toml")
    assert message.startswith("conf/models.toml: not valid TOML")


@pytest.mark.parametrize("text", ["", "title = 'x'\n", "models = []\n", "models = 3\n"])
def test_no_models(text: str) -> None:
    assert error_of(text) == "reg.toml: needs at least one [[models]] table"


@pytest.mark.parametrize("field", ["name", "role", "backend", "path"])
def test_missing_field_names_entry_and_field(field: str) -> None:
    lines = [line for line in gen("second").splitlines() if not line.startswith(field)]
    message = error_of(gen("first") + "\n".join(lines) + "\n")
    assert message == f"reg.toml: models[2]: field '{field}' must be a non-empty string"


@pytest.mark.parametrize(("value", "field"), [('name = ""', "name"), ("role = 3", "role"),
                                              ('path = "  "', "path")])
def test_empty_or_wrong_type_field(value: str, field: str) -> None:
    text = "\n".join(value if line.startswith(field) else line
                     for line in gen().splitlines()) + "\n"
    assert error_of(text) == f"reg.toml: models[1]: field '{field}' must be a non-empty string"


def test_bad_role() -> None:
    message = error_of(gen() + gen("g2").replace('"generator"', '"judge"'))
    assert message == ("reg.toml: models[2]: role 'judge' is not one of "
                       "generator, ranker, fuser")


@pytest.mark.parametrize(("role", "backend", "allowed"), [
    ("generator", "pairranker", "transformers, vllm, openai, null"),
    ("ranker", "transformers", "pairranker, null"),
    ("fuser", "vllm", "genfuser, aggregator, null"),
])
def test_backend_not_allowed_for_role(role: str, backend: str, allowed: str) -> None:
    text = (f'[[models]]\nname = "m"\nrole = "{role}"\nbackend = "{backend}"\n'
            'path = "/p"\n')
    assert error_of(text) == (f"reg.toml: models[1]: backend '{backend}' is not one of "
                              f"{allowed} for {role}")


def test_duplicate_name() -> None:
    message = error_of(gen("a") + gen("b") + RANKER.format(name="a"))
    assert message == "reg.toml: models[3]: name 'a' appears twice"


@pytest.mark.parametrize("role", ["ranker", "fuser"])
def test_two_defaults(role: str) -> None:
    block = RANKER if role == "ranker" else FUSER
    text = gen() + block.format(name="x") + "default = true\n" + block.format(name="y") \
        + "default = true\n"
    assert error_of(text) == f"reg.toml: more than one default {role}"


def test_unknown_fields_are_all_named() -> None:
    message = error_of(gen() + gen("g2", extra='queue = "q"\ngpu = 1\n'))
    assert message == "reg.toml: models[2]: unknown field(s) gpu, queue"


def test_bad_name_characters() -> None:
    message = error_of(gen("bad name/x"))
    assert message == ("reg.toml: models[1]: name 'bad name/x' may hold only letters, "
                       "digits, - _ .")


def test_params_must_be_a_table() -> None:
    assert error_of(gen(extra="params = 5\n")) == \
        "reg.toml: models[1]: field 'params' must be a table"


def test_entry_must_be_a_table() -> None:
    assert error_of('models = ["a"]\n') == "reg.toml: models[1]: must be a table"


def test_default_must_be_a_boolean() -> None:
    # bool("false") is True: a string must be refused, not read as a default.
    text = (gen() + RANKER.format(name="r1") + RANKER.format(name="r2")
            + 'default = "false"\n')
    assert error_of(text) == "reg.toml: models[3]: field 'default' must be true or false"


def test_revision_must_be_a_string() -> None:
    assert error_of(gen(extra="revision = 3\n")) == \
        "reg.toml: models[1]: field 'revision' must be a string"
