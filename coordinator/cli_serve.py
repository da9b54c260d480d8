"""`fedcrm coordinator serve`: the operator API and dashboard (loopback by default)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fedcrm.coordinator.cli_registry import RegistryOpt, RunsDirOpt, _runs_dir
from fedcrm.errors import FedcrmError

console = Console()


def serve_command(
    tokens: Path = typer.Option(..., "--tokens", dir_okay=False,
                                help="Token file (create with `fedcrm coordinator token create`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; keep it on loopback behind a TLS proxy."),
    port: int = typer.Option(8766, "--port"),
    runs_dir: Path = RunsDirOpt,
    registry: str = RegistryOpt,
    min_count: int = typer.Option(10, "--min-count", min=1,
                                  help="The dashboard shows customer counts below this as withheld."),
    superlink: str = typer.Option(None, "--superlink",
                                  help="HOST:PORT of a SuperLink: runs started through the API use the deployment engine."),
    root_certificates: Path = typer.Option(None, "--root-certificates", help="With --superlink: the deployment CA."),
    insecure: bool = typer.Option(False, "--insecure", help="With --superlink: plain HTTP (loopback tests only)."),
) -> None:
    """Serve the operator API (reference at /docs, offline) and the dashboard (/); one access line per request."""
    import uvicorn

    from fedcrm.coordinator.api import create_app
    from fedcrm.coordinator.api_tokens import check_operator_token_file
    from fedcrm.coordinator.link_security import tls_choice
    from fedcrm.coordinator.operator_runs import DeploymentTarget
    from fedcrm.coordinator.registry_db import open_registry, registry_url
    from fedcrm.coordinator.registry_index import rebuild

    folder = _runs_dir(runs_dir)
    url = registry_url(registry, folder)
    try:
        trust = tls_choice(superlink, root_certificates, insecure)
        deployment = None if superlink is None else DeploymentTarget(superlink, trust.resolve() if trust else None)
        n_tokens = check_operator_token_file(tokens)
        folder.mkdir(parents=True, exist_ok=True)
        engine = open_registry(url)
        found = rebuild(engine, folder)  # the run directories are the truth: index them before serving
    except FedcrmError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"registry {engine.url.render_as_string()}: {len(found)} run(s) from {folder}")
    if n_tokens == 0:
        console.print(f"[yellow]warning:[/] {tokens} holds no tokens yet; every request is refused until one is created")
    if host not in ("127.0.0.1", "::1", "localhost"):
        console.print(f"[yellow]warning:[/] listening on {host}, beyond loopback; put a TLS-terminating proxy in front")
    if deployment is not None:
        console.print(f"runs started through the API go to the SuperLink at {deployment.superlink}")
    app = create_app(engine, tokens_path=tokens, runs_dir=folder, registry_url=url, min_count=min_count,
                     deployment=deployment)
    # uvicorn's access log prints raw paths; the app logs route templates instead.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, server_header=False)


def register(app: typer.Typer) -> None:
    """Mount `serve` on `fedcrm coordinator`."""
    app.command("serve")(serve_command)
