"""Data-subject access: a subject's consent history and every use of their data.

Answers from the ledger alone, by pseudonym (across key rotations). For each job it lists
the model versions whose recorded subject set included the subject, the rounds they were
excluded from after a withdrawal, and the versions that still carry their past
contribution: withdrawal stops further use, it does not undo training already done.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from fedcrm.consent.events import ConsentEvent, UsageEvent

if TYPE_CHECKING:
    from fedcrm.consent.ledger import Ledger

__all__ = ["ConsentEntry", "JobUse", "SubjectReport", "UseEntry", "split_version", "subject_report"]

PAST_INFLUENCE = (
    "Withdrawal stops further use of the customer's data from its effective time on; it does not remove "
    "the influence of data already used. Model versions trained on the data, and every version derived "
    "from them (later rounds start from earlier weights, and a run's scaling statistics are used by all "
    "of its rounds and by its final model), keep that contribution until they are retrained without it."
)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsentEntry(_Out):
    """One consent receipt in the subject's history."""

    index: int
    receipt_id: str
    subject: str
    purpose: str
    category: str
    action: str
    legal_basis: str
    effective_at: datetime
    recorded_at: datetime
    expires_at: datetime | None
    source: str
    notice_version: str


class UseEntry(_Out):
    """One recorded use whose subject set included the subject."""

    index: int
    job_id: str
    purpose: str
    partner: str
    model_version: str
    stage: str
    at: datetime
    tree_size_read: int
    columns: tuple[str, ...]


class JobUse(_Out):
    """What one job (a federated run, a scoring or analytics job) did with the subject's data."""

    job_id: str
    purposes: tuple[str, ...]
    included_in: tuple[str, ...]  # model versions (or stages, for non-model uses) whose subject set had them
    training: bool
    statistics_from: tuple[str, ...]  # stats-stage versions that included them
    trained_on: tuple[str, ...]  # fit-stage versions that included them
    excluded_from: tuple[str, ...]  # first fit round left out after being included
    derived: tuple[str, ...]  # versions carrying their contribution without having used their data directly
    lines: tuple[str, ...]


class SubjectReport(_Out):
    """The answer to a data-subject access request."""

    subject: str
    pseudonyms: tuple[str, ...]
    generated_at: datetime
    tree_size: int
    consents: tuple[ConsentEntry, ...]
    uses: tuple[UseEntry, ...]
    jobs: tuple[JobUse, ...]
    statement: str
    #: Whether the whole log (and every derived table this answer reads) verified when it was made.
    log_verifies: bool | None = None
    verification: str = ""


def split_version(model_version: str) -> tuple[str, int | str | None]:
    """``"run:3"`` → ``("run", 3)``; ``"run:final"`` → ``("run", "final")``; ``""`` → ``("", None)``."""
    run, sep, tail = model_version.rpartition(":")
    if not sep:
        return model_version, None
    return run, int(tail) if tail.isdigit() else tail


def _round(version: str) -> int | None:
    tail = split_version(version)[1]
    return tail if isinstance(tail, int) else None


def _job(job_id: str, all_uses: Sequence[tuple[int, UsageEvent]], included: set[int]) -> JobUse:
    """Summarise one job from every usage record it left and which of them included the subject."""
    mine = [(i, u) for i, u in all_uses if i in included]
    versions = tuple(dict.fromkeys(u.model_version or f"({u.stage})" for _, u in mine))
    training = any(u.stage == "fit" for _, u in all_uses)
    stats = tuple(dict.fromkeys(u.model_version for _, u in mine if u.stage == "stats" and u.model_version))
    trained = tuple(dict.fromkeys(u.model_version for _, u in mine if u.stage == "fit" and u.model_version))

    fit_rounds: dict[int, bool] = {}
    for i, u in all_uses:
        r = _round(u.model_version)
        if u.stage == "fit" and r is not None:
            fit_rounds[r] = fit_rounds.get(r, False) or i in included
    ordered = sorted(fit_rounds)
    pairs = zip(ordered, ordered[1:], strict=False)
    excluded = tuple(f"{job_id}:{cur}" for prev, cur in pairs if fit_rounds[prev] and not fit_rounds[cur])

    derived: tuple[str, ...] = ()
    lines: list[str] = [f"included in {v}" for v in versions]
    contributed = [r for r in (_round(v) for v in (*stats, *trained)) if r is not None]
    if training and contributed:
        first = min(contributed)
        later = sorted({r for _, u in all_uses if (r := _round(u.model_version)) is not None and r >= first})
        derived = tuple(v for v in (f"{job_id}:{r}" for r in later) if v not in trained and v not in stats)
        derived += (f"{job_id}:final",)
        lines += [f"excluded from {v}" for v in excluded]
        if stats:
            lines.append(f"scaling statistics {', '.join(stats)} included the data; every round of {job_id} uses them")
        lines.append(
            f"still carrying the contribution (no retraining since): {', '.join((*trained, *derived))}"
        )
    return JobUse(
        job_id=job_id,
        purposes=tuple(dict.fromkeys(u.purpose for _, u in mine)),
        included_in=versions,
        training=training,
        statistics_from=stats,
        trained_on=trained,
        excluded_from=excluded,
        derived=derived,
        lines=tuple(lines),
    )


def subject_report(ledger: Ledger, subject: str, *, verify: bool = True) -> SubjectReport:
    """Consent history, uses and per-job model versions for one pseudonym (all its aliases).

    The answer reads subject-set rows and rotation mappings, which live outside the tree;
    with ``verify`` (the default) the whole log is verified first, derived tables included,
    and the answer says whether it did (``log_verifies``): an answer from a log that does
    not verify must not be trusted.
    """
    checked = ledger.verify() if verify else None
    size = ledger.tree_size()
    pseudonyms = tuple(ledger.resolve(subject))
    consents = []
    for stored in ledger.events_for_subject(subject):
        ev = stored.event
        if isinstance(ev, ConsentEvent):
            consents.append(ConsentEntry(index=stored.index, **ev.model_dump(exclude={"kind"})))
    uses = ledger.uses_including(subject)
    included = {i for i, _ in uses}
    jobs = list(dict.fromkeys(u.job_id for _, u in uses))
    by_job: dict[str, list[tuple[int, UsageEvent]]] = {j: [] for j in jobs}
    if jobs:
        for stored in ledger.events():
            ev = stored.event
            if isinstance(ev, UsageEvent) and ev.job_id in by_job:
                by_job[ev.job_id].append((stored.index, ev))
    return SubjectReport(
        subject=subject,
        pseudonyms=pseudonyms,
        generated_at=datetime.now(UTC),
        tree_size=size,
        consents=tuple(consents),
        uses=tuple(
            UseEntry(index=i, **u.model_dump(include=set(UseEntry.model_fields) - {"index"})) for i, u in uses
        ),
        jobs=tuple(_job(j, by_job[j], included) for j in jobs),
        statement=PAST_INFLUENCE,
        log_verifies=None if checked is None else checked.ok,
        verification="" if checked is None else checked.message,
    )
