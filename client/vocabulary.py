"""The partner's consent vocabulary: the bundled one plus the YAML files its config names.

A partner (or the consortium, shipping a file beside its task schema) extends the data-
category tree and the purposes' allowed categories by configuration, so every column can
carry its true category. What the partner's gate uses is recorded in the partner's own
consent ledger whenever it changes (a ``vocabulary`` event with the merged vocabulary's
fingerprint, the files and what they added), so an auditor can see which policy was in
force for every later use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fedcrm.client.config import PartnerConfig
from fedcrm.consent.events import VocabularyEvent
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.taxonomy import Vocabulary, default_vocabulary, load_vocabulary
from fedcrm.models.io import sha256_file

__all__ = ["partner_vocabulary", "record_vocabulary", "vocabulary_for_gate"]


def vocabulary_files(config: PartnerConfig) -> list[Path]:
    """The extra vocabulary files named in the config, resolved against the config's directory."""
    return [config.resolve(p) for p in config.vocabulary]


def partner_vocabulary(config: PartnerConfig) -> Vocabulary:
    """Bundled vocabulary merged with the config's files (``VocabularyError`` names file and key)."""
    files = vocabulary_files(config)
    return load_vocabulary(files) if files else default_vocabulary()


def record_vocabulary(config: PartnerConfig, vocab: Vocabulary, ledger: Ledger) -> VocabularyEvent | None:
    """Append a ``vocabulary`` event when the merged vocabulary differs from the last one recorded.

    Nothing is written while the partner uses the bundled vocabulary unchanged and has never
    recorded another one. Returns the event appended, or None.
    """
    fingerprint = vocab.fingerprint()
    recorded = ledger.events_of_kind("vocabulary")
    if recorded:
        if recorded[-1].event.vocabulary_sha256 == fingerprint:
            return None
    elif fingerprint == default_vocabulary().fingerprint():
        return None
    event = VocabularyEvent(
        partner=config.name,
        vocabulary_sha256=fingerprint,
        sources=tuple(f"{p} sha256:{sha256_file(p)}" for p in vocabulary_files(config)),
        added_categories=tuple(vocab.added_categories),
        added_purposes=tuple(vocab.added_purposes),
        widened_purposes={k: tuple(v) for k, v in vocab.widened_purposes.items()},
        at=datetime.now(UTC),
    )
    ledger.append([event])
    return event


def vocabulary_for_gate(config: PartnerConfig, ledger: Ledger) -> Vocabulary:
    """The partner's vocabulary, recorded in ``ledger`` if it changed: call before every gate."""
    vocab = partner_vocabulary(config)
    record_vocabulary(config, vocab, ledger)
    return vocab
