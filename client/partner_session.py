"""One partner's side of one federated round, free of Flower.

Everything a partner does for an admitted order (``client/admission.py``): load its
ingested customers, pass them through the consent gate for the purpose of its approval
and at its own clock's consent-as-of time, encode features, train or evaluate locally, and return only values
computed over at least the minimum count of customers. ``client/flower_app.py`` is the
thin Flower shell around this module.

Gating once per round: the consented view a round's first message made is kept in this
process (:data:`_ROUND_VIEWS`) and reused by the round's later messages (training and
evaluation of the same round), with the reuse recorded in the ledger as its own usage
event (``consent.gate.record_reuse``). The key holds the partner config file, the
ingested table (mtime and size), the task hash, purpose, run, round and columns, so a
re-ingest, a changed config or the next round gates again. A withdrawal recorded during
a round therefore takes effect from the next round's first message. With Flower's stock
one-process-per-message ClientApp the cache simply never hits; the long-lived worker
(``client/clientapp_worker.py``) keeps it for the SuperNode's lifetime.

torch is imported only by the stages that train or evaluate.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedcrm.client.config import PartnerConfig, load_partner_config
from fedcrm.client.features import Scaling, encode_features, encode_labels
from fedcrm.client.ingest import CUSTOMERS_FILE, LABEL, SUBJECT, load_customers
from fedcrm.client.stats import local_statistics, require_min_count
from fedcrm.client.vocabulary import vocabulary_for_gate
from fedcrm.consent.gate import ConsentedView, UsageContext, gate, record_reuse
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import ClippingRangeExceeded
from fedcrm.logging import get_logger
from fedcrm.models.train_config import TrainConfig
from fedcrm.protocol import EvaluateMetrics, FitMetrics, StatisticsReply, TaskSchema

if TYPE_CHECKING:
    from torch import nn

log = get_logger(__name__)

# -- timings (read by the long-lived ClientApp worker and benchmarks/rounds.py) ----------------
_TIMINGS: dict[str, float] = {}


def reset_timings() -> None:
    """Forget the durations recorded so far in this process."""
    _TIMINGS.clear()


def timings() -> dict[str, float]:
    """Seconds spent per step (load, gate, encode, train, evaluate, ...) since the last reset."""
    return {k: round(v, 4) for k, v in _TIMINGS.items()}


@contextmanager
def _timed(step: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        _TIMINGS[step] = _TIMINGS.get(step, 0.0) + time.perf_counter() - started


# -- one consented view per round --------------------------------------------------------------
_ROUND_VIEWS: OrderedDict[tuple[object, ...], ConsentedView] = OrderedDict()
_MAX_ROUND_VIEWS = 8


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def clear_round_views() -> None:
    """Drop every cached consented view of this process (tests; a partner that re-ingests)."""
    _ROUND_VIEWS.clear()


@dataclass(frozen=True)
class RoundOrder:
    """One admitted order: what the coordinator asked for, with the partner's own decisions.

    ``at`` is the partner's clock and ``purpose`` comes from the partner's approval of the
    task (see ``client/admission.py``); the coordinator sets neither.
    """

    run_id: str
    server_round: int
    stage: str
    at: datetime
    schema_hash: str
    purpose: str

    @property
    def model_version(self) -> str:
        """``<run_id>:<round>`` as recorded in usage records."""
        return f"{self.run_id}:{self.server_round}"


def is_validation_subject(subject: str, fraction: float) -> bool:
    """Stable local hold-out membership from the pseudonym (same customers every round)."""
    bucket = int(hashlib.sha256(subject.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


class PartnerSession:
    """A partner's config, ledger and task for the duration of one message."""

    def __init__(self, config_path: Path | str) -> None:
        self.config: PartnerConfig = load_partner_config(config_path)
        self.name = self.config.name

    # -- consent ---------------------------------------------------------------------------
    def _ledger(self) -> Ledger:
        return Ledger.open(
            self.config.ledger_url, signing_key_path=self.config.ledger_key_path, origin=f"fedcrm/{self.name}"
        )

    def column_categories(self) -> dict[str, str]:
        """Data category of every column of the ingested table (task feature names, label)."""
        categories = {}
        for feature, column in self.config.feature_columns().items():
            categories[feature] = self.config.columns[column].category or ""
        if self.config.label_column:
            categories[LABEL] = self.config.columns[self.config.label_column].category or ""
        return categories

    def _round_key(self, task: TaskSchema, order: RoundOrder, columns: list[str]) -> tuple[object, ...] | None:
        """Cache key of this round's consented view; None when the ingested table is missing or stale."""
        config_path = self.config.config_path
        table = _file_stamp(self.config.work_path / CUSTOMERS_FILE)
        source = _file_stamp(self.config.resolve(self.config.source.path))
        if config_path is None or table is None or (source is not None and source[0] > table[0]):
            return None  # load_customers() will (re-)ingest: gate afresh
        return (str(Path(config_path).resolve()), _file_stamp(Path(config_path)), table, task.sha256(),
                order.purpose, order.run_id, order.server_round, tuple(columns))

    def consented(self, task: TaskSchema, order: RoundOrder, columns: list[str]) -> tuple[ConsentedView, str]:
        """The gate's view of this partner's customers for the order's purpose, plus the ledger head.

        The round's first message gates; later messages of the same round reuse its view
        (recorded as a use of their own stage).
        """
        use = UsageContext(job_id=order.run_id, partner=self.name, model_version=order.model_version,
                           stage=order.stage)
        key = self._round_key(task, order, columns)
        cached = _ROUND_VIEWS.get(key) if key is not None else None
        ledger = self._ledger()
        try:
            if cached is not None:
                with _timed("gate"):
                    record_reuse(cached, ledger=ledger, use=use)
                view = cached
            else:
                with _timed("load"):
                    frame = load_customers(self.config)
                with _timed("gate"):
                    view = gate(frame, self.column_categories(), order.purpose, order.at, columns, ledger=ledger,
                                use=use, vocabulary=vocabulary_for_gate(self.config, ledger))
                key = self._round_key(task, order, columns)  # after a re-ingest the table changed
                if key is not None:
                    _ROUND_VIEWS[key] = view
                    while len(_ROUND_VIEWS) > _MAX_ROUND_VIEWS:
                        _ROUND_VIEWS.popitem(last=False)
            with _timed("gate"):
                head = ledger.latest_checkpoint().note
        finally:
            ledger.close()
        return view, head

    def task_columns(self, task: TaskSchema, *, with_label: bool) -> list[str]:
        """Task features this partner holds (missing ones are encoded as unseen/mean)."""
        held = set(self.config.feature_columns())
        cols = [f.name for f in task.features if f.name in held]
        return cols + ([LABEL] if with_label else [])

    def split(self, frame: pd.DataFrame, *, validation: bool) -> pd.DataFrame:
        """Training or local hold-out part of a consented frame."""
        fraction = self.config.privacy.validation_fraction
        mask = frame[SUBJECT].map(lambda s: is_validation_subject(s, fraction))
        return frame[mask if validation else ~mask]

    # -- the stages ------------------------------------------------------------------------
    def statistics(self, task: TaskSchema, order: RoundOrder) -> StatisticsReply:
        """Statistics-round cells over the training part, with the ledger head."""
        view, head = self.consented(task, order, self.task_columns(task, with_label=False))
        train = self.split(view.frame, validation=False)
        with _timed("statistics"):
            cells = local_statistics(train, task, min_count=self.config.privacy.min_count, partner=self.name)
        return StatisticsReply(partner=self.name, consent_as_of=view.at, ledger_checkpoint=head, cells=cells)

    def fit(
        self,
        task: TaskSchema,
        order: RoundOrder,
        arrays: list[np.ndarray],
        scaling: Scaling,
        train_cfg: TrainConfig,
        *,
        architecture: str,
        max_weight: float,
        clipping_range: float | None,
    ) -> tuple[list[np.ndarray], int, FitMetrics]:
        """Local training from the global weights; returns (arrays, num_examples, metrics)."""
        view, head = self.consented(task, order, self.task_columns(task, with_label=True))
        train = self.split(view.frame, validation=False)
        n = require_min_count(train, self.config.privacy.min_count, self.name, f"training in round {order.server_round}")
        from fedcrm.models.params import get_arrays, max_abs
        from fedcrm.models.train import train_local

        model = _global_model(architecture, task.width, arrays)
        with _timed("encode"):
            x, y = encode_features(train, task, scaling), encode_labels(train, LABEL)
        with _timed("train"):
            result = train_local(model, x, y, train_cfg)
        out = get_arrays(model)
        if clipping_range is not None:
            scaled = max_abs(out) * n / max_weight
            if scaled > clipping_range:
                raise ClippingRangeExceeded(
                    f"partner {self.name}, round {order.server_round}: |parameter| x num_examples / max_weight = "
                    f"{scaled:.4g} exceeds the SecAgg+ clipping range {clipping_range:g}; refusing to send an update "
                    "that secure aggregation would silently clip"
                )
        return out, n, FitMetrics(partner=self.name, consent_as_of=view.at, ledger_checkpoint=head, loss=result.loss)

    def evaluate(
        self, task: TaskSchema, order: RoundOrder, arrays: list[np.ndarray], scaling: Scaling, *, architecture: str
    ) -> tuple[float, int, EvaluateMetrics]:
        """Evaluate the global model on the local hold-out; metrics withheld below the minimum."""
        view, head = self.consented(task, order, self.task_columns(task, with_label=True))
        holdout = self.split(view.frame, validation=True)
        n = require_min_count(holdout, self.config.privacy.min_count, self.name, f"evaluation in round {order.server_round}")
        from fedcrm.models.train import evaluate as evaluate_model

        model = _global_model(architecture, task.width, arrays)
        with _timed("encode"):
            x, y = encode_features(holdout, task, scaling), encode_labels(holdout, LABEL)
        with _timed("evaluate"):
            scores = evaluate_model(model, x, y)
        ranking: dict[str, float] = {}
        positives, negatives = int(y.sum()), int(len(y) - y.sum())
        for name in ("roc_auc", "pr_auc", "top_decile_lift"):
            # Ranking metrics describe both classes: each class must itself meet the minimum count.
            value = scores[name]
            if min(positives, negatives) < self.config.privacy.min_count or math.isnan(value):
                log.info("evaluation metric withheld: a class is below the minimum count", extra={"cell": name})
                continue
            ranking[name] = value
        metrics = EvaluateMetrics(partner=self.name, consent_as_of=view.at, ledger_checkpoint=head, **ranking)
        return scores["loss"], n, metrics


def _global_model(architecture: str, width: int, arrays: list[np.ndarray]) -> nn.Module:
    """A model of the run's architecture holding the global weights (torch imported here, not at import)."""
    from fedcrm.models.nets import build_model
    from fedcrm.models.params import set_arrays

    model = build_model(architecture, width)  # type: ignore[arg-type]
    set_arrays(model, arrays)
    return model

