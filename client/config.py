"""The partner config: where a partner's export is and what each of its columns means.

A partner's data team writes one TOML (or YAML) file; nothing data-set specific lives in
code. The file maps the partner's own column names to roles (customer id, label, task
feature, direct identifier, ignored), to types with parsing options, and to data
categories (fideslang keys) that the consent gate checks against a purpose.
Relative paths in the file are relative to the file's own directory.
"""

from __future__ import annotations

import codecs
import math
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedcrm.config_files import load_config
from fedcrm.protocol import DEFAULT_MIN_COUNT

ColumnRole = Literal["customer_id", "label", "feature", "direct_identifier", "quasi_identifier", "ignore"]
ColumnType = Literal["string", "numeric", "integer", "categorical", "boolean", "date"]


def check_encoding(name: str) -> str:
    """The encoding's canonical name, if Python knows it and it keeps ASCII (and so line breaks) as is."""
    try:
        info = codecs.lookup(name)
    except LookupError as exc:
        raise ValueError(f"unknown encoding {name!r} (e.g. 'utf-8', 'cp1252', 'latin-1')") from exc
    probe = "\n\r,;\t\"abc019 "
    try:
        ascii_safe = probe.encode(info.name) == probe.encode("ascii")
    except UnicodeError:
        ascii_safe = False
    if not ascii_safe:
        raise ValueError(f"encoding {name!r} is not ASCII-compatible (UTF-16/32 exports): re-export as UTF-8")
    return info.name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GapRule(_Strict):
    """A known gap: when `when_column` equals `equals`, a missing value here becomes `value`."""

    when_column: str
    equals: str | float
    value: str | float


class Generalise(_Strict):
    """Coarsen a quasi-identifier before use (e.g. exact age → age band)."""

    bins: list[float] = Field(min_length=2)
    labels: list[str] | None = None

    @model_validator(mode="after")
    def _labels_match_bins(self) -> Generalise:
        if self.labels is not None and len(self.labels) != len(self.bins) - 1:
            raise ValueError(f"generalise: {len(self.bins) - 1} bins need as many labels, got {len(self.labels)}")
        return self


class ColumnSpec(_Strict):
    """What one source column means."""

    role: ColumnRole
    type: ColumnType = "string"
    category: str | None = Field(None, description="fideslang data-category key, e.g. user.financial.billing")
    feature: str | None = Field(None, description="Task feature this column feeds (default: the column name)")
    positive: list[str] = Field(default_factory=list, description="Label: local values that mean positive")
    negative: list[str] = Field(default_factory=list, description="Label: local values that mean negative")
    true_values: list[str] = Field(default_factory=lambda: ["1", "true", "yes", "y", "t"])
    false_values: list[str] = Field(default_factory=lambda: ["0", "false", "no", "n", "f"])
    value_map: dict[str, str] = Field(default_factory=dict, description="Local category value → task vocabulary value")
    min: float | None = Field(None, description="numeric/integer: smallest accepted value (default: -source.max_magnitude)")
    max: float | None = Field(None, description="numeric/integer: largest accepted value (default: +source.max_magnitude)")
    earliest: date | None = Field(None, description="date: earliest accepted day (default: source.earliest_date)")
    latest: date | None = Field(None, description="date: latest accepted day (default: source.latest_date)")
    required: bool = False
    gap: GapRule | None = None
    generalise: Generalise | None = None

    @model_validator(mode="after")
    def _role_consistency(self) -> ColumnSpec:
        if self.role in ("feature", "label", "quasi_identifier") and not self.category:
            raise ValueError(f"a {self.role} column needs a data category")
        if self.role == "label" and not self.positive:
            raise ValueError("the label column needs its positive value(s) in 'positive'")
        for low, high, what in ((self.min, self.max, "min/max"), (self.earliest, self.latest, "earliest/latest")):
            if low is not None and high is not None and low > high:
                raise ValueError(f"{what}: {low} is above {high}")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"min/max must be finite numbers, got {bound}")
        return self


class SourceSpec(_Strict):
    """The export file and how to parse it."""

    path: Path
    format: Literal["csv", "parquet"] | None = None
    level: Literal["customer", "transaction"] = "customer"
    delimiter: str = ","
    decimal: str = "."
    thousands: str | None = None
    encoding: str = "utf-8"
    missing_values: list[str] = Field(default_factory=lambda: ["", "NA", "N/A", "null", "NULL", "NaN"])
    date_formats: list[str] = Field(default_factory=lambda: ["%Y-%m-%d"])
    chunk_rows: int = Field(50_000, gt=0)
    max_reject_fraction: float = Field(0.05, ge=0.0, le=1.0)
    whitespace_delimited: bool = False
    header: bool = True
    column_names: list[str] | None = Field(None, description="Names for a file without a header row")
    multiline_values: bool = Field(
        False, description="Quoted values may hold line breaks (free-text string, ignored and direct-identifier "
        "columns only); off by default, so an unbalanced quote can never swallow the rows after it")
    max_magnitude: float = Field(1e15, gt=0, description="Default bound |x| <= this for numeric columns without min/max")
    earliest_date: date = Field(date(1900, 1, 1), description="Default earliest day for date columns")
    latest_date: date = Field(date(2100, 12, 31), description="Default latest day for date columns")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        check_encoding(value)
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1 or value in ('"', "\n", "\r"):
            raise ValueError(f"the delimiter must be one character other than a quote or line break, got {value!r}")
        return value

    @model_validator(mode="after")
    def _names_and_dates(self) -> SourceSpec:
        if not self.header and not self.column_names:
            raise ValueError("header = false needs the column names in column_names")
        if self.earliest_date > self.latest_date:
            raise ValueError(f"earliest_date {self.earliest_date} is after latest_date {self.latest_date}")
        if not math.isfinite(self.max_magnitude):
            raise ValueError("max_magnitude must be a finite number")
        return self

    @property
    def resolved_format(self) -> str:
        """File format, from the explicit setting or the extension."""
        if self.format:
            return self.format
        return "parquet" if self.path.suffix.lower() in (".parquet", ".pq") else "csv"


class TransactionSpec(_Strict):
    """How a transaction-level export (one row per purchase) becomes one row per customer."""

    date: str
    amount: str
    quantity: str | None = None
    observation_end: date = Field(description="Last day of the calibration (feature) period")
    observation_start: date | None = None
    label_window_end: date | None = Field(None, description="Label = any purchase after observation_end up to this day")
    time_unit: Literal["D", "W"] = "D"
    category: str = Field(description="Data category of the derived purchase features")


class PrivacySpec(_Strict):
    """Partner-local privacy settings."""

    min_count: int = Field(DEFAULT_MIN_COUNT, ge=1, description="Minimum distinct customers behind any exported value")
    key_file: Path = Path("partner.key")
    ledger: str = Field("consent.db", description="Consent ledger: SQLAlchemy URL or a path to a SQLite file")
    ledger_key_file: Path = Path("ledger.key")
    node_key_file: Path = Field(Path("node.key"), description="SuperNode authentication key (its .pub goes to the operator)")
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Local hold-out share for federated evaluation")
    statistics_epsilon: float = Field(
        0.5, gt=0.0, le=10.0, description="ε this partner allots to one noised statistics round (client/dp_sums.py)")
    profiles_epsilon: float = Field(
        0.5, gt=0.0, le=10.0, description="ε this partner allots to one noised segment-profile release")
    release_delta: float | None = Field(
        None, gt=0.0, lt=1e-2, description="δ of one noised statistics or profile release (default: the purpose's "
                                           "max_delta)")
    egress_journal: Literal["off", "digest", "full"] = Field(
        "digest", description="Journal of what leaves the partner: digests only, or the full wire bytes"
    )
    purposes: list[str] | None = Field(
        None,
        description="Purposes this partner approves federated tasks for (default: any purpose of its consent "
        "vocabulary); `fedcrm client approve` and every order are checked against it",
    )


class ContactsSpec(_Strict):
    """Contact identifiers kept at home for customer-overlap PSI (never ingested, never sent)."""

    path: Path = Field(description="CSV of customer id, e-mail and/or phone (relative to the config file)")
    customer_id: str = "customer_id"
    email: str | None = "email"
    phone: str | None = "phone"
    delimiter: str = ","
    default_country_code: str = Field("", pattern=r"^[0-9]{0,3}$",
                                      description="Prefixed to national phone numbers (leading single 0)")


class PartnerConfig(_Strict):
    """A partner's whole config file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    source: SourceSpec
    columns: dict[str, ColumnSpec]
    transactions: TransactionSpec | None = None
    contacts: ContactsSpec | None = Field(None, description="Contact identifiers for customer-overlap PSI")
    privacy: PrivacySpec = PrivacySpec()
    work_dir: Path = Path("work")
    quality: dict[str, Any] | None = Field(None, description="Data-quality rules (see client/quality.py)")
    vocabulary: list[Path] = Field(
        default_factory=list,
        description="Extra consent-vocabulary YAML files (data categories, purposes, purpose_categories) "
        "merged on top of the bundled one; e.g. the file a consortium ships beside its task schema",
    )
    features_not_held: list[str] = Field(
        default_factory=list,
        description="Task features this partner does not hold (declared, so that an unmapped feature is never a typo)",
    )
    config_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _one_customer_id(self) -> PartnerConfig:
        ids = [c for c, s in self.columns.items() if s.role == "customer_id"]
        if len(ids) != 1:
            raise ValueError(f"exactly one column must have role 'customer_id', found {ids or 'none'}")
        labels = [c for c, s in self.columns.items() if s.role == "label"]
        if len(labels) > 1:
            raise ValueError(f"at most one label column, found {labels}")
        if self.source.level == "transaction" and self.transactions is None:
            raise ValueError("source.level = 'transaction' needs a [transactions] table")
        return self

    @property
    def base_dir(self) -> Path:
        """Directory the config file lives in (relative paths resolve against it)."""
        return self.config_path.parent if self.config_path else Path.cwd()

    def resolve(self, path: Path) -> Path:
        """Resolve a path from the config against the config file's directory."""
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def customer_id_column(self) -> str:
        """The source column holding the partner's own customer id."""
        return next(c for c, s in self.columns.items() if s.role == "customer_id")

    @property
    def label_column(self) -> str | None:
        """The source column holding the label, if this partner has one."""
        return next((c for c, s in self.columns.items() if s.role == "label"), None)

    def feature_columns(self) -> dict[str, str]:
        """Task feature name → source column, for every column with role 'feature'."""
        return {(s.feature or c): c for c, s in self.columns.items() if s.role in ("feature", "quasi_identifier")}

    @property
    def key_path(self) -> Path:
        """The partner's secret pseudonymisation key file."""
        return self.resolve(self.privacy.key_file)

    @property
    def ledger_key_path(self) -> Path:
        """The Ed25519 key that signs this partner's consent-ledger heads."""
        return self.resolve(self.privacy.ledger_key_file)

    @property
    def node_key_path(self) -> Path:
        """The SuperNode's private authentication key (EC P-384, OpenSSH format)."""
        return self.resolve(self.privacy.node_key_file)

    @property
    def ledger_url(self) -> str:
        """SQLAlchemy URL of this partner's consent ledger."""
        raw = self.privacy.ledger
        if "://" in raw:
            return raw
        return f"sqlite:///{self.resolve(Path(raw)).resolve()}"

    @property
    def work_path(self) -> Path:
        """Partner-local working directory (ingested data, rejects, reports)."""
        return self.resolve(self.work_dir)


def load_partner_config(path: Path | str) -> PartnerConfig:
    """Read and validate a partner config; errors name the file, key and problem."""
    config = load_config(path, PartnerConfig, "partner config")
    return config.model_copy(update={"config_path": Path(path).resolve()})
