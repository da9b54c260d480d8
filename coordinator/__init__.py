"""Operator side: federated rounds through Flower (simulation and deployment), registry and reports.

Imports ``fedcrm.models`` (and consent's verifier), never ``fedcrm.client``.
"""
