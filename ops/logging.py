"""structlog, configured once per process: JSON in production, readable in a terminal.

With ``BLENDQ_LOG_FORMAT=json`` every line a process writes is one JSON object, whoever
wrote it: blendq's structlog events; the standard library's records (Celery, kombu,
uvicorn, alembic, transformers once it propagates) through one handler with structlog's
formatter, carrying the bound ids (task, job, chunk, HTTP request); and any other text
written to stdout or stderr (Celery's banner, a library's print, a traceback), wrapped
line by line as ``{"event": <the line>, "logger": "stderr"}`` (and stdout's, in the
service processes, whose stdout is no command output). Writes below Python (a C library
writing to file descriptor 2) are not seen.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import io
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, MutableMapping, Sequence
from datetime import UTC, datetime
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, TextIO

import structlog

from orchestration.settings import Settings

_done: list[bool] = []


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    if _done:
        return
    json_mode = settings.log_format == "json"
    out = stream or sys.stderr
    if json_mode:
        out = _wrap_standard_streams(out, explicit=stream is not None)
    level = logging.getLevelName(settings.log_level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_mode
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not under test: a logger cached on first use keeps this configuration for the
        # rest of the process, and tests that capture logs reconfigure structlog.
        cache_logger_on_first_use=settings.env != "test",
    )
    # Libraries (Celery, kombu, alembic, uvicorn) log through the standard library: same
    # stream, and in JSON mode the same rendering.
    handler = logging.StreamHandler(out)
    if json_mode:
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _celery_task_ids,
                               structlog.stdlib.ExtraAdder(allow=_EXTRA_KEYS)],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info, renderer]))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    # A process starts with none; where some are set already (pytest's capture), console
    # mode leaves them alone as logging.basicConfig would.
    if json_mode or not root.handlers:
        root.addHandler(handler)
        root.setLevel(level)
    logging.captureWarnings(True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if json_mode:
        _quiet_progress_bars()
    _keep_celery_off_logging()
    _done.append(True)


# Celery's worker logs "Task blendq.rank[<id>] succeeded in 0.2s: {...}" with these in
# the record's ``args`` (a dict); a record's ``extra`` may carry the same names.
_EXTRA_KEYS = ("job_id", "chunk_id", "task_id")


def _celery_task_ids(logger: Any, method: str,
                     event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event.get("_record")
    args = getattr(record, "args", None)
    if isinstance(args, dict) and getattr(record, "name", "").startswith("celery"):
        if "id" in args:
            event.setdefault("task_id", args["id"])
        if "name" in args:
            event.setdefault("task", args["name"])
    return event


def _keep_celery_off_logging() -> None:
    # Celery configures logging in a worker unless a receiver of setup_logging answers:
    # it would add its own handler (plain text) beside ours and redirect stdout into it.
    from celery import signals

    signals.setup_logging.connect(_logging_is_configured, weak=False)


def _logging_is_configured(**_: Any) -> None:
    return None


def _quiet_progress_bars() -> None:
    # tqdm bars redraw one line with carriage returns: noise in a JSON stream. Model code
    # reports what it loads in its own events.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers.utils.logging" in sys.modules:
        _transformers_propagate()
    else:  # the ML stack loads lazily, often long after this
        sys.meta_path.insert(0, _AfterImport(TRANSFORMERS_LOGGING, _transformers_propagate))


TRANSFORMERS_LOGGING = "transformers.utils.logging"


def _transformers_propagate() -> None:
    # transformers logs through a StreamHandler of its own on its root logger; send its
    # records to ours instead, so they are rendered as JSON with their level and logger.
    module = sys.modules[TRANSFORMERS_LOGGING]
    module.disable_default_handler()
    module.enable_propagation()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then`` right after the module ``name`` has been executed, once."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module
        then = self.then

        def exec_module(module: ModuleType) -> None:
            execute(module)
            then()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _wrap_standard_streams(target: TextIO, *, explicit: bool) -> TextIO:
    """Make every line written to stderr a JSON object; return the stream the loggers
    write to (already JSON, so not wrapped again). Stdout is a command's output (a job id,
    a table) and stays as it is, except in a service process (:func:`service_stdout`)."""
    if explicit:
        return target
    raw_err = sys.stderr
    sys.stderr = JsonLines(raw_err, "stderr")
    setattr(sys, "__stderr__", sys.stderr)  # noqa: B010  (mypy: a Final name)
    _json_mode.append(True)
    return raw_err


def service_stdout() -> None:
    """In a worker or the dispatcher, whose stdout is part of its log: with JSON logs,
    make its lines JSON too. Celery prints its banner and shutdown notices to
    ``sys.__stdout__``, so that is wrapped as well."""
    if not _json_mode or isinstance(sys.stdout, JsonLines):
        return
    sys.stdout = JsonLines(sys.stdout, "stdout")
    setattr(sys, "__stdout__", sys.stdout)  # noqa: B010


_json_mode: list[bool] = []


class JsonLines(io.TextIOBase):
    """A text stream that passes JSON-object lines through and wraps any other line."""

    def __init__(self, raw: TextIO, name: str) -> None:
        self.raw = raw
        self.name = name
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text.replace("\r\n", "\n").replace("\r", "\n")
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        if line.startswith("{") and _is_json_object(line):
            self.raw.write(line + "\n")
            return
        self.raw.write(json.dumps({
            "event": line, "logger": self.name,
            # Unknown severity: Python writes warnings and tracebacks to stderr, but so do
            # libraries that merely report progress.
            "level": "warning" if self.name == "stderr" else "info",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}) + "\n")

    def flush(self) -> None:
        with self._lock:
            self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", "utf-8")

    def close(self) -> None:
        with self._lock:
            if self._partial.strip():
                self._emit(self._partial)
            self._partial = ""
        self.raw.flush()


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
