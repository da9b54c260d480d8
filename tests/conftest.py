"""Suite-wide setup: no phone-home, no egress, a real Postgres when a test asks for one."""

from __future__ import annotations

import os

# Before anything imports flwr or ray (importing fedcrm forces these as well).
os.environ.update({
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
})

pytest_plugins = ["tests.no_network", "tests.postgres_server"]
