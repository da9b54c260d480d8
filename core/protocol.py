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
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

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
PROTOCOL_VERSION = 1

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


class FitMetrics(_TaskReply):
    """Metrics of a local training round (the update itself travels as parameters, or masked)."""

    NAME: ClassVar[str] = "fit metrics"
    loss: float


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
