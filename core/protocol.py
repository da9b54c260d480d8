"""What partners and coordinator agree on: the task schema and the wire contract.

Both sides import this module and nothing else of each other. The task schema is a
*data file* (one per task, named by the run config); this module defines only its
model, canonical serialisation and hash. No data set's schema lives in code.

The wire contract is the second half: one Pydantic model per message (hello, statistics,
fit and evaluate orders, and each reply), in the style of Flower's SecAgg+ constants:
``to_config()`` gives the flat dict Flower's legacy ``NumPyClient`` calls carry, and
``from_config()`` validates key, type, stage and protocol version of what arrived. No
message key is spelled anywhere else: a field ``foo_bar`` travels as ``fedcrm.foo-bar``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from fedcrm.config_files import load_config
from fedcrm.errors import ProtocolError, ProtocolVersionMismatch, TaskSchemaMismatch

#: Default minimum number of distinct pseudonymous customers behind any value that leaves a partner.
DEFAULT_MIN_COUNT = 10

#: Name of the one-hot slot that receives categorical values outside the vocabulary.
UNSEEN_SLOT = "__unseen__"


def stat_key(feature: str, stat: Literal["count", "sum", "sumsq"]) -> str:
    """Name of one statistics-round cell for a numeric feature."""
    return f"stat.{feature}.{stat}"


ROWS_KEY = "stat.__rows__.count"


class LabelSpec(BaseModel):
    """The prediction target: its logical name and the value that counts as positive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    positive_value: str = Field(description="Canonical positive value; partners map their own encodings to it.")
    description: str = ""


class FeatureSpec(BaseModel):
    """One model input, in the order the model sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: Literal["numeric", "categorical", "boolean"]
    vocabulary: tuple[str, ...] = ()
    description: str = ""
    bounds: tuple[float, float] | None = Field(
        None, description="Numeric only: public [low, high] that values are clipped to in a differentially "
                          "private release (statistics, profiles); domain knowledge, never taken from the data")

    @model_validator(mode="after")
    def _bounds_only_for_numerics(self) -> FeatureSpec:
        if self.bounds is not None:
            if self.type != "numeric":
                raise ValueError(f"feature '{self.name}' is {self.type}: only numeric features take bounds")
            low, high = self.bounds
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"feature '{self.name}': bounds must be two finite numbers, low < high")
        return self

    @model_validator(mode="after")
    def _vocabulary_only_for_categoricals(self) -> FeatureSpec:
        if self.type == "categorical":
            if not self.vocabulary:
                raise ValueError(f"categorical feature '{self.name}' needs a vocabulary")
            if len(set(self.vocabulary)) != len(self.vocabulary):
                raise ValueError(f"feature '{self.name}': vocabulary has duplicates")
            if UNSEEN_SLOT in self.vocabulary:
                raise ValueError(f"feature '{self.name}': '{UNSEEN_SLOT}' is reserved")
        elif self.vocabulary:
            raise ValueError(f"feature '{self.name}' is {self.type}: it takes no vocabulary")
        return self

    @property
    def width(self) -> int:
        """Number of encoded columns: one per vocabulary entry plus the unseen slot."""
        return len(self.vocabulary) + 1 if self.type == "categorical" else 1

    def encoded_names(self) -> list[str]:
        """Names of this feature's encoded columns, in order."""
        if self.type == "categorical":
            return [f"{self.name}={v}" for v in (*self.vocabulary, UNSEEN_SLOT)]
        return [self.name]


class TaskSchema(BaseModel):
    """The versioned agreement on label, features, order and vocabularies for one task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    name: str
    version: str
    purpose: str = Field(description="Consent purpose this task serves, e.g. 'churn_prediction'.")
    label: LabelSpec
    features: Annotated[tuple[FeatureSpec, ...], Field(min_length=1)]
    description: str = ""

    @model_validator(mode="after")
    def _unique_feature_names(self) -> TaskSchema:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {dupes}")
        if self.label.name in names:
            raise ValueError(f"label '{self.label.name}' is also listed as a feature")
        return self

    def canonical_json(self) -> bytes:
        """Canonical serialisation: sorted keys, no whitespace, UTF-8."""
        # exclude_none: an optional field left unset (bounds) does not change the hash of an existing schema.
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def sha256(self) -> str:
        """Hex SHA-256 of the canonical serialisation; checked every round."""
        return hashlib.sha256(self.canonical_json()).hexdigest()

    @property
    def numeric_features(self) -> list[str]:
        """Names of features scaled by the federated statistics round."""
        return [f.name for f in self.features if f.type == "numeric"]

    @property
    def width(self) -> int:
        """Width of the encoded feature vector."""
        return sum(f.width for f in self.features)

    def encoded_names(self) -> list[str]:
        """Names of every encoded column, in model order."""
        return [name for f in self.features for name in f.encoded_names()]


def load_task_schema(path: Path | str) -> TaskSchema:
    """Read a task-schema file (YAML or JSON); errors name the file and field."""
    return load_config(path, TaskSchema, "task schema")



# ==================================================================================================
# The wire contract
# ==================================================================================================

#: Version of the message contract below. Bump it on any change to a message's fields or meaning;
#: each side refuses a message of another version, naming both.
#: 1: hello, statistics, fit and evaluate orders and replies. 2: differential-privacy fields on the
#: fit order and ``FitMetrics.dp``; secure-sum orders and receipts (statistics, k-means, segment
#: profiles through SecAgg+); the overlap (PSI) messages; ``dp_noise`` on statistics and profile orders.
PROTOCOL_VERSION = 2

#: Flower's legacy config and metrics values (``flwr.common.Scalar``), all a message field becomes.
WireValue = bool | int | float | str

Architecture = Literal["logistic", "mlp"]


class Stage(StrEnum):
    """The fedcrm stage an order belongs to."""

    HELLO = "hello"
    STATS = "stats"
    FIT = "fit"
    EVALUATE = "evaluate"


def wire_key(field: str) -> str:
    """The key a message field travels under: ``server_round`` → ``fedcrm.server-round``."""
    return "fedcrm." + field.replace("_", "-")


def _parse_json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    return value


def _dump_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _parse_task(value: Any) -> Any:
    return TaskSchema.model_validate_json(value) if isinstance(value, str | bytes) else value


#: Structured fields travel as canonical JSON text (Flower's scalars hold no mappings).
Scaling = Annotated[
    dict[str, tuple[float, float]], BeforeValidator(_parse_json), PlainSerializer(_dump_json, return_type=str)
]
Cells = Annotated[dict[str, float], BeforeValidator(_parse_json), PlainSerializer(_dump_json, return_type=str)]
WireTask = Annotated[
    TaskSchema, BeforeValidator(_parse_task), PlainSerializer(lambda t: t.canonical_json().decode(), return_type=str)
]
PartnerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class WireMessage(BaseModel):
    """One message of the contract; ``protocol_version`` travels in every one."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=wire_key, populate_by_name=True)

    #: What the message is called in errors, who sends it and who reads it.
    NAME: ClassVar[str] = "message"
    SENDER: ClassVar[str] = "coordinator"
    RECEIVER: ClassVar[str] = "partner"

    protocol_version: int = PROTOCOL_VERSION

    @field_validator("protocol_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != PROTOCOL_VERSION:
            raise ValueError(f"protocol version {value} is not this side's {PROTOCOL_VERSION}")
        return value

    def to_config(self) -> dict[str, WireValue]:
        """The flat dict Flower carries (legacy config / properties / metrics); no field is left out but unset ones."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def check_version(cls, config: Mapping[str, Any]) -> None:
        """Refuse a message of another protocol version, naming both versions."""
        version = config.get(wire_key("protocol_version"))
        if version != PROTOCOL_VERSION:
            spoken = "no protocol version (a fedcrm from before versioned messages)" if version is None else (
                f"fedcrm protocol version {version!r}")
            raise ProtocolVersionMismatch(
                f"{cls.NAME}: the {cls.SENDER} speaks {spoken}, this {cls.RECEIVER} speaks version "
                f"{PROTOCOL_VERSION}; run the same fedcrm protocol version on both sides"
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """Validate what arrived: protocol version first, then every key, type and value.

        Raises ``ProtocolVersionMismatch`` naming both versions, ``ProtocolError`` naming the
        message and field, or ``TaskSchemaMismatch`` if an order's task schema and hash disagree.
        """
        cls.check_version(config)
        try:
            return cls.model_validate(dict(config))
        except ValidationError as exc:
            problems = "; ".join(
                f"'{'.'.join(str(p) for p in err['loc']) or '(message)'}': {err['msg']}" for err in exc.errors()
            )
            raise ProtocolError(f"{cls.NAME} from the {cls.SENDER} does not match protocol version "
                                f"{PROTOCOL_VERSION}: {problems}") from None


# -- coordinator → partner ---------------------------------------------------------------------


class HelloOrder(WireMessage):
    """Handshake: which partner is this node?"""

    NAME: ClassVar[str] = "hello order"
    stage: Literal["hello"] = "hello"
    run_id: str = Field(min_length=1)


class TaskOrder(WireMessage):
    """What every order for task work carries: run, round, the task schema and its hash.

    The partner takes part only if it approved this exact schema hash, and evaluates consent
    for the purpose of its approval at its own clock. ``consent_as_of`` exists only so a
    coordinator that asks for another time can be refused: an order whose value differs from
    the partner's clock by more than the partner's allowed skew is refused and recorded.
    """

    stage: str
    run_id: str = Field(min_length=1)
    server_round: int = Field(ge=0)
    task_schema: WireTask
    task_schema_sha256: Sha256
    consent_as_of: AwareDatetime | None = None

    @model_validator(mode="after")
    def _hash_matches(self) -> Self:
        actual = self.task_schema.sha256()
        if actual != self.task_schema_sha256:
            raise TaskSchemaMismatch(
                f"{self.NAME}: task schema '{self.task_schema.name}' hashes to {actual[:12]}…, "
                f"not the order's {self.task_schema_sha256[:12]}…"
            )
        return self

    @property
    def model_version(self) -> str:
        """``<run_id>:<round>``, as recorded in usage records."""
        return f"{self.run_id}:{self.server_round}"


class StatisticsOrder(TaskOrder):
    """Round 0: counts, sums and sums of squares of the task's numeric features."""

    NAME: ClassVar[str] = "statistics order"
    stage: Literal["stats"] = "stats"
    dp_noise: bool = Field(False, description="The run asks for Gaussian noise on the cells (the partner decides)")


class FitOrder(TaskOrder):
    """Local training from the global weights (the weights travel as Flower parameters)."""

    NAME: ClassVar[str] = "fit order"
    stage: Literal["fit"] = "fit"
    architecture: Architecture
    scaling: Scaling
    local_epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    batch_size: int = Field(ge=0, description="0 = full batch")
    optimizer: Literal["adam", "sgd"]
    proximal_mu: float = Field(0.0, ge=0.0)
    seed: int
    project_params: bool = Field(True, description="Clamp parameters into the clipping range during training")
    max_weight: float | None = Field(None, gt=0.0, description="SecAgg+ max_weight (secure aggregation only)")
    clipping_range: float | None = Field(None, gt=0.0, description="SecAgg+ clipping range (secure aggregation only)")
    # Differential privacy: what the coordinator asks; each partner decides (client/dp.py).
    dp_mode: Literal["off", "record", "client"] = Field("off", description="record: DP-SGD at the partner")
    dp_target_epsilon: float | None = Field(None, gt=0.0, description="ε the run may reach after its planned rounds")
    dp_delta: float | None = Field(None, gt=0.0, lt=1.0, description="None: the partner chooses (below 1/n)")
    dp_max_grad_norm: float | None = Field(None, gt=0.0, description="Per-sample gradient clipping norm")
    dp_planned_rounds: int | None = Field(None, ge=1, description="Rounds the target ε is spread over")


class EvaluateOrder(TaskOrder):
    """Federated evaluation of the global model on the partner's local hold-out."""

    NAME: ClassVar[str] = "evaluate order"
    stage: Literal["evaluate"] = "evaluate"
    architecture: Architecture
    scaling: Scaling


def read_properties_order(config: Mapping[str, Any]) -> HelloOrder | StatisticsOrder:
    """Decode a legacy ``get_properties`` config: the handshake or the statistics round."""
    HelloOrder.check_version(config)
    stage = config.get(wire_key("stage"))
    if stage == Stage.HELLO:
        return HelloOrder.from_config(config)
    if stage == Stage.STATS:
        return StatisticsOrder.from_config(config)
    raise ProtocolError(f"properties order: unknown stage {stage!r} (expected 'hello' or 'stats')")


# -- partner → coordinator ---------------------------------------------------------------------


class _Reply(WireMessage):
    SENDER: ClassVar[str] = "partner"
    RECEIVER: ClassVar[str] = "coordinator"
    partner: PartnerName


class _TaskReply(_Reply):
    """What every reply to task work carries: when the partner evaluated consent, and its ledger head."""

    consent_as_of: AwareDatetime = Field(description="The partner's own clock time its consent gate used")
    ledger_checkpoint: str = Field(min_length=1, description="Signed head of the partner's consent ledger")


class HelloReply(_Reply):
    """The partner's name."""

    NAME: ClassVar[str] = "hello reply"


class StatisticsReply(_TaskReply):
    """Statistics-round cells (see :func:`stat_key`), each over at least the partner's minimum count."""

    NAME: ClassVar[str] = "statistics reply"
    cells: Cells
    dp_epsilon: float | None = Field(None, ge=0.0, description="ε the partner spent on this release when it "
                                     "noised it (its own allotment, client/dp_sums.py); absent: not noised")


class DpReport(BaseModel):
    """A partner's privacy spend for a run so far (its accountant, after this round)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["record", "client"]
    epsilon: float = Field(ge=0.0, description="The run's cumulative ε for this partner after this round")
    delta: float = Field(gt=0.0, lt=1.0)
    noise_multiplier: float = Field(ge=0.0)
    sample_rate: float = Field(gt=0.0, le=1.0)
    steps: int = Field(ge=0, description="DP-SGD steps in the run so far")
    max_grad_norm: float = Field(gt=0.0)
    epsilon_spent: float = Field(ge=0.0, description="What this round charged to the partner's budget")
    target_epsilon: float | None = None


WireDp = Annotated[DpReport, BeforeValidator(_parse_json), PlainSerializer(lambda d: _dump_json(d.model_dump()),
                                                                           return_type=str)]


class FitMetrics(_TaskReply):
    """Metrics of a local training round (the update itself travels as parameters, or masked)."""

    NAME: ClassVar[str] = "fit metrics"
    loss: float
    dp: WireDp | None = None


class EvaluateMetrics(_TaskReply):
    """Metrics on the local hold-out; a ranking metric is absent when the partner withheld it."""

    NAME: ClassVar[str] = "evaluate metrics"
    roc_auc: float | None = None
    pr_auc: float | None = None
    top_decile_lift: float | None = None

    def ranking(self) -> dict[str, float]:
        """The ranking metrics the partner sent, by name."""
        values = {"roc_auc": self.roc_auc, "pr_auc": self.pr_auc, "top_decile_lift": self.top_decile_lift}
        return {name: value for name, value in values.items() if value is not None}


# ==================================================================================================
# Federated analytics: secure sums (statistics, segments, profiles) and customer overlap (ANALYTICS)
# ==================================================================================================

CellNames = Annotated[
    tuple[str, ...], BeforeValidator(_parse_json), PlainSerializer(lambda v: _dump_json(list(v)), return_type=str)
]
Matrix = Annotated[
    tuple[tuple[float, ...], ...], BeforeValidator(_parse_json),
    PlainSerializer(lambda v: _dump_json([list(r) for r in v]), return_type=str),
]


class SecureSumOrder(TaskOrder):
    """An order answered by a vector that only travels masked, through SecAgg+ (a Flower train message).

    ``cells`` names the vector's entries in order; the codec fields fix its fixed-point
    encoding (``fedcrm.secure_vector``). The partner refuses cells it does not expect for
    the order, so a coordinator cannot ask for anything but the aggregate the order names.
    """

    cells: CellNames
    fraction_bits: int = Field(ge=0, le=64)
    limbs: int = Field(ge=1, le=16)
    quantization_range: int = Field(ge=4)
    modulus_range: int = Field(ge=8)

    def codec(self):  # noqa: ANN201 — SecureVectorCodec (imported lazily: the codec imports numpy)
        """The codec both sides encode and decode this order's vector with."""
        from fedcrm.secure_vector import SecureVectorCodec

        return SecureVectorCodec(quantization_range=self.quantization_range, modulus_range=self.modulus_range,
                                 fraction_bits=self.fraction_bits, limbs=self.limbs)


class SecureStatisticsOrder(SecureSumOrder):
    """Round 0 through SecAgg+: counts, sums, sums of squares (cells: :func:`statistics_cells`)."""

    NAME: ClassVar[str] = "secure statistics order"
    stage: Literal["stats"] = "stats"
    dp_noise: bool = Field(False, description="The run asks for Gaussian noise on the cells (the partner decides)")


class SegmentSumsOrder(SecureSumOrder):
    """One federated k-means step: per cluster counts, sums, SSE and simplified-silhouette sums.

    ``centroids`` live in the standardised task encoding (``scaling``); with ``candidates``
    the step assigns customers to candidate seeds (initialisation), else to cluster centres.
    """

    NAME: ClassVar[str] = "segment sums order"
    stage: Literal["segments"] = "segments"
    scaling: Scaling
    centroids: Matrix


class SegmentProfileOrder(SecureSumOrder):
    """Per segment counts and raw-unit sums of the task features (cells: :func:`profile_cells`)."""

    NAME: ClassVar[str] = "segment profile order"
    stage: Literal["profile"] = "profile"
    dp_noise: bool = Field(False, description="The run asks for Gaussian noise on the cells (the partner decides)")
    scaling: Scaling
    centroids: Matrix
    histogram_edges: Annotated[
        dict[str, tuple[float, ...]], BeforeValidator(_parse_json), PlainSerializer(_dump_json, return_type=str)
    ] = Field(default_factory=dict, description="Numeric feature → bin edges of its consortium distribution")


def statistics_cells(task: TaskSchema) -> tuple[str, ...]:
    """The statistics round's cells, in order: rows, then count/sum/sumsq of every numeric feature."""
    return (ROWS_KEY, *(stat_key(f, s) for f in task.numeric_features for s in ("count", "sum", "sumsq")))


def segment_cells(k: int, width: int) -> tuple[str, ...]:
    """Cells of a k-means step over ``k`` centres in a ``width``-column encoding."""
    cells: list[str] = []
    for j in range(k):
        cells += [f"seg.{j}.count", f"seg.{j}.sse", f"seg.{j}.silhouette"]
        cells += [f"seg.{j}.sum.{d}" for d in range(width)]
    return tuple(cells)


def profile_cells(task: TaskSchema, k: int, histogram_edges: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Cells of a segment profile: per segment count, per numeric feature count/sum/sumsq, per
    categorical or boolean value a count; then consortium-wide histogram counts."""
    cells: list[str] = []
    for j in range(k):
        cells.append(f"profile.{j}.count")
        for f in task.features:
            if f.type == "numeric":
                cells += [f"profile.{j}.{f.name}.{s}" for s in ("count", "sum", "sumsq")]
            elif f.type == "boolean":
                cells += [f"profile.{j}.{f.name}=true", f"profile.{j}.{f.name}.count"]
            else:
                cells += [f"profile.{j}.{name}" for name in f.encoded_names()]
    edges_of = dict(histogram_edges or {})
    for name in sorted(edges_of):  # sorted: the order survives the JSON round trip (sorted keys)
        cells += [f"hist.{name}.{b}" for b in range(len(edges_of[name]) + 1)]
    return tuple(cells)


class SecureSumReceipt(_TaskReply):
    """What travels in the clear beside a masked vector: who answered, at which consent time, ledger head.

    Nothing about the cells: not even how many the partner withheld for the minimum count.
    """

    NAME: ClassVar[str] = "secure sum receipt"
    dp_epsilon: float | None = Field(None, ge=0.0, description="ε the partner spent on this release when it "
                                     "noised it (its own allotment, client/dp_sums.py); absent: not noised")


# -- customer overlap (private set intersection, cardinality only) ----------------------------

Base64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/=]*$")]
Identifiers = Annotated[
    tuple[Literal["email", "phone"], ...], BeforeValidator(_parse_json),
    PlainSerializer(lambda v: _dump_json(list(v)), return_type=str),
]


class OverlapOrder(WireMessage):
    """One step of a cardinality-only PSI between two partners, relayed by the coordinator.

    ``request``: the counting partner makes a PSI request from its identifiers (kept at home
    with its key); ``respond``: the other partner answers it with its setup and response;
    ``count``: the counting partner computes the overlap size and sends it if at least its
    minimum count, else withholds it.
    """

    NAME: ClassVar[str] = "overlap order"
    stage: Literal["overlap"] = "overlap"
    step: Literal["request", "respond", "count"]
    run_id: str = Field(min_length=1)
    session: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The overlap's id (both partners' ledgers)")
    purpose: str = Field(min_length=1, description="Asked purpose; each partner's policy must allow it")
    counterpart: PartnerName
    identifiers: Identifiers = ("email", "phone")
    payload: Base64 = ""
    setup: Base64 = ""


class OverlapReply(_Reply):
    """A PSI step's answer: opaque protocol bytes, or the count (``None`` when withheld)."""

    NAME: ClassVar[str] = "overlap reply"
    step: Literal["request", "respond", "count"]
    payload: Base64 = ""
    setup: Base64 = ""
    count: int | None = Field(None, ge=0)
    ledger_checkpoint: str = Field(min_length=1)


def read_analytics_query(config: Mapping[str, Any]) -> OverlapOrder:
    """Decode an analytics ``get_properties`` order (the overlap steps)."""
    return OverlapOrder.from_config(config)


#: Stages whose orders are answered only through SecAgg+ (as Flower train messages).
SECURE_SUM_STAGES = ("stats", "segments", "profile")


def read_secure_sum_order(config: Mapping[str, Any]) -> SecureSumOrder:
    """Decode a secure-sum order (statistics, k-means step or segment profile) from a train config."""
    SecureSumOrder.check_version(config)
    stage = config.get(wire_key("stage"))
    kinds: dict[str, type[SecureSumOrder]] = {"stats": SecureStatisticsOrder, "segments": SegmentSumsOrder,
                                              "profile": SegmentProfileOrder}
    if stage not in kinds:
        raise ProtocolError(f"secure-sum order: unknown stage {stage!r} (expected one of {sorted(kinds)})")
    return kinds[stage].from_config(config)
