"""Consent ledger: purposes, data categories, the minimum-necessary gate and the audit log.

The base layer: imports nothing of fedcrm but the root's errors and protocol.
"""
