"""The kernel's TCP socket table, read for tests: who listens where (``/proc/net/tcp{,6}``, ``/proc/PID/fd``).

Shared by the served-API tests (:mod:`tests.api_server`) and the loopback watch
(``tests/test_listen_loopback.py``), which had each decoded the same table.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["LISTEN", "decode_address", "listening_sockets", "listening_table", "socket_inodes"]

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def decode_address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` / 32-hex-digit IPv6 form of /proc/net/tcp{,6} to (address, port)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    # IPv6: four 32-bit words, each in host (little-endian) byte order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def listening_table() -> dict[int, tuple[str, int]]:
    """Socket inode → (address, port) of every TCP socket in state LISTEN."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN:
                found[int(fields[9])] = decode_address(fields[1])
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (none once it is gone)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on, sorted."""
    table = listening_table()
    return sorted(table[inode] for inode in socket_inodes(pid) if inode in table)
