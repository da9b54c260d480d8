"""Pytest plugin: fail any test whose own process tries to reach a non-loopback address.

A privacy product must not phone home. Every ``connect``/``connect_ex``/``sendto`` to an
IPv4/IPv6 address outside loopback, and every name lookup of a host that is not a
loopback name, is blocked (raises) *and* recorded; the test then fails in teardown even
if the code under test swallowed the error (Flower's telemetry does). Child processes
are covered by the strace check (tests/test_no_egress.py), which sees Ray's processes too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

_attempts: list[str] = []
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_loopback_host(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str) or host in _LOOPBACK_NAMES or host == "":
        return host in _LOOPBACK_NAMES or host == ""
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or addr.is_unspecified


def _check(sock: socket.socket, address: Any, what: str) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets, netlink: not network egress
    host = address[0] if isinstance(address, tuple) else address
    if not _is_loopback_host(host):
        _attempts.append(f"{what} to {address!r}")
        raise ConnectionRefusedError(f"fedcrm test guard: non-loopback {what} to {address!r} blocked")


_orig_connect = socket.socket.connect
_orig_connect_ex = socket.socket.connect_ex
_orig_sendto = socket.socket.sendto
_orig_getaddrinfo = socket.getaddrinfo


def _connect(self: socket.socket, address: Any) -> Any:
    _check(self, address, "connect")
    return _orig_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> Any:
    _check(self, address, "connect")
    return _orig_connect_ex(self, address)


def _sendto(self: socket.socket, data: Any, *args: Any) -> Any:
    _check(self, args[-1], "sendto")
    return _orig_sendto(self, data, *args)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None and not _is_loopback_host(host):
        _attempts.append(f"name lookup of {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"fedcrm test guard: lookup of {host!r} blocked")
    return _orig_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    """Install the guard for the whole session."""
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = _sendto  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _no_egress() -> Iterator[None]:
    """Fail the test if it (or anything it called) tried to reach a non-loopback address."""
    start = len(_attempts)
    yield
    new = _attempts[start:]
    if new:
        pytest.fail("non-loopback network access attempted: " + "; ".join(new), pytrace=False)
