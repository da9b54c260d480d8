"""Keep Flower and Ray from reaching outside the machine.

Flower sends telemetry and checks for updates unless told not to, a SuperLink
installs run dependencies from a registry by default, and Ray probes cloud
metadata services (169.254.169.254, metadata.google.internal) from its dashboard
process even with usage statistics off: `UsageStatsHead` reads
`~/ray_bootstrap_config.yaml` first and only probes the clouds when it is missing
(see docs/privacy.md). A privacy product must not phone home, so these are forced,
not defaulted: a user cannot turn telemetry back on through the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}

RAY_BOOTSTRAP_CONFIG = "provider: {type: local}\n"


def enforce_offline_environment() -> None:
    """Set the no-phone-home variables in this process (inherited by its children)."""
    os.environ.update(OFFLINE_ENV)


def write_ray_bootstrap_config(home: Path) -> Path:
    """Write the file that stops Ray's dashboard from probing cloud metadata.

    Ray's processes look for it in ``$HOME``; the simulation engine points HOME of the
    Ray processes at a per-run directory holding this file.
    """
    home.mkdir(parents=True, exist_ok=True)
    path = home / "ray_bootstrap_config.yaml"
    path.write_text(RAY_BOOTSTRAP_CONFIG)
    return path
