"""What partners and coordinator agree on: config keys, metric names, the task schema.

Both sides import this module and nothing else of each other. The task schema is a
*data file* (one per task, named by the run config); this module defines only its
model, canonical serialisation and hash. No data set's schema lives in code.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedcrm.config_files import load_config

#: Default minimum number of distinct pseudonymous customers behind any value that leaves a partner.
DEFAULT_MIN_COUNT = 10

#: Name of the one-hot slot that receives categorical values outside the vocabulary.
UNSEEN_SLOT = "__unseen__"


class Key(StrEnum):
    """Keys of the config records the coordinator sends each round."""

    STAGE = "fedcrm.stage"  # "stats" | "fit" | "evaluate"
    SCHEMA_HASH = "fedcrm.schema-sha256"
    RUN_ID = "fedcrm.run-id"
    ROUND = "fedcrm.round"
    MODEL_VERSION = "fedcrm.model-version"  # "<run_id>:<round>"
    CONSENT_AS_OF = "fedcrm.consent-as-of"  # ISO-8601 UTC
    PURPOSE = "fedcrm.purpose"
    MIN_COUNT = "fedcrm.min-count"
    MAX_WEIGHT = "fedcrm.max-weight"
    CLIPPING_RANGE = "fedcrm.clipping-range"
    SCALING = "fedcrm.scaling"  # JSON: {feature: [mean, std]}
    LOCAL_EPOCHS = "fedcrm.local-epochs"
    LEARNING_RATE = "fedcrm.learning-rate"
    BATCH_SIZE = "fedcrm.batch-size"  # 0 = full batch
    PROXIMAL_MU = "fedcrm.proximal-mu"
    SEED = "fedcrm.seed"
    PROJECT_PARAMS = "fedcrm.project-params"


class Metric(StrEnum):
    """Metric names partners report (each over at least the minimum count of customers)."""

    PARTNER = "partner"
    NUM_EXAMPLES = "num_examples"
    LOSS = "loss"
    ROC_AUC = "roc_auc"
    PR_AUC = "pr_auc"
    TOP_DECILE_LIFT = "top_decile_lift"
    POSITIVE_RATE = "positive_rate"


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
