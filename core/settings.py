"""Process-wide settings from the environment (prefix ``FEDCRM_``) via pydantic-settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Deployment settings; per-partner and per-run settings live in their own config files."""

    model_config = SettingsConfigDict(env_prefix="FEDCRM_", extra="ignore")

    log_level: str = Field("INFO", description="Level of fedcrm's own log records.")
    log_json: bool = Field(False, description="Emit structured JSON log lines instead of text.")
    runs_dir: Path = Field(Path("runs"), description="Where `fedcrm coordinator run` puts run directories.")
    ray_tmp_root: Path | None = Field(
        None, description="Parent of Ray's per-run temp dir (default: the system temp location)."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (read once)."""
    return Settings()
