"""The run config: what the operator asks of one federated run (TOML or CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedcrm.config_files import read_config, validate_config

StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm"]

#: Former run settings that each partner now decides for itself, and where.
PARTNER_DECISIONS = {
    "consent_as_of": "each partner evaluates consent at its own clock; a coordinator may not move it "
                     "(an order asking for another time is refused and recorded in the partner's ledger)",
    "purpose": "the purpose is the task schema's, and each partner's gate uses the purpose of its own "
               "approval of the task (`fedcrm client approve`)",
    "min_count": "the minimum count is each partner's own privacy setting ([privacy] min_count in its "
                 "partner config); the coordinator does not send it",
}


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
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="before")
    @classmethod
    def _partner_decisions(cls, data: Any) -> Any:
        """Settings that are the partners' to decide are refused, saying where they live now."""
        if isinstance(data, dict):
            for key, why in PARTNER_DECISIONS.items():
                if key in data:
                    raise ValueError(f"'{key}' is not a run setting: {why}")
        return data

    @model_validator(mode="after")
    def _checks(self) -> RunConfig:
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
