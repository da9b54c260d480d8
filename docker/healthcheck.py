"""Health checks and small waits for the compose services (standard library only).

``port HOST PORT [--wait S]``: exit 0 once HOST:PORT accepts a TCP connection.
``registered REGISTRY NAME``: exit 0 if the partner registry file lists NAME.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path


def port_open(host: str, port: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def registered(registry: Path, name: str) -> bool:
    try:
        return any(p["name"] == name for p in json.loads(registry.read_text())["partners"])
    except (OSError, ValueError, KeyError):
        return False


def main(argv: list[str]) -> int:
    if argv[:1] == ["port"] and len(argv) in (3, 5):
        wait_s = float(argv[4]) if len(argv) == 5 and argv[3] == "--wait" else 0.0
        return 0 if port_open(argv[1], int(argv[2]), wait_s) else 1
    if argv[:1] == ["registered"] and len(argv) == 3:
        return 0 if registered(Path(argv[1]), argv[2]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
