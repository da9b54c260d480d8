"""The one exception hierarchy of fedcrm.

Callers catch at the level they can handle: ``FedcrmError`` for anything of ours,
a role's base class (``ClientError``, ``ConsentError``, ``CoordinatorError``) for a
role, or the specific class. Every message names the file, row, column, field,
partner or round it is about.
"""

from __future__ import annotations


class FedcrmError(Exception):
    """Base class of every error fedcrm raises on purpose."""


class ConfigError(FedcrmError):
    """A config file (partner, run, task schema, settings) is missing or invalid."""


class TaskSchemaMismatch(FedcrmError):
    """Two parties disagree on the task schema (hash differs)."""


class DpBoundsMissing(ConfigError):
    """A differentially private release needs public clipping bounds that the task schema does not declare."""


class ProtocolError(FedcrmError):
    """A message does not match the wire contract (names the message and field)."""


class ProtocolVersionMismatch(ProtocolError):
    """A message speaks another protocol version than this side (names both versions)."""


# --- partner side -----------------------------------------------------------------


class ClientError(FedcrmError):
    """Base class of partner-side errors."""


class MissingPartnerKey(ClientError):
    """The partner's secret pseudonymisation key does not exist (run `fedcrm client init`)."""


class PartnerKeyExists(ClientError):
    """`fedcrm client init` would overwrite an existing key."""


class DataValidationError(ClientError):
    """Customer data does not match its declared schema (names file, line, column)."""


class RejectFractionExceeded(DataValidationError):
    """Too many rows were rejected during ingestion; nothing was written."""


class ExportFormatError(DataValidationError):
    """An export cannot be read as declared: encoding, empty file, header, quoting (names file and line)."""


class PartnerKeyInvalid(MissingPartnerKey):
    """The partner key file is readable by others, or is not a 32-byte hex key (names the file and the fix)."""


class MinimumCountNotMet(ClientError):
    """A partner's data for a round covers fewer distinct customers than the minimum."""


class OrderRefused(ClientError):
    """A partner refused an order (unapproved task, purpose its policy does not allow, another consent time).

    The refusal is recorded in the partner's consent ledger before this is raised.
    """


class ClippingRangeExceeded(ClientError):
    """Scaled parameters fall outside the SecAgg+ clipping range (they would be corrupted)."""


class ModelIntegrityError(FedcrmError):
    """A model file does not match the sha256 in its run manifest, or has an unsafe format."""


# --- consent ------------------------------------------------------------------------


class ConsentError(FedcrmError):
    """Base class of consent-ledger errors."""


class PurposeNotAllowed(ConsentError):
    """A column's data category is not covered by the purpose's policy."""


class ConsentImportError(ConsentError):
    """A consent import file has a bad row; nothing was written."""


class DuplicateReceipt(ConsentImportError):
    """A consent receipt id is already in the ledger (a re-import); nothing was written."""


class PrivacyBudgetExceeded(ConsentError):
    """A planned or recorded ε spend does not fit the purpose's remaining budget (names partner, purpose, ε)."""


class LedgerIntegrityError(ConsentError):
    """The audit log does not verify (names the first bad index)."""


class AuthorizationError(ConsentError):
    """A token is missing, unknown, or lacks the role for an operation."""


# --- coordinator --------------------------------------------------------------------


class CoordinatorError(FedcrmError):
    """Base class of coordinator-side errors."""


class RoundFailed(CoordinatorError):
    """A federated round could not complete with every sampled partner."""

    def __init__(self, server_round: int, stage: str, partners: list[str], detail: str = "") -> None:
        self.server_round = server_round
        self.stage = stage
        self.partners = sorted(partners)
        names = ", ".join(self.partners) or "unknown partner"
        msg = f"round {server_round} failed at stage '{stage}': partner(s) {names}"
        if detail:
            msg += f" — {detail}"
        super().__init__(msg)


class SecureAggregationHalted(RoundFailed):
    """The SecAgg+ protocol stopped before producing an aggregate."""


class VocabularyError(ConsentError):
    """A purpose, legal basis or data category is unknown, or a vocabulary file is invalid (names file and key)."""


class AnalyticsError(ClientError):
    """Local CRM analytics cannot run on the data given (names the column, option or model)."""


class ModelFitError(AnalyticsError):
    """A customer-lifetime model (BG/NBD, Gamma-Gamma) did not converge or has too little data."""


# --- consent log (Merkle tree, signed heads, bundles) -------------------------------


class MerkleProofError(LedgerIntegrityError):
    """An inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2 / §2.1.4.2)."""


class CheckpointError(LedgerIntegrityError):
    """A signed tree head (checkpoint note) is malformed or its signature does not verify."""


class SigningKeyError(ConsentError):
    """A ledger signing key file is missing, unreadable, not Ed25519, or would be overwritten."""


class LedgerNotFound(ConsentError):
    """No consent ledger at the given URL or path (or its schema is missing)."""


class BundleError(LedgerIntegrityError):
    """An exported ledger bundle is malformed (names the file and field)."""


# --- deployment (TLS, node authentication) ------------------------------------------


class CertificateError(FedcrmError):
    """A TLS certificate or key is missing, invalid, expired or too readable (names the file)."""


class NodeKeyError(FedcrmError):
    """A SuperNode authentication key is missing, invalid or would be overwritten (names the file)."""


class PartnerRegistryError(CoordinatorError):
    """A partner's node key cannot be registered or listed (names the partner and key file)."""


class PreflightFailed(CoordinatorError):
    """One or more partners' preflight found problems; the message lists every partner's."""


class RegistryError(CoordinatorError):
    """The operator's SQL registry cannot do what was asked (bad URL, unknown run or model)."""


class RegistryNotFound(RegistryError):
    """No such run, round or model in the registry."""


class PromotionRefused(RegistryError):
    """A model cannot move to the requested stage (wrong order, unfinished run, hash mismatch)."""
