"""``manage.py`` commands for the tests, each in a process of its own forked from one that
has already imported the command line.

A ``manage.py`` process spends about 1.5 s of CPU importing SQLAlchemy, SQLModel, Celery
and the commands before it does anything, and the integration tests run well over a
hundred of them. Here one server process imports ``ops.cli`` once; each command is a
fork of it that takes the caller's environment, working directory and arguments, points
stdin at /dev/null and stdout and stderr at files, and runs ``manage.py`` itself as its
``__main__``, as ``python manage.py ARGS`` would. The child exits through the interpreter
as a command does (atexit handlers, non-daemon threads), and reports its exit status last.

Nothing is imported in the server that reads the environment or opens a connection: every
setting is read in the child, from the child's environment.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

READY = "manage-server ready"


def _child(request: dict[str, object], conn: socket.socket) -> None:
    """In the forked process: become ``python manage.py ARGS``."""
    import atexit
    import runpy

    def report(code: list[int]) -> None:
        # Registered first, so it runs after every handler the command registers.
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        conn.sendall(f"exit {code[0]}\n".encode())

    code = [1]
    atexit.register(report, code)
    conn.sendall(f"pid {os.getpid()}\n".encode())
    os.setpgid(0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(str(request["cwd"]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, fd)
        os.close(out)
    args = request["args"]
    assert isinstance(args, list)
    sys.argv = ["manage.py", *args]
    script = os.path.abspath("manage.py")
    try:
        runpy.run_path(script, run_name="__main__")
        code[0] = 0
    except SystemExit as exc:
        if exc.code is None:
            code[0] = 0
        elif isinstance(exc.code, int):
            code[0] = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code[0] = 1
    except BaseException as exc:
        import traceback

        # As the interpreter prints it: from manage.py's frame, without this module's.
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
        code[0] = 1
    sys.exit(code[0])


def serve(path: str) -> None:
    """Import the command line, then fork one child per request on the socket ``path``."""
    import runpy  # noqa: F401  (the children's)

    import ops.cli  # noqa: F401  (what every command imports)

    # The children's last collection skips what they inherited (and so leaves its pages
    # shared): a command exits as fast as it would without these imports.
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print(READY, flush=True)
    while True:
        conn, _ = listener.accept()
        with conn.makefile("rb") as reader:
            line = reader.readline()
        if not line:
            conn.close()
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(request, conn)
            os._exit(1)  # pragma: no cover - _child always exits
        conn.close()


class ManageServer:
    """The client: ``run`` is ``subprocess.run([python, "manage.py", *args], ...)`` with
    ``capture_output=True, text=True``."""

    def __init__(self, path: str, process: subprocess.Popen[bytes], folder: Path) -> None:
        self.path, self.process, self.folder = path, process, folder
        self._n = 0

    def run(self, args: Sequence[str], cwd: Path, env: dict[str, str],
            timeout: float) -> subprocess.CompletedProcess[str]:
        if self.process.poll() is not None:
            raise RuntimeError(f"the manage server exited {self.process.returncode}")
        self._n += 1
        out, err = self.folder / f"{self._n}.out", self.folder / f"{self._n}.err"
        request = {"args": list(args), "cwd": str(cwd), "env": env, "stdout": str(out),
                   "stderr": str(err)}
        command = [sys.executable, "manage.py", *args]
        pid = None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(self.path)
            conn.sendall(json.dumps(request).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            with conn.makefile("rb") as reader:
                try:
                    pid = int(reader.readline().split()[1])
                    line = reader.readline()
                except TimeoutError:
                    if pid is not None:
                        _kill(pid)
                    raise subprocess.TimeoutExpired(
                        command, timeout, _read(out), _read(err)) from None
        # No status line: the child died without exiting (a signal): as subprocess says.
        returncode = int(line.split()[1]) if line.startswith(b"exit ") else -signal.SIGKILL
        stdout = out.read_text(errors="replace")
        stderr = err.read_text(errors="replace")
        out.unlink()
        err.unlink()
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@contextmanager
def manage_server(repo: Path) -> Iterator[ManageServer]:
    with tempfile.TemporaryDirectory(prefix="blendq-manage-") as folder:
        path = os.path.join(folder, "socket")
        log = Path(folder) / "server.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from tests.manage_server import serve; "
                 "serve(sys.argv[1])", path], cwd=repo, stdout=handle,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while READY not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the manage server did not start:\n"
                                       f"{log.read_text(errors='replace')}")
                time.sleep(0.05)
            yield ManageServer(path, process, Path(folder))
        finally:
            process.terminate()
            process.wait(timeout=30)
