"""`fedcrm consent …`: record consents, answer subject requests, report, serve the API, manage tokens.

The ledger is named by ``--ledger`` (SQLAlchemy URL or .db path) with ``--signing-key`` for
commands that write, or by ``--partner-dir DIR`` (``DIR/consent.db`` and ``DIR/ledger.key``,
the partner directory layout). ``verify``, ``export`` and ``key`` come from ``cli_log``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import import_consents, make_consent
from fedcrm.consent.taxonomy import default_vocabulary
from fedcrm.errors import FedcrmError

app = typer.Typer(no_args_is_help=True)
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens of the consent API (stored hashed, mode 0600).")
app.add_typer(token_app, name="token")

console = Console()

LedgerOpt = Annotated[
    str | None, typer.Option("--ledger", envvar="FEDCRM_LEDGER_URL", help="SQLAlchemy URL or path to a SQLite .db file.")
]
SigningKeyOpt = Annotated[
    Path | None, typer.Option("--signing-key", dir_okay=False, help="The ledger's Ed25519 signing key (PEM), to write.")
]
PartnerDirOpt = Annotated[
    Path | None,
    typer.Option("--partner-dir", file_okay=False, help="Partner directory: uses DIR/consent.db and DIR/ledger.key."),
]
OriginOpt = Annotated[
    str | None, typer.Option("--origin", help="Log origin, needed only to create a new ledger (e.g. fedcrm/telco-a).")
]
SubjectOpt = Annotated[str | None, typer.Option("--subject", help="The customer's pseudonym '<key_id>:<hex>'.")]
CustomerOpt = Annotated[
    str | None, typer.Option("--customer-id", help="The raw customer id, pseudonymised here with --partner-key.")
]
PartnerKeyOpt = Annotated[
    Path | None, typer.Option("--partner-key", dir_okay=False, help="The partner's pseudonymisation key file.")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def open_ledger(
    ledger: str | None, signing_key: Path | None, partner_dir: Path | None, origin: str | None = None, *, write: bool
) -> Ledger:
    """Open the ledger named by ``--ledger``/``--signing-key`` or ``--partner-dir``."""
    if partner_dir is not None:
        if ledger is not None:
            raise _fail("give either --ledger or --partner-dir, not both", 2)
        ledger = str(partner_dir / "consent.db")
        signing_key = signing_key or partner_dir / "ledger.key"
    if ledger is None:
        raise _fail("name the ledger with --ledger (or FEDCRM_LEDGER_URL) or --partner-dir", 2)
    if write and signing_key is None:
        raise _fail("writing to the ledger needs its --signing-key (or --partner-dir)", 2)
    return Ledger.open(ledger, signing_key_path=signing_key if write else None, origin=origin)


def _pseudonymiser(partner_key: Path) -> Callable[[str], str]:
    # The one place consent reaches into client: a CLI convenience so a compliance officer can
    # type a raw customer id. The key never leaves this machine; only the pseudonym is used.
    from fedcrm.client.pseudonymise import load_key, pseudonymise  # noqa: PLC0415

    key = load_key(partner_key)
    return lambda raw: pseudonymise(raw, key)


def _subject(subject: str | None, customer_id: str | None, partner_key: Path | None) -> str:
    if (subject is None) == (customer_id is None):
        raise _fail("give exactly one of --subject PSEUDONYM or --customer-id RAW (with --partner-key)", 2)
    if subject is not None:
        return subject
    if partner_key is None:
        raise _fail("--customer-id needs --partner-key to pseudonymise it locally", 2)
    assert customer_id is not None
    return _pseudonymiser(partner_key)(customer_id)


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(f"{option}: '{value}' is not an ISO-8601 timestamp", 2) from None
    if parsed.tzinfo is None:
        raise _fail(f"{option}: '{value}' has no time zone (write e.g. 2025-05-01T09:00:00Z)", 2)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _fail(f"{option}: '{value}' is out of range in UTC (years 1 to 9999)", 2) from None


def _record(
    action: str,
    subject: str | None,
    customer_id: str | None,
    partner_key: Path | None,
    purpose: str,
    categories: list[str] | None,
    legal_basis: str | None,
    effective_at: str | None,
    expires_at: str | None,
    source: str,
    notice_version: str,
    ledger: str | None,
    signing_key: Path | None,
    partner_dir: Path | None,
    origin: str | None,
) -> None:
    who = _subject(subject, customer_id, partner_key)
    try:
        cats = categories or list(default_vocabulary().purpose(purpose).data_categories)
        now = datetime.now(UTC)
        events = [
            make_consent(
                subject=who, purpose=purpose, category=cat, action=action, legal_basis=legal_basis,
                effective_at=_time(effective_at, "--effective-at") or now, recorded_at=now,
                expires_at=_time(expires_at, "--expires-at"), source=source, notice_version=notice_version,
            )
            for cat in cats
        ]
        with open_ledger(ledger, signing_key, partner_dir, origin, write=True) as led:
            head = led.append(events)
    except FedcrmError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"{action} recorded", show_header=True)
    for col in ("index", "receipt", "purpose", "category", "basis", "effective"):
        table.add_column(col)
    for offset, ev in enumerate(events):
        table.add_row(str(head.size - len(events) + offset), ev.receipt_id, ev.purpose, ev.category, ev.legal_basis,
                      ev.effective_at.isoformat())
    console.print(table)
    console.print(f"signed tree head: size {head.size}")


# Options grant and withdraw share.
CategoryOpt = Annotated[list[str] | None, typer.Option(
    "--category", help="Data category (repeatable); default: every category the purpose uses.")]
LegalBasisOpt = Annotated[str | None, typer.Option("--legal-basis", help="Default: the purpose's.")]
EffectiveAtOpt = Annotated[str | None, typer.Option("--effective-at", help="ISO-8601 with zone; default now.")]


@app.command()
def grant(
    purpose: Annotated[str, typer.Option("--purpose", help="Purpose key, e.g. purchase_propensity.")],
    notice_version: Annotated[str, typer.Option("--notice-version", help="Version of the privacy notice shown.")],
    subject: SubjectOpt = None,
    customer_id: CustomerOpt = None,
    partner_key: PartnerKeyOpt = None,
    category: CategoryOpt = None,
    legal_basis: LegalBasisOpt = None,
    effective_at: EffectiveAtOpt = None,
    expires_at: Annotated[str | None, typer.Option("--expires-at", help="ISO-8601 with zone.")] = None,
    source: Annotated[str, typer.Option("--source", help="Where the consent was given.")] = "cli",
    ledger: LedgerOpt = None,
    signing_key: SigningKeyOpt = None,
    partner_dir: PartnerDirOpt = None,
    origin: OriginOpt = None,
) -> None:
    """Record a grant of consent (one receipt per data category)."""
    _record("grant", subject, customer_id, partner_key, purpose, category, legal_basis, effective_at, expires_at,
            source, notice_version, ledger, signing_key, partner_dir, origin)


@app.command()
def withdraw(
    purpose: Annotated[str, typer.Option("--purpose", help="Purpose key, e.g. churn_prediction.")],
    notice_version: Annotated[str, typer.Option("--notice-version", help="Version of the privacy notice in force.")],
    subject: SubjectOpt = None,
    customer_id: CustomerOpt = None,
    partner_key: PartnerKeyOpt = None,
    category: CategoryOpt = None,
    legal_basis: LegalBasisOpt = None,
    effective_at: EffectiveAtOpt = None,
    source: Annotated[str, typer.Option("--source", help="Where the withdrawal or objection was made.")] = "cli",
    ledger: LedgerOpt = None,
    signing_key: SigningKeyOpt = None,
    partner_dir: PartnerDirOpt = None,
    origin: OriginOpt = None,
) -> None:
    """Record a withdrawal of consent or an objection (stops further use from its effective time)."""
    _record("withdraw", subject, customer_id, partner_key, purpose, category, legal_basis, effective_at, None,
            source, notice_version, ledger, signing_key, partner_dir, origin)


@app.command("import")
def import_(
    csv_path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Consent CSV (see docs/consent.md).")],
    partner_key: PartnerKeyOpt = None,
    ledger: LedgerOpt = None,
    signing_key: SigningKeyOpt = None,
    partner_dir: PartnerDirOpt = None,
    origin: OriginOpt = None,
    vocabulary: Annotated[list[Path] | None, typer.Option(
        "--vocabulary", help="Extra vocabulary YAML (the files the partner config names); repeatable.")] = None,
) -> None:
    """Import consent records from CSV: every row is checked first; one bad row and nothing is written."""
    from fedcrm.consent.taxonomy import load_vocabulary  # noqa: PLC0415

    try:
        pseudonymise = _pseudonymiser(partner_key) if partner_key is not None else None
        vocab = load_vocabulary(vocabulary) if vocabulary else None
        with open_ledger(ledger, signing_key, partner_dir, origin, write=True) as led:
            result = import_consents(led, csv_path, pseudonymise=pseudonymise, vocabulary=vocab)
    except FedcrmError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"imported {result.n_events} consent records from {csv_path} "
        f"(entries {result.first_index}–{result.checkpoint.size - 1}); signed tree head: size {result.checkpoint.size}"
    )


@app.command()
def subject(
    subject: SubjectOpt = None,
    customer_id: CustomerOpt = None,
    partner_key: PartnerKeyOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the full answer as JSON here.")] = None,
    ledger: LedgerOpt = None,
    partner_dir: PartnerDirOpt = None,
) -> None:
    """Answer a data-subject access request: consent history and every use of the customer's data."""
    from fedcrm.consent.subject import subject_report  # noqa: PLC0415

    who = _subject(subject, customer_id, partner_key)
    try:
        with open_ledger(ledger, None, partner_dir, write=False) as led:
            answer = subject_report(led, who)
    except FedcrmError as exc:
        raise _fail(str(exc)) from None
    console.print(f"[bold]Subject[/] {answer.subject}  (ledger size {answer.tree_size})")
    history = Table(title="Consent history")
    for col in ("#", "action", "purpose", "category", "basis", "effective", "expires", "source", "notice"):
        history.add_column(col)
    for c in answer.consents:
        history.add_row(str(c.index), c.action, c.purpose, c.category, c.legal_basis, c.effective_at.isoformat(),
                        c.expires_at.isoformat() if c.expires_at else "", c.source, c.notice_version)
    console.print(history if answer.consents else "No consent records (opt-out purposes still apply).")
    uses = Table(title="Uses of this customer's data")
    for col in ("#", "job", "version", "stage", "purpose", "partner", "consent as of", "columns"):
        uses.add_column(col)
    for u in answer.uses:
        uses.add_row(str(u.index), u.job_id, u.model_version, u.stage, u.purpose, u.partner, u.at.isoformat(),
                     ", ".join(u.columns))
    console.print(uses if answer.uses else "No recorded use included this customer.")
    for job in answer.jobs:
        console.print(f"[bold]{job.job_id}[/]")
        for line in job.lines:
            console.print(f"  {line}")
    console.print(answer.statement)
    if json_out is not None:
        json_out.write_text(answer.model_dump_json(indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}")
    if not answer.log_verifies:
        raise _fail(f"the consent log does not verify, so this answer cannot be trusted: {answer.verification}")
    console.print(f"log verifies: {answer.verification}")


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Directory for consent-audit.json/.html.")],
    start: Annotated[str | None, typer.Option("--start", help="ISO-8601 with zone; default 30 days before --end.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="ISO-8601 with zone (excluded); default now.")] = None,
    ledger: LedgerOpt = None,
    partner_dir: PartnerDirOpt = None,
) -> None:
    """Write the audit report for a period (consents, withdrawals, uses, refusals, verification)."""
    from fedcrm.consent.report import build_report, report_period, write_report  # noqa: PLC0415

    try:
        begin, stop = report_period(_time(start, "--start"), _time(end, "--end"))
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    try:
        with open_ledger(ledger, None, partner_dir, write=False) as led:
            audit = build_report(led, begin, stop)
    except (FedcrmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    json_path, html_path = write_report(audit, out)
    table = Table(title=f"Consent audit {begin.isoformat()} – {stop.isoformat()}", show_header=False)
    verified = "[bold green]yes[/]" if audit.verification.ok else f"[bold red]NO[/] ({audit.verification.message})"
    table.add_row("log verifies", verified)
    grants, withdrawals = sum(c.grants for c in audit.consents), sum(c.withdrawals for c in audit.consents)
    table.add_row("grants / withdrawals", f"{grants} / {withdrawals}")
    table.add_row("uses", str(len(audit.uses)))
    table.add_row("refusals", str(len(audit.refusals)))
    for spend in audit.privacy_spend:
        left = "" if spend.remaining_at_end is None else f", {spend.remaining_at_end:.4g} of {spend.budget:g} left"
        table.add_row(f"ε spent: {spend.partner} × {spend.purpose}", f"{spend.epsilon_spent:.4g} in {len(spend.runs)} run(s){left}")
    table.add_row("written", f"{json_path}\n{html_path}")
    console.print(table)
    if not audit.verification.ok:
        raise typer.Exit(1)


@app.command()
def budget(
    at: Annotated[str | None, typer.Option("--at", help="ISO-8601 with zone; the period containing it (default now).")] = None,
    purpose: Annotated[str | None, typer.Option("--purpose", help="One purpose (default: every purpose with a budget).")] = None,
    ledger: LedgerOpt = None,
    partner_dir: PartnerDirOpt = None,
) -> None:
    """ε budgets: per purpose, the budget, what this partner spent this period and what remains."""
    from fedcrm.consent import budget as budgets  # noqa: PLC0415

    when = _time(at, "--at") or datetime.now(UTC)
    vocab = default_vocabulary()
    keys = [purpose] if purpose else [k for k, p in vocab.purposes.items() if p.privacy is not None]
    table = Table(title=f"ε budgets as of {when.isoformat()}")
    for col in ("purpose", "DP", "budget", "period", "spent", "remaining", "runs"):
        table.add_column(col)
    try:
        with open_ledger(ledger, None, partner_dir, write=False) as led:
            for key in keys:
                status = budgets.budget_status(led, key, when, vocabulary=vocab)
                policy = vocab.purpose(key).privacy
                table.add_row(
                    key, policy.differential_privacy if policy else "–",
                    "none" if status.budget is None else f"{status.budget:g}",
                    "–" if status.period_start is None else f"{status.period} from {status.period_start.date()}",
                    f"{status.spent:.4g}", "–" if status.remaining is None else f"{status.remaining:.4g}",
                    str(len(status.runs)))
    except (FedcrmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(table)


@app.command()
def serve(
    tokens: Annotated[
        Path, typer.Option("--tokens", dir_okay=False, help="Token file (create with `consent token create`).")
    ],
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind; keep it on loopback behind a TLS proxy.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8765,
    ledger: LedgerOpt = None,
    signing_key: SigningKeyOpt = None,
    partner_dir: PartnerDirOpt = None,
) -> None:
    """Serve the consent API (OpenAPI docs at /docs); one access line per request, route templates only."""
    import uvicorn  # noqa: PLC0415

    from fedcrm.consent.api import create_app  # noqa: PLC0415
    from fedcrm.consent.tokens import check_token_file  # noqa: PLC0415

    try:
        # Refuse a missing, invalid or too-readable token file now, not with a failure on every request.
        n_tokens = check_token_file(tokens)
        led = open_ledger(ledger, signing_key, partner_dir, write=signing_key is not None or partner_dir is not None)
    except FedcrmError as exc:
        raise _fail(str(exc), 2) from None
    if n_tokens == 0:
        console.print(f"[yellow]warning:[/] {tokens} holds no tokens yet; every request is refused until one is created")
    if host not in ("127.0.0.1", "::1", "localhost"):
        console.print(f"[yellow]warning:[/] listening on {host}, beyond loopback; put a TLS-terminating proxy in front")
    try:
        # uvicorn's access log prints raw paths and query strings (pseudonyms); the app logs route templates instead.
        uvicorn.run(create_app(led, tokens), host=host, port=port, log_level="info", access_log=False,
                    server_header=False)
    finally:
        led.close()


@token_app.command("create")
def token_create(
    tokens: Annotated[Path, typer.Option("--tokens", dir_okay=False, help="Token file (created with mode 0600).")],
    role: Annotated[str, typer.Option("--role", help="auditor | partner-writer | coordinator")],
    name: Annotated[str, typer.Option("--name", help="Who holds the token (unique in the file).")],
) -> None:
    """Issue a token; it is printed once and only its SHA-256 is stored."""
    from fedcrm.consent.tokens import create_token  # noqa: PLC0415

    try:
        secret = create_token(tokens, role, name)
    except FedcrmError as exc:
        raise _fail(str(exc)) from None
    console.print(f"token for [bold]{name}[/] ({role}); shown once, store it now:", highlight=False)
    typer.echo(secret)


@token_app.command("list")
def token_list(tokens: Annotated[Path, typer.Option("--tokens", dir_okay=False)]) -> None:
    """List issued tokens (names and roles; secrets are never stored)."""
    from fedcrm.consent.tokens import list_tokens  # noqa: PLC0415

    try:
        records = list_tokens(tokens)
    except FedcrmError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=str(tokens))
    for col in ("name", "role", "created", "sha256 (prefix)"):
        table.add_column(col)
    for r in records:
        table.add_row(r.name, r.role, r.created_at.isoformat(), r.sha256[:12])
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    tokens: Annotated[Path, typer.Option("--tokens", dir_okay=False)],
    name: Annotated[str, typer.Option("--name")],
) -> None:
    """Revoke the token issued under ``--name``."""
    from fedcrm.consent.tokens import revoke_token  # noqa: PLC0415

    try:
        revoke_token(tokens, name)
    except FedcrmError as exc:
        raise _fail(str(exc)) from None
    console.print(f"revoked {name}")


from fedcrm.consent import cli_log  # noqa: E402  (A's verify/export/key commands join this group)

cli_log.register(app)
