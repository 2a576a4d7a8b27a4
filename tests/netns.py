"""Another host on this machine, for tests: a network namespace with a hostname of its own,
joined to this host by a veth pair on a /30 made for the test (10.213.x.y) and removed
afterwards, and TCP forwarders that let it reach services listening on 127.0.0.1 only.

The namespace has no other link and no default route: whatever a process in it tries to
reach other than the host's end of the pair fails at once, so a test also shows that the
process needs nothing more. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and ``ip`` and
``unshare``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

PREFIX = "blendq-mh-"  # namespaces made here: PREFIX + the pid of the test process
SUBNET = ipaddress.IPv4Network("10.213.0.0/16")


class NetnsUnavailable(RuntimeError):
    """This machine or user cannot make network namespaces."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def can_make_namespaces() -> str | None:
    """None when namespaces can be made here, else why not."""
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "needs the ip and unshare commands (iproute2, util-linux)"
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    return None


@dataclass(frozen=True)
class NamespaceHost:
    """A namespace ``netns`` whose processes see hostname ``hostname`` and reach this host
    at ``host_address`` (their own address is ``address``)."""

    netns: str
    hostname: str
    host_link: str
    host_address: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace under its hostname. ``ip netns exec``,
        ``unshare`` (no --fork) and ``sh -c exec`` all exec: the process started is
        ``argv`` itself, so signalling it signals the program."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *argv]

    def pids(self) -> list[int]:
        result = _ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in result.stdout.split()]


def _taken_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("-o", "-4", "addr", "show").stdout
    nets = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    return nets


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /30 of 10.213.0.0/16 that no address on this host overlaps, starting from
    ``seed`` so parallel test processes usually pick different ones."""
    taken = _taken_networks()
    count = 2 ** (30 - SUBNET.prefixlen)
    for step in range(count):
        index = (seed + step) % count
        candidate = ipaddress.IPv4Network((int(SUBNET.network_address) + 4 * index, 30))
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise RuntimeError(f"no free /30 left in {SUBNET}")


def remove_stale() -> None:
    """Namespaces left by a test process that was killed before its cleanup ran."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX):].split("-")[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            _delete(name, f"bqh{owner}")


def _delete(netns: str, host_link: str) -> None:
    for pid in _ip("netns", "pids", netns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", netns, check=False)
    # Deleting the namespace destroys its end of the pair, and so the pair, but the
    # kernel does that in the background: delete the host's end ourselves.
    _ip("link", "del", host_link, check=False)


@contextlib.contextmanager
def namespace_host(hostname: str) -> Iterator[NamespaceHost]:
    """A namespace joined to this host by a veth pair; everything made here (processes
    still in it included) is removed when the block ends, however it ends."""
    why = can_make_namespaces()
    if why is not None:
        raise NetnsUnavailable(why)
    remove_stale()
    pid = os.getpid()
    netns, host_link, inner_link = f"{PREFIX}{pid}", f"bqh{pid}", f"bqn{pid}"
    _delete(netns, host_link)  # a namespace of this pid's is a leftover of a reused pid
    subnet = _free_subnet(pid)
    host_address, address = (str(a) for a in list(subnet.hosts())[:2])
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", host_link, "type", "veth", "peer", "name", inner_link,
            "netns", netns)
        _ip("addr", "add", f"{host_address}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("-n", netns, "addr", "add", f"{address}/30", "dev", inner_link)
        _ip("-n", netns, "link", "set", inner_link, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        yield NamespaceHost(netns, hostname, host_link, host_address, address)
    finally:
        _delete(netns, host_link)


class TcpForwarder:
    """Accepts on ``listen`` (an address of this host, port chosen here) and copies
    bytes both ways to ``target``: PostgreSQL and RabbitMQ listen on 127.0.0.1 only, and
    see the forwarded connections coming from there."""

    def __init__(self, listen: str, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server((listen, 0))
        self._server.settimeout(0.2)
        self.address = listen
        self.port = self._server.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name=f"forward-{listen}:{self.port}")
        self.connections = 0

    def __enter__(self) -> TcpForwarder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side ended: end both, as a direct connection would.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def wait_until(check: object, timeout: float, what: str) -> None:
    """Poll ``check()`` until true."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:.0f}s")
        time.sleep(0.2)
