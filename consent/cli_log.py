"""`fedcrm consent verify | key export | export | erase`: check, publish, export the log; erase a subject.

Engineer-facing entry: :func:`register` adds these commands to the ``consent`` Typer app.
The ledger is named by ``--ledger`` (a SQLAlchemy URL or a path to a SQLite .db file)
or the ``FEDCRM_LEDGER_URL`` environment variable.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedcrm.consent import checkpoint as cp
from fedcrm.consent.bundle import VerificationReport, export_bundle, verify_bundle
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import FedcrmError

__all__ = ["register"]

LedgerOpt = Annotated[
    str | None,
    typer.Option("--ledger", envvar="FEDCRM_LEDGER_URL", help="SQLAlchemy URL or path to a SQLite .db file."),
]
PublicKeyOpt = Annotated[
    Path | None,
    typer.Option("--public-key", exists=True, dir_okay=False, help="Pin the key to verify with (PEM); default: the one stored."),
]


def _fail(console: Console, message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _read_trusted(path: Path | None) -> str | None:
    return None if path is None else path.read_text(encoding="utf-8")


def _summary(console: Console, title: str, report: VerificationReport, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    table.add_row("entries checked", str(report.checked_size))
    if report.trusted_size is not None:
        table.add_row("trusted head size", str(report.trusted_size))
    if report.ok:
        table.add_row("result", "[bold green]OK[/]")
    else:
        where = f"first bad index {report.first_bad_index}" if report.first_bad_index is not None else report.failure
        table.add_row("result", f"[bold red]FAILED[/] ({where})")
    table.add_row("detail", report.message)
    console.print(table)


def verify(
    ledger: LedgerOpt = None,
    trusted_head: Annotated[
        Path | None, typer.Option("--trusted-head", exists=True, dir_okay=False, help="A checkpoint note held outside the partner.")
    ] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", exists=True, help="Verify an exported bundle instead (offline).")] = None,
    public_key: PublicKeyOpt = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Processes for a large SQLite log (split at power-of-two subtrees).")
    ] = 1,
) -> None:
    """Verify the consent log (or a bundle) against its signed head; exit 1 naming the first bad index."""
    console = Console()
    trusted = _read_trusted(trusted_head)
    try:
        if bundle is not None:
            pem = public_key.read_bytes() if public_key is not None else None
            report = verify_bundle(bundle, trusted=trusted, public_key_pem=pem)
            _summary(console, f"bundle {bundle}", report, [])
        else:
            if not ledger:
                raise _fail(console, "name the ledger with --ledger or FEDCRM_LEDGER_URL (or give --bundle)", 2)
            pem = public_key.read_bytes() if public_key is not None else None
            with Ledger.open(ledger, public_key_pem=pem) as led:
                report = led.verify(trusted=trusted, workers=workers)
                head = led.latest_checkpoint()
                rows = [("origin", led.origin), ("tree size", str(head.size)),
                        ("root hash", base64.b64encode(head.root_hash).decode()), ("key", led.verifier)]
                if public_key is None:
                    rows.append(("note", "key read from the database: compare it with the verifier you hold"))
                _summary(console, "consent log", report, rows)
    except FedcrmError as exc:
        raise _fail(console, str(exc)) from None
    if not report.ok:
        raise typer.Exit(1)


def key_export(
    ledger: LedgerOpt = None,
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", exists=True, dir_okay=False, help="Private key file (instead of --ledger).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Key name (the log origin) when exporting from --signing-key.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="pem | verifier (signed-note verifier key string).")] = "pem",
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
) -> None:
    """Export the ledger's public key, as PEM or as a signed-note verifier string."""
    console = Console()
    if fmt not in ("pem", "verifier"):
        raise _fail(console, f"--format must be 'pem' or 'verifier', not {fmt!r}", 2)
    try:
        if signing_key is not None:
            public = cp.load_signing_key(signing_key).public_key()
            key_name = name
        elif ledger:
            with Ledger.open(ledger) as led:
                public = cp.load_public_key(led.public_key_pem)
                key_name = name or led.key_name
        else:
            raise _fail(console, "give --ledger (or FEDCRM_LEDGER_URL) or --signing-key", 2)
        if fmt == "pem":
            text = cp.public_key_pem(public).decode()
        else:
            if not key_name:
                raise _fail(console, "--format verifier with --signing-key needs --name (the log origin)", 2)
            text = cp.verifier_string(key_name, public) + "\n"
    except FedcrmError as exc:
        raise _fail(console, str(exc)) from None
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


def export(
    ledger: LedgerOpt = None,
    out: Annotated[Path, typer.Option("--out", help="A directory, or a single file if it ends in .json.")] = Path("consent-bundle"),
) -> None:
    """Export the public log (checkpoint, key, leaves; no personal data) for offline verification."""
    console = Console()
    if not ledger:
        raise _fail(console, "name the ledger with --ledger or FEDCRM_LEDGER_URL", 2)
    try:
        with Ledger.open(ledger) as led:
            head = export_bundle(led, out)
    except FedcrmError as exc:
        raise _fail(console, str(exc)) from None
    console.print(f"wrote {out}: {head.size} entries, signed head of {head.origin}")


def erase(
    subject: Annotated[str | None, typer.Option("--subject", help="The customer's pseudonym '<key_id>:<hex>'.")] = None,
    customer_id: Annotated[
        str | None, typer.Option("--customer-id", help="The raw customer id, pseudonymised here with --partner-key.")
    ] = None,
    partner_key: Annotated[
        Path | None, typer.Option("--partner-key", dir_okay=False, help="The partner's pseudonymisation key file.")
    ] = None,
    request_id: Annotated[str, typer.Option("--request-id", help="Your reference of the erasure request.")] = "consent-cli",
    ledger: LedgerOpt = None,
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", dir_okay=False, help="The ledger's Ed25519 signing key (PEM).")
    ] = None,
    partner_dir: Annotated[
        Path | None, typer.Option("--partner-dir", file_okay=False, help="Uses DIR/consent.db and DIR/ledger.key.")
    ] = None,
) -> None:
    """Erase a subject's personal data from the ledger, as a logged erasure entry (the log still verifies).

    Objections and withdrawals made before stay in force: the subject's pseudonyms are
    never let through the gate again. The partner's ingested tables are not touched here:
    on the partner machine run `fedcrm client erase --config P --customer-id RAW`, which
    does both.
    """
    from fedcrm.consent.cli import _subject, open_ledger  # noqa: PLC0415 (cli imports this module)

    console = Console()
    who = _subject(subject, customer_id, partner_key)
    try:
        with open_ledger(ledger, signing_key, partner_dir, write=True) as led:
            done = led.erase_subject(who, request_id=request_id)
    except FedcrmError as exc:
        raise _fail(console, str(exc)) from None
    table = Table(title=f"erasure {request_id} logged", show_header=False)
    table.add_row("erasure entry", f"#{done.index}")
    table.add_row("consent receipts emptied", str(done.payloads))
    table.add_row("usage subject sets updated", str(done.subject_sets))
    table.add_row("rotation mappings removed", str(done.rotation_rows))
    table.add_row("pseudonyms suppressed", str(done.pseudonyms))
    table.add_row("signed tree head", f"size {done.checkpoint.size}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``verify``, ``key export``, ``export`` and ``erase`` to a Typer app (the ``consent`` group)."""
    app.command("verify")(verify)
    app.command("export")(export)
    app.command("erase")(erase)
    key_app = typer.Typer(no_args_is_help=True, help="The ledger's signing key.")
    key_app.command("export")(key_export)
    app.add_typer(key_app, name="key")
