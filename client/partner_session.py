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

Encoding once per consented subject set: the encoded training and hold-out rows
(:data:`_ROUND_DATA`) are keyed by what they are made of: the ingested table (mtime and
size), the config file, the task hash, the scaling, the columns, the hold-out fraction
and the *subject fingerprint of the gate's view*. Every round still gates (the gate is
the only source of the subject set); only when the gate lets through exactly the same
subjects of the same table are the rows reused. A withdrawal therefore changes the
fingerprint and the rows are encoded afresh without the withdrawn customer
(``tests/client/test_partner_scale_path.py``). The rows are spilled to an unlinked
temporary file in the work directory (``fedcrm.models.batches.SpillRows``) and read
back a block at a time, so a partner with millions of customers trains in bounded memory.

torch is imported only by the stages that train or evaluate.
"""

from __future__ import annotations

import json
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
from fedcrm.client.dp import DpRequest
from fedcrm.client.features import Scaling, encode_features, encode_labels
from fedcrm.client.holdout import HOLDOUT_BUCKET, buckets, in_holdout, is_validation_subject
from fedcrm.client.ingest import CUSTOMERS_FILE, LABEL, SUBJECT, open_customers_mapped
from fedcrm.client.stats import local_statistics
from fedcrm.client.vocabulary import vocabulary_for_gate
from fedcrm.consent.gate import ConsentedView, UsageContext, clear_subject_memo, gate, record_reuse
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import ClippingRangeExceeded, MinimumCountNotMet
from fedcrm.logging import get_logger
from fedcrm.models.batches import BLOCK_ROWS, SpillRows
from fedcrm.models.train_config import TrainConfig
from fedcrm.protocol import EvaluateMetrics, FitMetrics, StatisticsReply, TaskSchema

if TYPE_CHECKING:
    from torch import nn

log = get_logger(__name__)

# -- timings (read by the long-lived ClientApp worker and benchmarks/rounds.py) ----------------
_TIMINGS: dict[str, float] = {}


_CPU_TIMINGS: dict[str, float] = {}


def reset_timings() -> None:
    """Forget the durations recorded so far in this process."""
    _TIMINGS.clear()
    _CPU_TIMINGS.clear()


def cpu_timings() -> dict[str, float]:
    """CPU seconds of this process per step since the last reset (the figure to read on a shared machine)."""
    return {k: round(v, 4) for k, v in _CPU_TIMINGS.items()}


def timings() -> dict[str, float]:
    """Seconds spent per step (load, gate, encode, train, evaluate, ...) since the last reset."""
    return {k: round(v, 4) for k, v in _TIMINGS.items()}


@contextmanager
def _timed(step: str) -> Iterator[None]:
    started, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        _TIMINGS[step] = _TIMINGS.get(step, 0.0) + time.perf_counter() - started
        _CPU_TIMINGS[step] = _CPU_TIMINGS.get(step, 0.0) + time.process_time() - cpu


# -- one consented view per round --------------------------------------------------------------
#: key -> (view, hold-out mask aligned with the view's rows)
_ROUND_VIEWS: OrderedDict[tuple[object, ...], tuple[ConsentedView, np.ndarray]] = OrderedDict()
#: A round uses up to two views per partner (statistics columns; task columns with the label).
_MAX_ROUND_VIEWS = 8


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def clear_round_views() -> None:
    """Drop every cached consented view and encoded rows of this process (tests; a partner that re-ingests)."""
    _ROUND_VIEWS.clear()
    while _ROUND_DATA:
        _close(_ROUND_DATA.popitem()[1])
    clear_subject_memo()


def forget_partner(config: PartnerConfig) -> int:
    """Drop one partner's cached views and encoded rows in this process; returns how many entries went.

    What an erasure calls (``client/erase.py``): a long-lived partner process must not train
    on an erased customer from rows it encoded before the erasure. Entries are matched by the
    partner's config file; a config without a file drops every entry of the process. The gate's
    memo of subject columns (distinct pseudonyms, suppression hashes) is dropped too.
    """
    path = str(Path(config.config_path).resolve()) if config.config_path is not None else None
    views = [k for k in _ROUND_VIEWS if path is None or k[0] == path]
    for k in views:
        del _ROUND_VIEWS[k]
    rows = [k for k in _ROUND_DATA if path is None or k[0] is None or k[0][0] == path]
    for k in rows:
        _close(_ROUND_DATA.pop(k))
    clear_subject_memo()
    return len(views) + len(rows)


# -- encoded rows per consented subject set ----------------------------------------------------
@dataclass
class RoundData:
    """A view's training and hold-out rows, encoded by the task schema (float32, spilled to disk)."""

    train: SpillRows
    holdout: SpillRows
    n_train: int  #: distinct customers in the training part
    n_holdout: int  #: distinct customers in the hold-out
    holdout_positives: int


_ROUND_DATA: OrderedDict[tuple[object, ...], RoundData] = OrderedDict()
_MAX_ROUND_DATA = 8  #: partners sharing one process (simulation), one set of rows each


def _close(data: RoundData) -> None:
    data.train.close()
    data.holdout.close()


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


__all__ = ["PartnerSession", "RoundData", "RoundOrder", "clear_round_views", "cpu_timings", "forget_partner",
           "is_validation_subject",
           "reset_timings", "timings"]


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
        view, _, head = self._consented(task, order, columns, use)
        return view, head

    def _consented(self, task: TaskSchema, order: RoundOrder, columns: list[str],
                   use: UsageContext) -> tuple[ConsentedView, np.ndarray, str]:
        """:meth:`consented` plus the hold-out mask of the view's rows."""
        key = self._round_key(task, order, columns)
        cached = _ROUND_VIEWS.get(key) if key is not None else None
        ledger = self._ledger()
        try:
            if cached is not None:
                view, holdout = cached
                with _timed("gate"):
                    record_reuse(view, ledger=ledger, use=use)
            else:
                if key is not None:
                    # A new round retires this partner's views of earlier rounds before reading the table again
                    # (each holds its rows and subject set: hundreds of MB at a million customers).
                    for old in [k for k in _ROUND_VIEWS if k[0] == key[0] and k[5:7] != key[5:7]]:
                        del _ROUND_VIEWS[old]
                with _timed("load"):
                    table = open_customers_mapped(self.config)  # memory-mapped: pages are read as they are used
                with _timed("gate"):
                    view = gate(table, self.column_categories(), order.purpose, order.at, columns, ledger=ledger,
                                use=use, vocabulary=vocabulary_for_gate(self.config, ledger))
                bucket = table.column(HOLDOUT_BUCKET).to_numpy()
                holdout = in_holdout(bucket[view.rows], self.config.privacy.validation_fraction)
                del table, bucket
                key = self._round_key(task, order, columns)  # after a re-ingest the table changed
                if key is not None:
                    _ROUND_VIEWS[key] = (view, holdout)
                    while len(_ROUND_VIEWS) > _MAX_ROUND_VIEWS:
                        _ROUND_VIEWS.popitem(last=False)
            with _timed("gate"):
                head = ledger.latest_checkpoint().note
        finally:
            ledger.close()
        return view, holdout, head

    def round_data(self, task: TaskSchema, order: RoundOrder, scaling: Scaling) -> tuple[RoundData, ConsentedView, str]:
        """This round's consented view and its encoded training and hold-out rows (encoded once per subject set)."""
        columns = self.task_columns(task, with_label=True)
        use = UsageContext(job_id=order.run_id, partner=self.name, model_version=order.model_version,
                           stage=order.stage)
        view, holdout, head = self._consented(task, order, columns, use)
        view_key = self._round_key(task, order, columns)
        # Config, config stamp, table stamp, task hash: what the rows are made of (not run or round).
        key = (view_key[:4] if view_key is not None else None, task.sha256(), json.dumps(sorted(scaling.items())), view.fingerprint, view.columns,
               self.config.privacy.validation_fraction)
        data = _ROUND_DATA.get(key)
        if data is None:
            with _timed("encode"):
                data = self._encode(view, holdout, task, scaling)
            if key[0] is not None:
                # One set of rows per partner: older ones (a withdrawn or erased customer's among them) go now.
                for old in [k for k in _ROUND_DATA if k[0] is not None and k[0][0] == key[0][0]]:
                    _close(_ROUND_DATA.pop(old))
                _ROUND_DATA[key] = data
                while len(_ROUND_DATA) > _MAX_ROUND_DATA:
                    _close(_ROUND_DATA.popitem(last=False)[1])
        return data, view, head

    def _encode(self, view: ConsentedView, holdout: np.ndarray, task: TaskSchema, scaling: Scaling) -> RoundData:
        # Block by block from the view (memory-mapped rows): one block of rows in memory, never the whole frame.
        parts = {}
        for name, positions in (("train", np.flatnonzero(~holdout)), ("holdout", np.flatnonzero(holdout))):
            rows = SpillRows(task.width, directory=self.config.work_path)
            one_row_each = view.n_subjects == len(view)  # one row per customer: rows count the customers
            seen: set[str] = set()
            for lo in range(0, len(positions), BLOCK_ROWS):
                block = view.take(positions[lo : lo + BLOCK_ROWS])
                rows.append(encode_features(block, task, scaling), encode_labels(block, LABEL))
                if not one_row_each:
                    seen.update(block[SUBJECT].unique().tolist())
            parts[name] = (rows, len(positions) if one_row_each else len(seen))
        _, y_holdout = parts["holdout"][0].read(0, parts["holdout"][0].n_rows)
        return RoundData(train=parts["train"][0], holdout=parts["holdout"][0], n_train=parts["train"][1],
                         n_holdout=parts["holdout"][1], holdout_positives=int(y_holdout.sum()))

    def task_columns(self, task: TaskSchema, *, with_label: bool) -> list[str]:
        """Task features this partner holds (missing ones are encoded as unseen/mean)."""
        held = set(self.config.feature_columns())
        cols = [f.name for f in task.features if f.name in held]
        return cols + ([LABEL] if with_label else [])

    def split(self, frame: pd.DataFrame, *, validation: bool) -> pd.DataFrame:
        """Training or local hold-out part of a consented frame."""
        fraction = self.config.privacy.validation_fraction
        bucket = frame[HOLDOUT_BUCKET].to_numpy() if HOLDOUT_BUCKET in frame.columns else buckets(frame[SUBJECT].astype(str))
        mask = in_holdout(bucket, fraction)
        return frame[mask if validation else ~mask]

    # -- the stages ------------------------------------------------------------------------
    def statistics(self, task: TaskSchema, order: RoundOrder, *, dp_noise: bool = False) -> StatisticsReply:
        """Statistics-round cells over the training part, with the ledger head.

        ``dp_noise``: the order asks for noised cells; the partner decides before reading any
        customer data (``client/dp_sums.py``: on whenever its purpose's policy requires DP).
        """
        from fedcrm.client.dp_sums import STATISTICS, decide_release
        from fedcrm.client.vocabulary import partner_vocabulary

        release = decide_release(self.config, mechanism=STATISTICS, purpose=order.purpose, run_id=order.run_id,
                                 server_round=order.server_round, at=order.at, asked=dp_noise,
                                 vocabulary=partner_vocabulary(self.config), stage=order.stage, task=task,
                                 schema_hash=order.schema_hash)
        use = UsageContext(job_id=order.run_id, partner=self.name, model_version=order.model_version,
                           stage=order.stage)
        view, holdout, head = self._consented(task, order, self.task_columns(task, with_label=False), use)
        train = view.take(np.flatnonzero(~holdout))  # only the training part is built
        with _timed("statistics"):
            cells = local_statistics(train, task, min_count=self.config.privacy.min_count, partner=self.name,
                                     dp=release, at=order.at)
        return StatisticsReply(partner=self.name, consent_as_of=view.at, ledger_checkpoint=head, cells=cells,
                               dp_epsilon=None if release is None else release.epsilon)

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
        dp: DpRequest | None = None,
    ) -> tuple[list[np.ndarray], int, FitMetrics]:
        """Local training from the global weights; returns (arrays, num_examples, metrics).

        With a DP request the partner first decides (its policy and ε budget, before reading
        any customer data; ``client/dp.py``), trains with DP-SGD and records the spend.
        """
        decision = None
        if dp is not None:
            from fedcrm.client.dp import decide
            from fedcrm.client.vocabulary import partner_vocabulary

            decision = decide(self.config, task, dp, purpose=order.purpose, run_id=order.run_id,
                              server_round=order.server_round, schema_hash=order.schema_hash, at=order.at,
                              vocabulary=partner_vocabulary(self.config))
        data, view, head = self.round_data(task, order, scaling)
        n = data.n_train
        if n < self.config.privacy.min_count:
            raise MinimumCountNotMet(f"partner {self.name}: training in round {order.server_round} covers fewer "
                                     f"customers than the minimum of {self.config.privacy.min_count}")
        from fedcrm.models.params import get_arrays, max_abs
        from fedcrm.models.train import train_rows

        model = _global_model(architecture, task.width, arrays)
        report = None
        if decision is not None:
            from fedcrm.client.dp import record, round_settings
            from fedcrm.models.dp_train import steps_per_epoch, train_local_dp

            with _timed("train"):
                x, y = data.train.read(0, data.train.n_rows)  # Poisson sampling draws from all rows
                dp_result = train_local_dp(model, x, y, train_cfg, round_settings(decision, n, train_cfg))
            report = record(self.config, decision, dp_result, at=order.at,
                            steps_per_round=train_cfg.epochs * steps_per_epoch(n, train_cfg.batch_size))
            loss = dp_result.loss
        else:
            with _timed("train"):
                loss = train_rows(model, data.train, train_cfg).loss
        out = get_arrays(model)
        if clipping_range is not None:
            scaled = max_abs(out) * n / max_weight
            if scaled > clipping_range:
                raise ClippingRangeExceeded(
                    f"partner {self.name}, round {order.server_round}: |parameter| x num_examples / max_weight = "
                    f"{scaled:.4g} exceeds the SecAgg+ clipping range {clipping_range:g}; refusing to send an update "
                    "that secure aggregation would silently clip"
                )
        return out, n, FitMetrics(partner=self.name, consent_as_of=view.at, ledger_checkpoint=head, loss=loss, dp=report)

    def evaluate(
        self, task: TaskSchema, order: RoundOrder, arrays: list[np.ndarray], scaling: Scaling, *, architecture: str
    ) -> tuple[float, int, EvaluateMetrics]:
        """Evaluate the global model on the local hold-out; metrics withheld below the minimum."""
        data, view, head = self.round_data(task, order, scaling)
        n = data.n_holdout
        if n < self.config.privacy.min_count:
            raise MinimumCountNotMet(f"partner {self.name}: evaluation in round {order.server_round} covers fewer "
                                     f"customers than the minimum of {self.config.privacy.min_count}")
        from fedcrm.models.train import evaluate_rows

        model = _global_model(architecture, task.width, arrays)
        with _timed("evaluate"):
            scores = evaluate_rows(model, data.holdout)
        ranking: dict[str, float] = {}
        positives, negatives = data.holdout_positives, data.holdout.n_rows - data.holdout_positives
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

