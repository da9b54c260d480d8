"""The audit report for a period: consents, withdrawals, uses, refusals, and whether the log verifies.

Written as JSON (for machines) and HTML (for a compliance officer), from the ledger alone.
It holds counts and job-level facts, never pseudonyms: who was used is answered per
subject by ``fedcrm consent subject``.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ConfigDict

from fedcrm.consent.events import ConsentEvent, KeyRotationEvent, PrivacySpendEvent, RefusalEvent, UsageEvent
from fedcrm.consent.subject import PAST_INFLUENCE
from fedcrm.consent.taxonomy import Vocabulary, default_vocabulary

if TYPE_CHECKING:
    from fedcrm.consent.ledger import Ledger

__all__ = ["DEFAULT_PERIOD", "AuditReport", "build_report", "render_html", "report_period", "write_report"]

#: The report period when no start is given: this long before its end.
DEFAULT_PERIOD = timedelta(days=30)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PurposePolicy(_Out):
    key: str
    name: str
    legal_basis: str
    coverage: str
    data_categories: tuple[str, ...]
    retention_days: int


class ConsentCounts(_Out):
    purpose: str
    grants: int
    withdrawals: int
    subjects: int


class UseRow(_Out):
    index: int
    job_id: str
    partner: str
    purpose: str
    model_version: str
    stage: str
    at: datetime
    tree_size_read: int
    n_subjects: int
    columns: tuple[str, ...]


class PurposeUses(_Out):
    purpose: str
    uses: int
    jobs: tuple[str, ...]
    stages: dict[str, int]
    max_subjects: int


class RefusalRow(_Out):
    index: int
    job_id: str
    partner: str
    purpose: str
    column: str
    category: str
    reason: str
    at: datetime


class TrainingRun(_Out):
    job_id: str
    purpose: str
    versions: tuple[str, ...]
    subjects_per_round: dict[str, int]


class PrivacySpendRow(_Out):
    """ε this ledger's partner spent on one purpose (``dp_spend`` events), with its budget."""

    partner: str
    purpose: str
    epsilon_spent: float
    delta_spent: float
    releases: int
    runs: tuple[str, ...]
    budget: float | None
    budget_period: str | None
    remaining_at_end: float | None


class Verification(_Out):
    ok: bool
    checked_size: int
    message: str
    first_bad_index: int | None


class AuditReport(_Out):
    """Everything the report states, as data."""

    origin: str
    start: datetime
    end: datetime
    generated_at: datetime
    tree_size: int
    root_hash: str
    checkpoint: str
    verification: Verification
    policies: tuple[PurposePolicy, ...]
    consents: tuple[ConsentCounts, ...]
    uses_per_purpose: tuple[PurposeUses, ...]
    uses: tuple[UseRow, ...]
    refusals: tuple[RefusalRow, ...]
    training_runs: tuple[TrainingRun, ...]
    privacy_spend: tuple[PrivacySpendRow, ...] = ()
    key_rotations: int
    statement: str


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} {value.isoformat()} has no time zone (report period bounds must be tz-aware)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name} {value.isoformat()} is out of range in UTC (years 1 to 9999)") from None


def report_period(start: datetime | None, end: datetime | None, *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The period ``[start, end)`` in UTC with its defaults (end: now; start: 30 days before end).

    Raises
    ------
    ValueError
        A bound without a zone or outside what UTC can hold, a default start before year 1,
        or an empty period; the message names the bound.
    """
    stop = _utc(end, "end") if end is not None else (now or datetime.now(UTC)).astimezone(UTC)
    if start is not None:
        begin = _utc(start, "start")
    else:
        try:
            begin = stop - DEFAULT_PERIOD
        except OverflowError:
            raise ValueError(
                f"end {stop.isoformat()} is less than {DEFAULT_PERIOD.days} days after year 1; give start as well"
            ) from None
    if stop <= begin:
        raise ValueError(f"report period is empty: end {stop.isoformat()} is not after start {begin.isoformat()}")
    return begin, stop


def _in(when: datetime, start: datetime, end: datetime) -> bool:
    return start <= when < end


def build_report(
    ledger: Ledger, start: datetime, end: datetime, *, vocabulary: Vocabulary | None = None
) -> AuditReport:
    """Summarise the ledger for ``start <= t < end``.

    Consents count by effective time; uses and refusals by their consent-as-of time ``at``.
    """
    start, end = report_period(start, end)
    vocab = vocabulary or default_vocabulary()
    verification = ledger.verify()
    head = ledger.latest_checkpoint()
    grants: Counter[str] = Counter()
    withdrawals: Counter[str] = Counter()
    subjects: dict[str, set[str]] = {}
    uses: list[UseRow] = []
    refusals: list[RefusalRow] = []
    rotations = 0
    spent: list[tuple[int, PrivacySpendEvent]] = []
    for stored in ledger.events(0, head.size):
        ev = stored.event
        if isinstance(ev, PrivacySpendEvent):
            spent.append((stored.index, ev))
        if isinstance(ev, ConsentEvent) and _in(ev.effective_at, start, end):
            (grants if ev.action == "grant" else withdrawals)[ev.purpose] += 1
            subjects.setdefault(ev.purpose, set()).add(ev.subject if not stored.erased else f"<erased:{stored.index}>")
        elif isinstance(ev, UsageEvent) and _in(ev.at, start, end):
            uses.append(UseRow(index=stored.index, **ev.model_dump(include=set(UseRow.model_fields) - {"index"})))
        elif isinstance(ev, RefusalEvent) and _in(ev.at, start, end):
            refusals.append(RefusalRow(index=stored.index, **ev.model_dump(exclude={"kind"})))
        elif isinstance(ev, KeyRotationEvent) and _in(ev.at, start, end):
            rotations += 1

    per_purpose = []
    for purpose in dict.fromkeys(u.purpose for u in uses):
        mine = [u for u in uses if u.purpose == purpose]
        per_purpose.append(
            PurposeUses(
                purpose=purpose,
                uses=len(mine),
                jobs=tuple(dict.fromkeys(u.job_id for u in mine)),
                stages=dict(Counter(u.stage for u in mine)),
                max_subjects=max(u.n_subjects for u in mine),
            )
        )
    runs = []
    for job in dict.fromkeys(u.job_id for u in uses if u.stage == "fit"):
        mine = [u for u in uses if u.job_id == job]
        versions = tuple(dict.fromkeys(u.model_version for u in mine if u.model_version))
        runs.append(
            TrainingRun(
                job_id=job,
                purpose=mine[0].purpose,
                versions=(*versions, f"{job}:final") if f"{job}:final" not in versions else versions,
                subjects_per_round={u.model_version: u.n_subjects for u in mine if u.stage == "fit"},
            )
        )
    policies = tuple(
        PurposePolicy(
            key=p.key,
            name=p.name,
            legal_basis=p.legal_basis,
            coverage=vocab.legal_basis(p.legal_basis).coverage,
            data_categories=p.data_categories,
            retention_days=p.retention_days,
        )
        for p in vocab.purposes.values()
    )
    purposes = list(dict.fromkeys([*grants, *withdrawals]))
    return AuditReport(
        origin=head.origin,
        start=start.astimezone(UTC),
        end=end.astimezone(UTC),
        generated_at=datetime.now(UTC),
        tree_size=head.size,
        root_hash=head.root_hash.hex(),
        checkpoint=head.note,
        verification=Verification(
            ok=verification.ok,
            checked_size=verification.checked_size,
            message=verification.message,
            first_bad_index=verification.first_bad_index,
        ),
        policies=policies,
        consents=tuple(
            ConsentCounts(purpose=p, grants=grants[p], withdrawals=withdrawals[p], subjects=len(subjects[p]))
            for p in purposes
        ),
        uses_per_purpose=tuple(per_purpose),
        uses=tuple(uses),
        refusals=tuple(refusals),
        training_runs=tuple(runs),
        privacy_spend=_privacy_spend(spent, start, end, vocab),
        key_rotations=rotations,
        statement=PAST_INFLUENCE,
    )


def _privacy_spend(
    spent: list[tuple[int, PrivacySpendEvent]], start: datetime, end: datetime, vocab: Vocabulary
) -> tuple[PrivacySpendRow, ...]:
    """Spend per partner × purpose in ``[start, end)``, and the budget left at the report's end."""
    from fedcrm.consent.budget import budget_from_events  # noqa: PLC0415 (budget imports the ledger)

    rows = []
    in_period = [(i, e) for i, e in spent if _in(e.at, start, end)]
    for partner, purpose in dict.fromkeys((e.partner, e.purpose) for _, e in spent):
        mine = [e for _, e in in_period if e.partner == partner and e.purpose == purpose]
        policy = vocab.purposes[purpose].privacy if purpose in vocab.purposes else None
        last = end - timedelta(microseconds=1)
        status = budget_from_events([(i, e) for i, e in spent if e.partner == partner], partner, purpose, last, policy)
        last_per_run = {(e.run_id, e.mechanism): e.delta for e in mine}
        rows.append(PrivacySpendRow(
            partner=partner, purpose=purpose, epsilon_spent=sum(e.epsilon_spent for e in mine),
            delta_spent=sum(last_per_run.values()), releases=len(mine), runs=tuple(dict.fromkeys(e.run_id for e in mine)),
            budget=status.budget, budget_period=status.period, remaining_at_end=status.remaining,
        ))
    return tuple(rows)


_ENV = Environment(loader=PackageLoader("fedcrm.consent", "templates"), autoescape=select_autoescape(["html"]))


def render_html(report: AuditReport) -> str:
    """The report as a self-contained HTML page (no scripts, no external resources)."""
    return _ENV.get_template("audit_report.html").render(r=report)


def write_report(report: AuditReport, out_dir: Path | str, *, stem: str = "consent-audit") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.html`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / f"{stem}.json", out / f"{stem}.html"
    json_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
