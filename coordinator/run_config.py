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


class DpConfig(BaseModel):
    """Differential privacy the run asks of every partner (``[run.dp]``); each partner decides whether it accepts.

    ``record`` (DP-SGD at each partner, Opacus): ``target_epsilon`` is the ε each partner's
    accountant may reach after the planned rounds, at ``delta`` (default: each partner's own,
    below 1/n), with per-sample gradients clipped to ``max_grad_norm``. ``client`` (Flower's
    fixed clipping: each update's change clipped to ``clipping_norm`` at the partner, Gaussian
    noise ``noise_multiplier × clipping_norm`` added by the coordinator to the sum) is an option
    for federations of many partners only; see docs/privacy.md for why it is not the default.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "record", "client"] = "off"
    target_epsilon: float | None = Field(None, gt=0.0, le=100.0, description="record mode: ε after all rounds")
    delta: float | None = Field(None, gt=0.0, lt=1e-2, description="record mode; default: each partner's, < 1/n")
    max_grad_norm: float = Field(1.0, gt=0.0, description="record mode: per-sample gradient clipping norm")
    noise_multiplier: float = Field(1.0, gt=0.0, description="client mode: noise std / clipping_norm")
    clipping_norm: float = Field(1.0, gt=0.0, description="client mode: bound on each partner's update norm")
    statistics: bool = Field(
        False, description="Ask every partner for Gaussian noise on its statistics-round cells (ε its own "
                           "statistics_epsilon); a partner whose purpose requires DP adds it anyway")
    profiles: bool = Field(
        False, description="Analytics runs: ask every partner for Gaussian noise on its segment-profile cells (ε its "
                           "own profiles_epsilon); a partner whose purpose requires DP adds it anyway")

    @model_validator(mode="after")
    def _target_for_record(self) -> DpConfig:
        if self.mode == "record" and self.target_epsilon is None:
            raise ValueError("dp.mode = 'record' needs dp.target_epsilon (the ε each partner may reach in this run)")
        return self


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
    max_weight_headroom: float = Field(1.05, ge=1.0, description=(
        "SecAgg+ max_weight = the consortium's total customer count (summed securely in the statistics round) "
        "× this; no partner's own count is known, and none can exceed the total"))
    min_partners: int | None = Field(
        None, ge=2, description="Fewest partners a training round may complete with (default: every partner)"
    )
    stage_timeout: float = Field(
        300.0, gt=0, le=86400, description="Longest wait, in seconds, for partners' replies at any one stage"
    )
    connect_timeout: float = Field(120.0, gt=0, le=86400, description="Longest wait for every partner to connect")
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    dp: DpConfig = Field(default_factory=DpConfig, description="Differential privacy ([run.dp]); off by default")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=1000,
        description="Stop after this many rounds without a lower federated validation loss (default: never stop early)",
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0.0, description="A round improves only if its federated validation loss is lower by more than this"
    )
    final_model: Literal["best", "last"] = Field(
        "best", description="The run's final model: the round with the lowest federated validation loss, or the last"
    )

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
    analytics: dict[str, Any] | None = Field(
        None, description="A federated analytics run (coordinator/analytics_run.py) instead of training rounds")

    def save(self) -> Path:
        """Write ``plan.json`` in the run directory."""
        path = self.run_dir / "plan.json"
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, path: Path | str) -> RunPlan:
        """Read a plan written by :meth:`save`."""
        return cls.model_validate_json(Path(path).read_text())
