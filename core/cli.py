"""The `fedcrm` console script: one command group per role, plus the demo."""

from __future__ import annotations

import typer

from fedcrm.certs_cli import app as certs_app
from fedcrm.client.cli import app as client_app
from fedcrm.consent.cli import app as consent_app
from fedcrm.coordinator.cli import app as coordinator_app
from fedcrm.demo import demo_command
from fedcrm.partition_cli import partition_command

app = typer.Typer(
    name="fedcrm",
    help="Privacy-preserving federated CRM analytics.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(client_app, name="client", help="Partner side: keys, ingestion, quality, analytics, training, scoring.")
app.add_typer(coordinator_app, name="coordinator", help="Operator side: federated runs, registry, API, dashboard.")
app.add_typer(consent_app, name="consent", help="Consent ledger: grants, withdrawals, audit log, verification.")
app.add_typer(certs_app, name="certs", help="TLS certificates: CA, server and client certificates, rotation.")
app.command("demo", help="End-to-end demo on the bundled Telco partners.")(demo_command)
app.command("partition", help="Split a data set into partner organisations (IID, skewed, many).")(partition_command)

# `fedcrm up` / `fedcrm down`: the deployment topology as processes on one machine.
from fedcrm.coordinator import cli_local  # noqa: E402

cli_local.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
