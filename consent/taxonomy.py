"""The consent vocabulary as data: data categories, legal bases and purposes.

Shipped as YAML in ``consent/data/`` (fideslang's data-category keys plus a few marked
extensions); a deployment (or a partner, or a consortium's task folder) merges its own
YAML files on top. Categories form a tree by their dotted keys (``user.financial.billing``
is a child of ``user.financial``), and granting or allowing a category covers all of its
descendants, as in Fides. Because the parent *is* the dotted prefix, the tree cannot have
a cycle; a file that also states fideslang's ``parent_key`` must state that same prefix.

A deployment file may add extension categories, legal bases and purposes, and may widen a
purpose's allowed categories under ``purpose_categories`` (the partner's decision, recorded
in its consent ledger); it may never redefine a key that is already defined.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import hashlib
import json

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedcrm.errors import VocabularyError

__all__ = [
    "DataCategory",
    "LegalBasis",
    "Purpose",
    "PurposePrivacy",
    "Vocabulary",
    "default_vocabulary",
    "load_vocabulary",
    "parent_of",
]

_BUNDLED_FILES = ("data_categories.yaml", "legal_bases.yaml", "purposes.yaml")

Key = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")]


class DataCategory(BaseModel):
    """One node of the data-category tree (a fideslang key, or a marked extension)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Key
    name: str
    description: str = ""
    extension: bool = Field(False, description="True for keys fedcrm or a deployment added below a fideslang key.")
    parent_key: str | None = Field(None, description="Optional (fideslang); must equal the key's dotted prefix.")

    @model_validator(mode="after")
    def _parent_is_the_dotted_prefix(self) -> DataCategory:
        if self.parent_key is not None and self.parent_key != parent_of(self.key):
            raise ValueError(
                f"data category '{self.key}': parent_key '{self.parent_key}' is not its dotted prefix "
                f"'{parent_of(self.key)}' (the parent is the prefix, which also rules out cycles)"
            )
        return self

    @property
    def parent(self) -> str | None:
        """Key of the parent category, or None for a root."""
        return parent_of(self.key)


class LegalBasis(BaseModel):
    """A legal basis and whether it covers subjects by opt-in or opt-out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Key
    name: str
    gdpr_article: str = ""
    coverage: Literal["opt_in", "opt_out"]
    description: str = ""


class PurposePrivacy(BaseModel):
    """A purpose's differential-privacy policy: whether DP is required, and the ε budget per partner.

    ``epsilon_budget`` is what each partner may spend on this purpose per calendar ``period``
    (UTC); every spend is a signed ``dp_spend`` event in that partner's ledger (see
    ``fedcrm.consent.budget``). ``max_delta`` bounds the δ any one release may use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    differential_privacy: Literal["required", "allowed"] = Field(
        description="'required': the partner trains for this purpose only with record-level DP; "
                    "'allowed': DP when the run asks for it"
    )
    epsilon_budget: float = Field(gt=0.0, le=1000.0, description="ε each partner may spend per period")
    period: Literal["month", "quarter", "year"] = "year"
    max_delta: float = Field(1e-5, gt=0.0, lt=1e-2, description="Largest δ one release may use")


class Purpose(BaseModel):
    """A purpose and its policy: the categories it may use, its legal basis, its retention."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Key
    name: str
    description: str = ""
    legal_basis: str
    retention_days: int = Field(gt=0, description="How long data and outputs prepared for this purpose may be kept.")
    data_categories: Annotated[tuple[str, ...], Field(min_length=1)]
    privacy: PurposePrivacy | None = Field(None, description="DP policy and ε budget; None: no budget")


class _VocabularyFile(BaseModel):
    """The shape of one vocabulary YAML file (every section optional)."""

    model_config = ConfigDict(extra="forbid")

    data_categories: list[DataCategory] = []
    legal_bases: list[LegalBasis] = []
    purposes: list[Purpose] = []
    purpose_categories: dict[str, list[str]] = Field(
        default_factory=dict, description="Purpose key → extra data categories that purpose may use."
    )


def parent_of(key: str) -> str | None:
    """Parent key by the dotted-prefix rule (``a.b.c`` → ``a.b``; a root has none)."""
    head, dot, _ = key.rpartition(".")
    return head if dot else None


class Vocabulary:
    """The merged vocabulary; lookups raise ``VocabularyError`` naming the unknown key."""

    def __init__(
        self,
        categories: Mapping[str, DataCategory],
        legal_bases: Mapping[str, LegalBasis],
        purposes: Mapping[str, Purpose],
        sources: Sequence[str] = (),
    ) -> None:
        self.categories: dict[str, DataCategory] = dict(categories)
        self.legal_bases: dict[str, LegalBasis] = dict(legal_bases)
        self.purposes: dict[str, Purpose] = dict(purposes)
        self.sources: tuple[str, ...] = tuple(sources)
        #: What deployment files added on top of the bundled vocabulary (for the ledger record).
        self.added_categories: list[str] = []
        self.added_purposes: list[str] = []
        self.widened_purposes: dict[str, list[str]] = {}

    def fingerprint(self) -> str:
        """SHA-256 over the whole merged vocabulary (categories, bases, purposes), canonical JSON."""
        body = {
            "categories": [self.categories[k].model_dump(mode="json", exclude={"parent_key"}) for k in sorted(self.categories)],
            "legal_bases": [self.legal_bases[k].model_dump(mode="json") for k in sorted(self.legal_bases)],
            "purposes": [self.purposes[k].model_dump(mode="json") for k in sorted(self.purposes)],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def category(self, key: str) -> DataCategory:
        """The category ``key``; unknown keys are an error."""
        try:
            return self.categories[key]
        except KeyError:
            raise VocabularyError(f"unknown data category '{key}'") from None

    def purpose(self, key: str) -> Purpose:
        """The purpose ``key``; unknown keys are an error listing the known ones."""
        try:
            return self.purposes[key]
        except KeyError:
            raise VocabularyError(f"unknown purpose '{key}' (known: {', '.join(sorted(self.purposes))})") from None

    def legal_basis(self, key: str) -> LegalBasis:
        """The legal basis ``key``; unknown keys are an error listing the known ones."""
        try:
            return self.legal_bases[key]
        except KeyError:
            known = ", ".join(sorted(self.legal_bases))
            raise VocabularyError(f"unknown legal basis '{key}' (known: {known})") from None

    def ancestors(self, key: str, *, include_self: bool = True) -> tuple[str, ...]:
        """``key`` (optionally) and every ancestor up to the root, nearest first."""
        self.category(key)
        chain = [key] if include_self else []
        parent = parent_of(key)
        while parent is not None:
            chain.append(parent)
            parent = parent_of(parent)
        return tuple(chain)

    def covers(self, granted: str, requested: str) -> bool:
        """True when ``granted`` is ``requested`` or one of its ancestors."""
        return granted in self.ancestors(requested)

    def descendants(self, key: str) -> tuple[str, ...]:
        """Every category below ``key`` (not ``key`` itself), sorted."""
        self.category(key)
        prefix = key + "."
        return tuple(sorted(k for k in self.categories if k.startswith(prefix)))

    def purpose_covers(self, purpose: str, category: str) -> str | None:
        """The purpose's allowed category that covers ``category``, or None if none does."""
        allowed = self.purpose(purpose).data_categories
        for ancestor in self.ancestors(category):
            if ancestor in allowed:
                return ancestor
        return None


def _read_file(path: Path | str, text: str) -> _VocabularyFile:
    try:
        raw: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise VocabularyError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return _VocabularyFile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise VocabularyError("\n".join(lines)) from exc


def _merge(vocab: Vocabulary, path: str, content: _VocabularyFile, *, deployment: bool) -> None:
    """Add one file's entries to ``vocab``, checking tree shape and references.

    Every problem in the file is reported at once (one ``VocabularyError``, one line each),
    and nothing of a bad file is merged. Categories may appear in any order within a file.
    """
    problems: list[str] = []
    categories = dict(vocab.categories)
    for cat in sorted(content.data_categories, key=lambda c: c.key.count(".")):
        if cat.key in categories:
            problems.append(f"data category '{cat.key}' is already defined")
            continue
        if deployment and not cat.extension:
            problems.append(
                f"data category '{cat.key}': a deployment may only add extensions (set `extension: true`)"
            )
            continue
        parent = cat.parent
        if parent is None:
            if cat.extension:
                problems.append(f"extension category '{cat.key}' must be a child of an existing key")
                continue
        elif parent not in categories:
            problems.append(f"data category '{cat.key}' has unknown parent '{parent}'")
            continue
        categories[cat.key] = cat
    legal_bases = dict(vocab.legal_bases)
    for basis in content.legal_bases:
        if basis.key in legal_bases:
            problems.append(f"legal basis '{basis.key}' is already defined")
        else:
            legal_bases[basis.key] = basis
    purposes = dict(vocab.purposes)
    for purpose in content.purposes:
        if purpose.key in purposes:
            problems.append(f"purpose '{purpose.key}' is already defined")
            continue
        if purpose.legal_basis not in legal_bases:
            problems.append(f"purpose '{purpose.key}' has unknown legal basis '{purpose.legal_basis}'")
        unknown = [k for k in purpose.data_categories if k not in categories]
        problems.extend(f"purpose '{purpose.key}' names unknown data category '{k}'" for k in unknown)
        purposes[purpose.key] = purpose
    widened: dict[str, list[str]] = {}
    for key, extra in content.purpose_categories.items():
        if key not in purposes:
            problems.append(f"purpose_categories: unknown purpose '{key}' (known: {', '.join(sorted(purposes))})")
            continue
        unknown = [k for k in extra if k not in categories]
        problems.extend(f"purpose_categories.{key} names unknown data category '{k}'" for k in unknown)
        new = [k for k in dict.fromkeys(extra) if k in categories and k not in purposes[key].data_categories]
        if new:
            purposes[key] = purposes[key].model_copy(update={"data_categories": (*purposes[key].data_categories, *new)})
            widened[key] = new
    if problems:
        raise VocabularyError(f"{path}: " + f"\n{path}: ".join(problems))
    if deployment:
        vocab.added_categories += [k for k in categories if k not in vocab.categories]
        vocab.added_purposes += [k for k in purposes if k not in vocab.purposes]
        for key, new in widened.items():
            vocab.widened_purposes.setdefault(key, []).extend(new)
    vocab.categories, vocab.legal_bases, vocab.purposes = categories, legal_bases, purposes


def load_vocabulary(extra: Path | str | Iterable[Path | str] | None = None) -> Vocabulary:
    """Load the bundled vocabulary and merge a deployment's YAML file(s) on top.

    Parameters
    ----------
    extra
        Path(s) of YAML files with any of ``data_categories``, ``legal_bases``, ``purposes``.
        A deployment adds entries; it may not redefine bundled keys, and every category it
        adds must be marked ``extension: true`` and be the child of a known key.
    """
    vocab = Vocabulary({}, {}, {})
    sources: list[str] = []
    data = resources.files("fedcrm.consent") / "data"
    for name in _BUNDLED_FILES:
        resource = data / name
        label = f"fedcrm.consent/data/{name}"
        _merge(vocab, label, _read_file(label, resource.read_text(encoding="utf-8")), deployment=False)
        sources.append(label)
    if extra is None:
        extras: list[Path] = []
    elif isinstance(extra, (str, Path)):
        extras = [Path(extra)]
    else:
        extras = [Path(p) for p in extra]
    for path in extras:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise VocabularyError(f"{path}: cannot read vocabulary file: {exc.strerror}") from exc
        _merge(vocab, str(path), _read_file(path, text), deployment=True)
        sources.append(str(path))
    vocab.sources = tuple(sources)
    return vocab


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """The bundled vocabulary (cached; treat as read-only)."""
    return load_vocabulary()
