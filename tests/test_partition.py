"""Partitioning into partner organisations: deterministic, disjoint, complete, test set apart."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedcrm.partition import partition
from fedcrm.paths import DATASETS

SPEC = DATASETS / "telco" / "partition.yaml"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("partners")
    return out, partition(SPEC, out)


def _ids(path: Path) -> set[str]:
    return set(pd.read_csv(path, dtype=str, keep_default_na=False)["customerID"])


def test_partitioning_is_deterministic(written: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    out, _ = written
    partition(SPEC, tmp_path, ["skewed"])
    for name in ("A", "B", "C"):
        assert (tmp_path / "skewed" / name / "customers.csv").read_bytes() == \
            (out / "skewed" / name / "customers.csv").read_bytes()


def test_bundled_partners_match_the_partition_code(written: tuple[Path, dict[str, object]]) -> None:
    out, _ = written
    for split in ("skewed", "iid", "many"):
        for csv in (out / split).glob("*/customers.csv"):
            bundled = DATASETS / "partners" / "telco" / split / csv.parent.name / "customers.csv"
            assert bundled.read_bytes() == csv.read_bytes(), bundled


@pytest.mark.parametrize("split", ["skewed", "iid", "many"])
def test_partners_are_disjoint_complete_and_never_hold_the_test_set(written, split: str) -> None:  # noqa: ANN001
    out, _ = written
    everyone = _ids(DATASETS / "telco_churn.csv")
    test = _ids(out / "common_test" / "customers.csv")
    parts = [_ids(p) for p in sorted((out / split).glob("*/customers.csv"))]
    union: set[str] = set()
    for part in parts:
        assert not (part & union), "a customer is held by two partners"
        assert not (part & test), "a test-set customer reached a partner"
        union |= part
    assert union | test == everyone
    assert len(test) == round(0.2 * len(everyone))


def test_common_test_set_is_stratified(written) -> None:  # noqa: ANN001
    out, _ = written
    full = pd.read_csv(DATASETS / "telco_churn.csv", dtype=str)
    test = pd.read_csv(out / "common_test" / "customers.csv", dtype=str)
    assert abs((test["Churn"] == "Yes").mean() - (full["Churn"] == "Yes").mean()) < 0.002


def test_skewed_split_sends_80_percent_of_each_contract_type_home(written) -> None:  # noqa: ANN001
    out, _ = written
    homes = {"Month-to-month": "A", "One year": "B", "Two year": "C"}
    frames = {n: pd.read_csv(out / "skewed" / n / "customers.csv", dtype=str) for n in "ABC"}
    for contract, home in homes.items():
        counts = {n: int((f["Contract"] == contract).sum()) for n, f in frames.items()}
        total = sum(counts.values())
        assert counts[home] == round(0.8 * total)
        for other in set(frames) - {home}:
            assert abs(counts[other] - 0.1 * total) <= 1


def test_many_partner_split_is_unequal_with_a_small_partner(written) -> None:  # noqa: ANN001
    _, manifest = written
    shares = [info["share"] for info in manifest["many"].values()]  # type: ignore[index]
    assert len(shares) == 10
    assert min(shares) <= 0.05
    assert max(shares) >= 5 * min(shares)
