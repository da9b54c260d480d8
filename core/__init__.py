"""fedcrm: privacy-preserving federated CRM analytics.

Importing the package switches off every phone-home path of the libraries it drives
(Flower telemetry and update checks, run-time dependency installation, Ray usage
statistics and cloud-metadata probes) before any of them is imported.
"""

from fedcrm._offline import enforce_offline_environment

enforce_offline_environment()

__version__ = "0.1.0"

__all__ = ["__version__"]
