"""Which tasks this partner takes part in, decided by the partner and recorded in its own ledger.

A partner approves one *exact* task schema (its SHA-256 over the canonical JSON, so any
change to label, features, vocabularies or purpose needs a new approval) with
``fedcrm client approve``. The approval is a ``task_approval`` event in the partner's
consent ledger, covered by the next signed tree head like every other entry; a revoke is
another event, so the history stays verifiable. Orders are admitted against these records
by :mod:`fedcrm.client.admission`; the consent gate's purpose comes from the approval.

The partner's *policy* for a purpose is its consent vocabulary (bundled plus the files its
config names) and, if set, the allow-list ``privacy.purposes``: approval is refused when
the purpose is unknown, not in the allow-list, or does not cover the data category of a
task column this partner holds (the gate would refuse that column anyway).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime

from fedcrm.client.config import PartnerConfig
from fedcrm.client.vocabulary import partner_vocabulary
from fedcrm.consent.checkpoint import Checkpoint
from fedcrm.consent.events import TaskApprovalEvent
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.policy import check_category
from fedcrm.consent.taxonomy import Vocabulary
from fedcrm.errors import ClientError, VocabularyError
from fedcrm.protocol import TaskSchema

__all__ = ["Approval", "TaskApprovalRefused", "approvals", "approve", "open_partner_ledger", "policy_problems",
           "revoke"]

KIND = "task_approval"


class TaskApprovalRefused(ClientError):
    """The partner's policy does not let it approve a task (names the task, purpose and column)."""


@dataclass(frozen=True)
class Approval:
    """One task approval in force, as read back from the ledger."""

    index: int
    task_name: str
    task_version: str
    task_sha256: str
    purpose: str
    approved_by: str
    note: str
    at: datetime

    @property
    def label(self) -> str:
        """``'name' version V (sha256 abcdef…)``, as errors and listings name a task."""
        return f"'{self.task_name}' version {self.task_version} (sha256 {self.task_sha256[:12]}…)"


def task_label(task: TaskSchema) -> str:
    """How errors name a task schema."""
    return f"'{task.name}' version {task.version} (sha256 {task.sha256()[:12]}…)"


def open_partner_ledger(config: PartnerConfig) -> Ledger:
    """The partner's consent ledger, opened for writing."""
    return Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path, origin=f"fedcrm/{config.name}")


def approvals(ledger: Ledger) -> dict[str, Approval]:
    """Approvals in force, by task hash: each approve counts until a later revoke of the same hash."""
    current: dict[str, Approval] = {}
    for stored in ledger.events_of_kind(KIND):
        ev = stored.event
        if ev.action == "revoke":
            current.pop(ev.task_sha256, None)
        else:
            current[ev.task_sha256] = Approval(stored.index, ev.task_name, ev.task_version, ev.task_sha256,
                                               ev.purpose, ev.approved_by, ev.note, ev.at)
    return current


def _held_categories(config: PartnerConfig, task: TaskSchema) -> dict[str, str]:
    """Source column → data category of every task column this partner holds (features and label)."""
    held = config.feature_columns()
    columns = {held[f.name]: config.columns[held[f.name]].category or "" for f in task.features if f.name in held}
    if config.label_column:
        columns[config.label_column] = config.columns[config.label_column].category or ""
    return columns


def purpose_problems(config: PartnerConfig, purpose: str) -> tuple[list[str], Vocabulary | None]:
    """Why this partner takes no part in ``purpose`` at all (empty: it may), and its vocabulary when it may."""
    allow_list = config.privacy.purposes
    if allow_list is not None and purpose not in allow_list:
        return [f"purpose '{purpose}' is not in this partner's privacy.purposes ({', '.join(allow_list) or 'none'})"], None
    vocab = partner_vocabulary(config)
    try:
        vocab.purpose(purpose)
    except VocabularyError as exc:
        return [f"the partner's consent vocabulary does not know it: {exc}"], None
    return [], vocab


def policy_problems(config: PartnerConfig, task: TaskSchema) -> list[str]:
    """Why this partner's policy does not allow the task's purpose (empty: it does)."""
    purpose = task.purpose
    problems, vocab = purpose_problems(config, purpose)
    if vocab is None:
        return problems
    for column, category in _held_categories(config, task).items():
        if not category or category not in vocab.categories:
            problems.append(f"column '{column}' has no known data category ('{category or 'none'}')")
            continue
        decision = check_category(purpose, category, vocabulary=vocab)
        if not decision.allowed:
            problems.append(f"column '{column}': {decision.reason}")
    return problems


def approve(
    config: PartnerConfig, task: TaskSchema, *, approved_by: str | None = None, note: str = ""
) -> tuple[Approval, Checkpoint | None]:
    """Record that this partner takes part in ``task``; returns the approval and the new head.

    Approving a hash that is already approved records nothing and returns ``(approval, None)``.
    Raises ``TaskApprovalRefused`` (naming task and purpose) if the partner's policy does not allow it.
    """
    problems = policy_problems(config, task)
    if problems:
        raise TaskApprovalRefused(
            f"partner {config.name} cannot approve task {task_label(task)} for purpose '{task.purpose}': "
            + "; ".join(problems)
        )
    with open_partner_ledger(config) as ledger:
        existing = approvals(ledger).get(task.sha256())
        if existing is not None:
            return existing, None
        event = TaskApprovalEvent(
            action="approve", partner=config.name, task_name=task.name, task_version=task.version,
            task_sha256=task.sha256(), purpose=task.purpose, approved_by=approved_by or _who(), note=note,
            at=datetime.now(UTC),
        )
        head = ledger.append([event])
        return approvals(ledger)[task.sha256()], head


def revoke(config: PartnerConfig, sha256_prefix: str, *, approved_by: str | None = None,
           note: str = "") -> tuple[Approval, Checkpoint]:
    """Revoke the approval whose task hash starts with ``sha256_prefix`` (at least 8 hex digits)."""
    if len(sha256_prefix) < 8:
        raise ClientError(f"give at least 8 hex digits of the task hash to revoke, got '{sha256_prefix}'")
    with open_partner_ledger(config) as ledger:
        matches = [a for h, a in approvals(ledger).items() if h.startswith(sha256_prefix.lower())]
        if len(matches) != 1:
            what = "no approved task" if not matches else f"{len(matches)} approved tasks"
            raise ClientError(f"partner {config.name}: {what} has a hash starting with '{sha256_prefix}'")
        gone = matches[0]
        head = ledger.append([TaskApprovalEvent(
            action="revoke", partner=config.name, task_name=gone.task_name, task_version=gone.task_version,
            task_sha256=gone.task_sha256, purpose=gone.purpose, approved_by=approved_by or _who(), note=note,
            at=datetime.now(UTC),
        )])
    return gone, head


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return ""
