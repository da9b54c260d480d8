"""Where the bundled data lives (the project runs from a clone; see README)."""

from __future__ import annotations

from pathlib import Path

#: Repository root: core/ is mapped to the ``fedcrm`` package and sits at the top level.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Bundled data sets, task schemas and partner directories.
DATASETS = REPO_ROOT / "datasets"
