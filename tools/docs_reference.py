"""Write docs/reference/*.md from the Pydantic models, so the reference cannot drift from the code.

    python -m tools.docs_reference          # rewrite the reference pages
    python -m tools.docs_reference --check  # exit 1 if a committed page differs

Every key of the task schema, the partner config (with its ``[quality]`` table) and the run
config, with its type, default, allowed range and description, read from each model's JSON
schema (Pydantic's own account of what it validates). Nested tables get their own section.
Lives outside the package: it imports every role's config model, which the root package may not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "reference"


@dataclass(frozen=True)
class Page:
    """One reference page: a root model and how its file is written."""

    filename: str
    title: str
    intro: str
    models: list[tuple[str, type[BaseModel]]]  # (section path, model)
    refused: dict[str, str] | None = None  # keys the model refuses, with where they live now

    def footer(self) -> list[str]:
        """Lines after the tables (refused keys)."""
        if not self.refused:
            return []
        lines = ["## Keys that are not run settings", "", "A run config naming one of these is refused, saying "
                 "where the decision lives now:", ""]
        return lines + [f"- `{key}`: {_escape(why)}" for key, why in sorted(self.refused.items())]


def pages() -> list[Page]:
    """The reference pages (imports the models lazily, so ``--help`` is instant)."""
    from fedcrm.client.config import PartnerConfig
    from fedcrm.client.quality_rules import QualityRules
    from fedcrm.coordinator import run_config
    from fedcrm.coordinator.run_config import RunConfig
    from fedcrm.protocol import TaskSchema

    return [
        Page("task-schema.md", "Task schema reference",
             "The agreement every partner encodes features by: one YAML or JSON file per task, named by the run "
             "config (`task = ...`) and approved by each partner (`fedcrm client approve`). Its SHA-256 over the "
             "canonical JSON is checked in every round, so any change is a new task.", [("", TaskSchema)]),
        Page("partner-config.md", "Partner config reference",
             "One TOML (or YAML) file per partner: where its export is, what each column means, its privacy "
             "settings. Relative paths are relative to the file. Check a config against a task in seconds with "
             "`fedcrm client check --config partner.toml --task task.yaml`.",
             [("", PartnerConfig), ("quality", QualityRules)]),
        Page("run-config.md", "Run config reference",
             "What the operator asks of one federated run: a TOML file with the settings under `[run]` (or at the "
             "top level), each overridable by a `fedcrm coordinator run` flag. Relative `task` paths are relative "
             "to the file.", [("run", RunConfig)], getattr(run_config, "PARTNER_DECISIONS", None)),
    ]


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: dict[str, Any]) -> str:
    """A short, readable type from a JSON-schema fragment."""
    if "$ref" in schema:
        return f"table `{_ref_name(schema['$ref'])}`"
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    if "anyOf" in schema:
        parts = [p for p in schema["anyOf"] if p.get("type") != "null"]
        text = " \\| ".join(_type(p) for p in parts)
        return text + (" or null" if len(parts) < len(schema["anyOf"]) else "")
    kind = schema.get("type")
    if kind == "array":
        item = schema.get("items", {})
        if "prefixItems" in schema:
            return "array"
        return f"list of {_type(item)}" if item else "list"
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"map of name → {_type(extra)}"
        return "table"
    fmt = schema.get("format")
    if fmt in ("path", "date", "date-time"):
        return {"path": "path", "date": "date", "date-time": "date-time"}[fmt]
    return {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}.get(str(kind), "any")


def _range(schema: dict[str, Any]) -> str:
    """Bounds, lengths and patterns, collected from the fragment and its anyOf branches."""
    parts: list[str] = []
    for frag in [schema, *schema.get("anyOf", [])]:
        for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
            if key in frag:
                parts.append(f"{sign} {frag[key]}")
        for key, word in (("minLength", "length ≥"), ("maxLength", "length ≤"), ("minItems", "items ≥"),
                          ("maxItems", "items ≤")):
            if key in frag:
                parts.append(f"{word} {frag[key]}")
        if "pattern" in frag:
            parts.append(f"matches `{frag['pattern']}`")
    return ", ".join(dict.fromkeys(parts))


def _default(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(table defaults)"
    if value is None:
        return "—"
    if isinstance(value, Path):
        value = str(value)
    text = json.dumps(value, default=str, ensure_ascii=False)
    return f"`{text}`" if len(text) < 60 else f"`{text[:57]}…`"


def _escape(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _sections(path: str, model: type[BaseModel]) -> Iterator[tuple[str, type[BaseModel]]]:
    """``model`` and every nested model reachable from its fields, with their table paths."""
    yield path, model
    schema = model.model_json_schema()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        nested = _nested_model(field.annotation)
        if nested is None:
            continue
        frag = schema["properties"].get(name, {})
        is_map = frag.get("type") == "object" and isinstance(frag.get("additionalProperties"), dict)
        child = f"{path}.{name}" if path else name
        if frag.get("type") == "array":
            child += "[]"  # an array of tables
        yield from _sections(f"{child}.<name>" if is_map else child, nested)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X``, ``X | None``, ``list[X]`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def render(page: Page) -> str:
    """The Markdown of one page."""
    lines = [f"# {page.title}", "", page.intro, "",
             "Generated by `python -m tools.docs_reference` from the Pydantic models; do not edit by hand "
             "(a test fails when this page and the models disagree).", ""]
    seen: set[type[BaseModel]] = set()
    for root_path, root in page.models:
        for path, model in _sections(root_path, root):
            if model in seen and path.count(".") > 1:
                continue
            seen.add(model)
            title = (f"`[[{path[:-2]}]]`" if path.endswith("[]") else f"`[{path}]`") if path else "Top level"
            doc = _escape((model.__doc__ or "").strip())
            lines += [f"## {title} — {model.__name__}", "", doc, "",
                      "| key | type | default | range | description |", "|---|---|---|---|---|"]
            schema = model.model_json_schema()
            for name, field in model.model_fields.items():
                if field.exclude:
                    continue
                frag = schema["properties"].get(field.alias or name, {})
                lines.append(f"| `{field.alias or name}` | {_type(frag)} | {_default(model, name)} | "
                             f"{_escape(_range(frag)) or ''} | {_escape(field.description or '')} |")
            lines.append("")
    lines += page.footer()
    return "\n".join(lines).rstrip() + "\n"


def generate() -> dict[Path, str]:
    """Every reference page, path → text."""
    return {OUT / page.filename: render(page) for page in pages()}


def stale_pages() -> list[Path]:
    """Pages whose committed text differs from what the models say now."""
    return [path for path, text in generate().items() if not path.exists() or path.read_text() != text]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Write docs/reference/*.md from the Pydantic models.")
    parser.add_argument("--check", action="store_true", help="Only check; exit 1 if a page is out of date.")
    args = parser.parse_args()
    if args.check:
        stale = stale_pages()
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python -m tools.docs_reference")
        sys.exit(1 if stale else 0)
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in generate().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
