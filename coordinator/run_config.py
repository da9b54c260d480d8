"""The run config: what the operator asks of one federated run (TOML or CLI flags)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedcrm.config_files import read_config, validate_config
from fedcrm.protocol import DEFAULT_MIN_COUNT

StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm"]


class RunConfig(BaseModel):
    """Settings of one federated run; every field has a safe default but the task."""

    model_config = ConfigDict(extra="forbid")

    task: Path = Field(description="Task-schema file given to every partner")
    rounds: int = Field(5, ge=1, le=1000)
    architecture: Literal["logistic", "mlp"] = "mlp"
    aggregation: Literal["secagg", "plain"] = Field(
        "secagg", description="SecAgg+ by default; 'plain' FedAvg only for comparison runs"
    )
    strategy: StrategyName = "fedavg"
    proximal_mu: float = Field(0.0, ge=0.0, description="FedProx mu (strategy 'fedprox')")
    server_learning_rate: float = Field(0.05, gt=0.0, description="FedAdam/FedYogi server step")
    min_count: int = Field(DEFAULT_MIN_COUNT, ge=1)
    seed: int = 0
    local_epochs: int = Field(2, ge=1)
    learning_rate: float = Field(0.01, gt=0.0)
    batch_size: int = Field(64, ge=0, description="0 = full batch (deterministic)")
    optimizer: Literal["adam", "sgd"] = "adam"
    clipping_range: float = Field(8.0, gt=0.0, description="Bound on |parameter|; the SecAgg+ clipping range")
    project_params: bool = Field(True, description="Clamp parameters into the bound during local training")
    quantization_range: int = Field(2**22, gt=0)
    modulus_range: int = Field(2**32, gt=0)
    max_weight_headroom: float = Field(1.05, ge=1.0, description="max_weight = largest partner's count × this")
    min_partners: int | None = Field(
        None, ge=2, description="Fewest partners a training round may complete with (default: every partner)"
    )
    stage_timeout: float = Field(
        300.0, gt=0, le=86400, description="Longest wait, in seconds, for partners' replies at any one stage"
    )
    connect_timeout: float = Field(120.0, gt=0, le=86400, description="Longest wait for every partner to connect")
    consent_as_of: list[datetime] = Field(
        default_factory=list,
        description="Fixed consent-as-of times: index 0 for the statistics round, k for round k (tests use this)",
    )
    purpose: str | None = Field(None, description="Override the task's purpose (must match the consent vocabulary)")
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("consent_as_of")
    @classmethod
    def _aware(cls, values: list[datetime]) -> list[datetime]:
        for v in values:
            if v.tzinfo is None:
                raise ValueError(f"consent_as_of time {v.isoformat()} needs a time zone (e.g. 'Z')")
        return values

    @model_validator(mode="after")
    def _checks(self) -> RunConfig:
        if self.consent_as_of and len(self.consent_as_of) < self.rounds + 1:
            raise ValueError(f"consent_as_of needs {self.rounds + 1} times (statistics round + {self.rounds} rounds)")
        if self.modulus_range & (self.modulus_range - 1) or self.modulus_range <= self.quantization_range:
            raise ValueError("modulus_range must be a power of 2 larger than quantization_range")
        return self

    def min_partners_of(self, num_partners: int) -> int:
        """The run's min_partners for ``num_partners`` partners (all of them unless set)."""
        if self.min_partners is None:
            return num_partners
        if self.min_partners > num_partners:
            raise ValueError(f"min_partners = {self.min_partners} but the run has only {num_partners} partners")
        return self.min_partners


def load_run_config(path: Path | None, overrides: dict[str, object]) -> RunConfig:
    """Read a run-config TOML (``[run]`` table or top level) and apply CLI overrides."""
    raw: dict[str, object] = {}
    if path is not None:
        data = read_config(path, "run config")
        raw = dict(data.get("run", data))
        if "task" in raw and not Path(str(raw["task"])).is_absolute():
            raw["task"] = str((path.parent / str(raw["task"])).resolve())
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(RunConfig, raw, path or "run options", "run config")


class RunPlan(BaseModel):
    """Everything the ServerApp needs, written into the run directory before the run starts."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    run_dir: Path
    num_partners: int = Field(ge=2)
    task_schema_json: str
    config: RunConfig
    resume_from_round: int = Field(0, ge=0, description="Continue after this round's checkpoint (0: a fresh run)")

    def save(self) -> Path:
        """Write ``plan.json`` in the run directory."""
        path = self.run_dir / "plan.json"
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, path: Path | str) -> RunPlan:
        """Read a plan written by :meth:`save`."""
        return cls.model_validate_json(Path(path).read_text())
