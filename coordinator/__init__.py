"""Operator side: federated rounds through Flower, registry, reports, API and dashboard.

Imports ``fedcrm.models`` (and consent's verifier), never ``fedcrm.client``.
"""
