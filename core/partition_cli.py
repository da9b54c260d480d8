"""`fedcrm partition`: write partner directories from a partition spec."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def partition_command(
    spec: Path = typer.Option(Path("datasets/telco/partition.yaml"), help="Partition spec (YAML)."),
    out: Path = typer.Option(Path("datasets/partners/telco"), help="Output directory."),
    split: list[str] = typer.Option(None, help="Only these splits (default: all in the spec)."),
) -> None:
    """Split a data set into partner directories (export + partner config each)."""
    from fedcrm.partition import partition  # noqa: PLC0415 - imports scikit-learn: only when partitioning

    manifest = partition(spec, out, split or None)
    table = Table(title=f"Partners written under {out}")
    for col in ("split", "partner", "rows", "share", "positives"):
        table.add_column(col)
    for split_name, parts in manifest.items():
        if isinstance(parts, dict) and split_name != "common_test":
            for name, info in parts.items():
                table.add_row(split_name, name, str(info["rows"]), f"{info['share']:.1%}", str(info["positives"]))
    console.print(table)
    console.print(f"common test set: {manifest['common_test']['rows']} rows (kept apart from every partner)")
