"""Pure ML: torch models, local training and evaluation, metrics, baselines.

Imports nothing of fedcrm but the root's errors and protocol; never ``fedcrm.consent``.
"""
