"""The demo, run as a user would, in a loopback-only network namespace under strace.

Proves three things about `fedcrm demo`: it finishes and prints the comparison table;
no process it started (Ray, Flower, fedcrm) is left behind; and no process of the whole
tree (Ray's included, which an in-process socket guard cannot see) even tried to connect
to an address that is neither loopback nor a unix socket.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TAG_VAR = "FEDCRM_TEST_PROCESS_TAG"
CONNECT = re.compile(r"connect\(\d+, \{sa_family=(AF_INET6?)(.*?)\}")
IPV4 = re.compile(r'inet_addr\("([0-9.]+)"\)')
IPV6 = re.compile(r'inet_pton\(AF_INET6, "([0-9a-fA-F:.]+)"')


def _tagged(tag: str) -> set[int]:
    needle = f"{TAG_VAR}={tag}".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def _table() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def non_loopback_connects(trace: str) -> list[str]:
    """connect() calls in an strace log to addresses that are neither loopback nor unix sockets."""
    bad = []
    for line in trace.splitlines():
        match = CONNECT.search(line)
        if not match:
            continue
        family, rest = match.groups()
        if family == "AF_INET":
            addr = IPV4.search(rest)
            if addr is None or not addr.group(1).startswith("127."):
                bad.append(line.strip())
        else:
            addr = IPV6.search(rest)
            value = addr.group(1) if addr else ""
            if value not in ("::1",) and not value.startswith("::ffff:127."):
                bad.append(line.strip())
    return bad


def test_trace_parser_flags_outside_addresses() -> None:
    trace = "\n".join([
        '10 connect(5, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("169.254.169.254")}, 16) = -1',
        '11 connect(6, {sa_family=AF_INET, sin_port=htons(8000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '12 connect(7, {sa_family=AF_UNIX, sun_path="/tmp/x.sock"}, 110) = 0',
        '13 connect(8, {sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2001:4860::8888", &sin6_addr), sin6_scope_id=0}, 28) = -1',
        '14 connect(9, {sa_family=AF_INET6, sin6_port=htons(1), inet_pton(AF_INET6, "::1", &sin6_addr)}, 28) = 0',
    ])
    flagged = non_loopback_connects(trace)
    assert len(flagged) == 2
    assert "169.254.169.254" in flagged[0] and "2001:4860::8888" in flagged[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], str, dict, dict, str]:
    for tool in ("strace", "unshare", "ip"):
        assert shutil.which(tool), f"{tool} is missing: `make test` installs it (apt-get install strace util-linux iproute2)"
    tmp = tmp_path_factory.mktemp("demo")
    trace = tmp / "connect.trace"
    tag = uuid.uuid4().hex
    fedcrm = Path(sys.executable).with_name("fedcrm")
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    inner = (f"ip link set lo up && exec strace -f -qq --seccomp-bpf -e trace=connect -o {trace} "
             f"{fedcrm} demo --workdir {tmp / 'work'}")
    before = _table()
    env = {**os.environ, TAG_VAR: tag, "COLUMNS": "160"}
    result = subprocess.run([*unshare, "sh", "-c", inner], capture_output=True, text=True, env=env, timeout=1500)
    after = _table()
    return result, trace.read_text() if trace.exists() else "", before, after, tag


def test_demo_prints_the_comparison_table(demo_run) -> None:  # noqa: ANN001
    result = demo_run[0]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for row in ("pooled", "federated (secagg", "partner A alone", "partner B alone", "partner C alone"):
        assert row in out, out[-2000:]
    assert "ROC AUC" in out and "top-decile lift" in out


def test_demo_made_no_connection_outside_loopback(demo_run) -> None:  # noqa: ANN001
    trace = demo_run[1]
    assert "connect(" in trace, "strace recorded no connect() at all: the trace did not work"
    assert re.search(r'inet_addr\("127\.', trace), "expected Ray/Flower loopback connections in the trace"
    bad = non_loopback_connects(trace)
    assert not bad, "connection attempts outside loopback:\n" + "\n".join(bad[:20])


def test_demo_leaves_no_process_behind(demo_run) -> None:  # noqa: ANN001
    _, _, before, after, tag = demo_run
    leftovers = _tagged(tag)
    new = {pid: cmd for pid, cmd in after.items() if pid not in before and pid in leftovers}
    assert not new, f"processes left behind by the demo: {new}"
