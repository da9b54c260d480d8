"""`fedcrm coordinator registry rebuild | models | promote | lineage | status | token`: the operator's registry."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from fedcrm.errors import FedcrmError

console = Console()
registry_app = typer.Typer(no_args_is_help=True, help="The SQL registry that indexes run directories.")
token_app = typer.Typer(no_args_is_help=True, help="Operator API tokens (stored hashed, mode 0600).")

RegistryOpt = typer.Option(None, "--registry", envvar="FEDCRM_REGISTRY_URL",
                           help="Registry database URL (default: registry.db next to the runs directory).")
RunsDirOpt = typer.Option(None, "--runs-dir", help="Directory of run directories (default: FEDCRM_RUNS_DIR or ./runs).")


def _runs_dir(runs_dir: Path | None) -> Path:
    from fedcrm.settings import get_settings

    return (runs_dir or get_settings().runs_dir).resolve()


def open_engine(registry: str | None, runs_dir: Path | None) -> Any:
    """The registry engine (schema up to date) for ``--registry`` / the env / the default SQLite file."""
    from fedcrm.coordinator.registry_db import open_registry, registry_url

    return open_registry(registry_url(registry, _runs_dir(runs_dir)))


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(1)


def index_quietly(run_dir: Path, registry: str | None, out: Console) -> None:
    """Index one run directory; report a registry problem without failing the caller."""
    from fedcrm.coordinator.registry_index import index_run

    try:
        engine = open_engine(registry, run_dir.parent)
        index_run(engine, run_dir)
        engine.dispose()
    except FedcrmError as exc:
        out.print(f"[yellow]warning:[/] the run was not indexed in the registry: {exc} "
                  "(run `fedcrm coordinator registry rebuild` later)")


@registry_app.command("rebuild")
def rebuild_command(runs_dir: Path = RunsDirOpt, registry: str = RegistryOpt) -> None:
    """Re-index every run directory under the runs directory (the run directories are the truth)."""
    from fedcrm.coordinator.registry_index import rebuild

    try:
        engine = open_engine(registry, runs_dir)
        found = rebuild(engine, _runs_dir(runs_dir))
    except FedcrmError as exc:
        raise _fail(exc) from exc
    console.print(f"indexed {len(found)} run(s) from {_runs_dir(runs_dir)} into {engine.url.render_as_string()}")


def models_command(runs_dir: Path = RunsDirOpt, registry: str = RegistryOpt,
                   rounds: bool = typer.Option(False, "--rounds", help="List every round's model too."),
                   as_json: bool = typer.Option(False, "--json", help="JSON instead of a table.")) -> None:
    """Models in the registry with their stage and federated metrics (partners' local hold-outs)."""
    from fedcrm.coordinator.registry_index import list_models

    try:
        models = list_models(open_engine(registry, runs_dir), include_rounds=rounds)
    except FedcrmError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps(models, indent=2, default=str))
        return
    table = Table(title="Models (metrics: example-weighted over partners' local hold-outs)")
    for col in ("model", "stage", "task", "round", "ROC AUC", "validation loss", "sha256"):
        table.add_column(col)
    for m in models:
        auc = m["federated"].get("roc_auc")
        table.add_row(m["model_id"], m["stage"], m["task_name"], str(m["round"]),
                      f"{auc:.4f}" if auc is not None else "—",
                      f"{m['federated_loss']:.4f}" if m["federated_loss"] is not None else "—", m["sha256"][:16] + "…")
    console.print(table)


def promote_command(model: str = typer.Argument(..., help="Model id, e.g. '<run id>:final'."),
                    to: str = typer.Option(..., "--to", help="staging | production | archived"),
                    by: str = typer.Option(None, "--by", help="Who promotes (default: the login name)."),
                    note: str = typer.Option(None, "--note"),
                    runs_dir: Path = RunsDirOpt, registry: str = RegistryOpt) -> None:
    """Promote a run's final model: candidate → staging → production (the previous holder is archived)."""
    import getpass

    from fedcrm.coordinator.registry_index import promote

    try:
        got = promote(open_engine(registry, runs_dir), model, to, by=by or getpass.getuser(), note=note)
    except FedcrmError as exc:
        raise _fail(exc) from exc
    last = got["promotions"][-1]
    console.print(f"[green]{model}[/] is now [bold]{got['stage']}[/] ({last['by']}, {last['at']:%Y-%m-%d %H:%M:%S} UTC)")


def lineage_command(model: str = typer.Argument(..., help="Model id, e.g. '<run id>:final'."),
                    runs_dir: Path = RunsDirOpt, registry: str = RegistryOpt,
                    as_json: bool = typer.Option(False, "--json", help="JSON instead of text.")) -> None:
    """Which partners, rounds, consent-ledger heads, task schema and privacy budget a model comes from."""
    from fedcrm.coordinator.registry_index import lineage

    try:
        got = lineage(open_engine(registry, runs_dir), model)
    except FedcrmError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps(got, indent=2, default=str))
        return
    m, run = got["model"], got["run"]
    console.print(f"[bold]{m['model_id']}[/] ({m['stage']}) — {m['file']} sha256 {m['sha256']}")
    console.print(f"  from round {m['round']} of run {run['run_id']} ({run['status']}; final model rule "
                  f"{run['final_rule']}, best round {run['best_round']}"
                  + (f", stopped early after round {run['stopped_early_after']}" if run["stopped_early_after"] else "")
                  + f"); {run['aggregation']}, {run['strategy']}")
    console.print(f"  task {got['task']['name']} schema sha256 {got['task']['schema_sha256']}")
    console.print(f"  partners: {', '.join(got['partners'])}; rounds: "
                  + ", ".join(str(r["round"]) for r in got["rounds"]))
    table = Table(title="Consent-ledger heads (the last each partner signed up to the model's round)")
    for col in ("partner", "round", "stage", "origin", "tree size", "root hash"):
        table.add_column(col)
    for h in got["ledger_heads"]:
        table.add_row(h["partner"], str(h["round"]), h["stage"], str(h["origin"]), str(h["tree_size"]),
                      str(h["root_hash"]))
    console.print(table)
    privacy = got["privacy"]
    if privacy["differential_privacy"]:
        for p, v in sorted(privacy["partners"].items()):
            console.print(f"  DP: partner {p} ε = {v['epsilon']:.3f}, δ = {v['delta']}, "
                          f"noise multiplier {v['noise_multiplier']} (as of round {v['as_of_round']})")
    else:
        console.print("  DP: no partner reported differential privacy for this model")
    console.print(f"  metrics: example-weighted over {got['metric_source']}")


def status_command(run: str = typer.Argument(..., help="Run id or run directory."),
                   runs_dir: Path = RunsDirOpt,
                   follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the run ends."),
                   interval: float = typer.Option(2.0, help="Seconds between updates with --follow.")) -> None:
    """A run's live progress, read from its run directory (rounds done, latest metrics, dropouts, status)."""
    run_dir = Path(run) if Path(run).is_dir() else _runs_dir(runs_dir) / run
    if not (run_dir / "plan.json").exists():
        raise _fail(FedcrmError(f"{run_dir}: not a run directory (no plan.json)"))
    seen = -1
    while True:
        text, ended, size = _progress(run_dir)
        if size != seen:
            console.print(text)
            seen = size
        if ended or not follow:
            return
        time.sleep(interval)


def _progress(run_dir: Path) -> tuple[str, bool, int]:
    from fedcrm.coordinator.model_choice import model_selection
    from fedcrm.coordinator.registry import read_events, rounds_from_events
    from fedcrm.coordinator.run_config import RunPlan

    plan = RunPlan.load(run_dir / "plan.json")
    events = read_events(run_dir)
    rounds = rounds_from_events(events)
    done = [r for r in rounds if "federated" in r]
    status_path = run_dir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else None
    state = status["outcome"] if status else "running"
    lines = [f"run {plan.run_id}: {state} — {len(done)}/{plan.config.rounds} rounds completed"]
    current = next((e for e in reversed(events) if e["event"] in ("round_start", "secagg_stage", "fit", "evaluate",
                                                                   "statistics", "partners", "run_start")), None)
    if status is None and current is not None:
        where = f"round {current['round']} {current.get('stage', current['event'])}" if "round" in current else current["event"]
        lines.append(f"  now: {where} ({time.time() - current['time']:.0f} s ago)")
    for r in done[-5:]:
        fed = r["federated"]
        auc = fed.get("roc_auc")
        lines.append(f"  round {r['round']}: validation loss {fed['loss']:.4f}, ROC AUC "
                     + (f"{auc:.4f}" if auc is not None else "withheld") + " (local hold-outs); partners "
                     + ", ".join(sorted(r.get("evaluate", {}))))
    for r in rounds:
        for stage, missing in r.get("missing", {}).items():
            for p, why in missing.items():
                lines.append(f"  round {r['round']} {stage}: {p} dropped out — {why}")
    if status is not None:
        chosen = model_selection(events, rounds)
        if status.get("succeeded"):
            lines.append(f"  final model: round {chosen['final_round']} ({chosen['final_rule']}); "
                         f"best round {chosen['best_round']}")
        if status.get("error"):
            lines.append(f"  error: {status['error']}")
        if chosen["stopped_early_after"]:
            lines.append(f"  stopped early after round {chosen['stopped_early_after']}")
    return "\n".join(lines), status is not None, len(events) + (1 if status else 0)


@token_app.command("create")
def token_create(tokens: Path = typer.Option(..., "--tokens", dir_okay=False, help="Token file (mode 0600)."),
                 role: str = typer.Option(..., "--role", help="operator | viewer"),
                 name: str = typer.Option(..., "--name", help="Who holds the token (unique in the file).")) -> None:
    """Issue an operator-API token; it is printed once and only its SHA-256 is stored."""
    from fedcrm.coordinator.api_tokens import create_operator_token

    try:
        token = create_operator_token(tokens, role, name)
    except FedcrmError as exc:
        raise _fail(exc) from exc
    print(token)


@token_app.command("list")
def token_list(tokens: Path = typer.Option(..., "--tokens", dir_okay=False)) -> None:
    """Issued tokens: names, roles and creation times (never the secrets)."""
    from fedcrm.coordinator.api_tokens import list_operator_tokens

    try:
        for t in list_operator_tokens(tokens):
            console.print(f"{t.name}\t{t.role}\t{t.created_at:%Y-%m-%d %H:%M:%S} UTC")
    except FedcrmError as exc:
        raise _fail(exc) from exc


@token_app.command("revoke")
def token_revoke(tokens: Path = typer.Option(..., "--tokens", dir_okay=False),
                 name: str = typer.Option(..., "--name")) -> None:
    """Revoke a token by name (the server re-reads the file on its next request)."""
    from fedcrm.coordinator.api_tokens import revoke_operator_token

    try:
        revoke_operator_token(tokens, name)
    except FedcrmError as exc:
        raise _fail(exc) from exc
    console.print(f"revoked {name}")


def register(app: typer.Typer) -> None:
    """Mount the registry commands on `fedcrm coordinator`."""
    app.add_typer(registry_app, name="registry")
    app.add_typer(token_app, name="token")
    app.command("models")(models_command)
    app.command("promote")(promote_command)
    app.command("lineage")(lineage_command)
    app.command("status")(status_command)
