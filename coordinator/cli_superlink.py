"""`fedcrm coordinator superlink`: run a local Flower SuperLink in the foreground."""

from __future__ import annotations

import signal
from pathlib import Path

import typer
from rich.console import Console

from fedcrm.errors import FedcrmError

console = Console()


def superlink(
    state_dir: Path = typer.Option(Path("superlink"), "--state-dir", help="Its logs and PID file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(9093, "--port", help="Port for SuperNodes and `fedcrm coordinator run --superlink`."),
    certs: Path = typer.Option(None, "--certs", help="TLS: directory with ca.pem, server.pem, server.key (`fedcrm certs create`)."),
    node_auth: bool = typer.Option(True, "--node-auth/--no-node-auth", help="With TLS: admit only registered partner node keys."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP, any SuperNode admitted (loopback tests only)."),
    partners: Path = typer.Option(Path("partners.json"), "--partners",
                                  help="With node auth: the partner registry whose keys are registered at start."),
    state_db: Path = typer.Option(None, "--state-db",
                                  help="Keep Flower's state in this SQLite file (default: in memory, faster)."),
) -> None:
    """Start a SuperLink (TLS + SuperNode authentication, or --insecure) until Ctrl-C; stops it by PID."""
    from fedcrm.coordinator.link_security import INSECURE_WARNING, RefusalWatcher
    from fedcrm.coordinator.superlink import start_superlink, stop_superlink

    if insecure == (certs is not None):
        console.print("[bold red]error:[/] choose --certs DIR (TLS, from `fedcrm certs create`) or --insecure "
                      "(loopback tests only)")
        raise typer.Exit(1)
    if insecure:
        console.print(f"[bold yellow]warning:[/] {INSECURE_WARNING}")
    try:
        link = start_superlink(state_dir, host=host, port=port, tls_dir=certs, node_auth=node_auth and not insecure,
                               database=state_db)
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if node_auth and not insecure and partners.exists():
        from fedcrm.certs import CA_CERT
        from fedcrm.coordinator.partners import restore_partners

        try:
            restored = restore_partners(link.address, certs / CA_CERT, partners)
        except FedcrmError as exc:
            stop_superlink(link)
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from exc
        console.print(f"registered {len(restored)} partner key(s) from {partners}: "
                      f"{', '.join(e.name for e in restored) or 'none'}")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    watcher = RefusalWatcher(link.state_dir / "superlink.log", on_refusal=lambda r: console.print(
        f"[bold red]refused SuperNode[/] ({r.reason}): key {', '.join(r.fingerprints) or 'none'}"))
    watcher.start()
    try:
        with console.status(f"SuperLink {link.address} (pid {link.pid}, state {link.state_dir}) — Ctrl-C stops it"):
            code = link.process.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        watcher.stop()
        leftover = stop_superlink(link)
        signal.signal(signal.SIGTERM, previous)
    if leftover:
        console.print(f"[bold red]processes survived SIGKILL:[/] {sorted(leftover)}")
    console.print(f"SuperLink {link.address} stopped (log: {link.state_dir / 'superlink.log'})")
    raise typer.Exit(0 if code in (0, -2, -15) else 1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    """Add ``superlink`` to the ``fedcrm coordinator`` command group (once, however often called)."""
    if not any(c.name == "superlink" for c in app.registered_commands):
        app.command("superlink")(superlink)
