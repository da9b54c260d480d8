"""The SQL registry on SQLite and on a real PostgreSQL: indexing run directories, rebuild, promotion, lineage."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from fedcrm.coordinator.registry import read_events
from fedcrm.coordinator.registry_db import Base, open_registry, registry_url
from fedcrm.coordinator.registry_index import (
    get_model,
    get_rounds,
    get_run,
    index_run,
    lineage,
    list_models,
    list_partners,
    list_runs,
    promote,
    rebuild,
)
from fedcrm.errors import ModelIntegrityError, PromotionRefused, RegistryNotFound
from tests.coordinator.registry_runs import write_run


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        url = registry_url(None, tmp_path / "runs")
    else:
        server = request.getfixturevalue("postgres_server")
        name = "reg_" + uuid.uuid4().hex[:8]
        admin = create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        url = server.url(name)
    eng = open_registry(url)
    yield eng
    eng.dispose()


def test_the_default_registry_is_a_sqlite_file_next_to_the_runs_dir(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDCRM_REGISTRY_URL", raising=False)
    assert registry_url(None, tmp_path / "runs") == f"sqlite:///{tmp_path.resolve() / 'registry.db'}"
    monkeypatch.setenv("FEDCRM_REGISTRY_URL", "postgresql://app@127.0.0.1:5/x")
    assert registry_url(None, tmp_path / "runs") == "postgresql+psycopg://app@127.0.0.1:5/x"
    assert registry_url("sqlite:///other.db", tmp_path) == "sqlite:///other.db"


def test_migrations_create_exactly_the_models_tables(engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": "registry_alembic_version"})
        diff = compare_metadata(context, Base.metadata)
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == "registry_alembic_version")] == [], diff
    assert {"runs", "rounds", "round_partners", "dropouts", "ledger_heads", "models", "promotions"} <= set(
        inspect(engine).get_table_names())


def test_a_run_is_indexed_as_its_events_say(engine: Engine, tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "runs", "r1", rounds=4, dropout=(3, "B"), dp=True, seed=3)
    index_run(engine, run_dir)
    events = read_events(run_dir)
    evaluates = {e["round"]: e for e in events if e["event"] == "evaluate"}
    fits = {e["round"]: e for e in events if e["event"] == "fit"}
    run = get_run(engine, "r1")
    assert run["status"] == "completed" and run["rounds_completed"] == 4 and run["partners"] == ["A", "B", "C"]
    from fedcrm.protocol import load_task_schema
    from tests.coordinator.registry_runs import TASK

    assert run["task_schema_sha256"] == load_task_schema(TASK).sha256()
    best = min(evaluates, key=lambda k: evaluates[k]["loss"])
    assert run["best_round"] == best and run["final_round"] == best and run["final_rule"] == "best"
    rounds = get_rounds(engine, "r1")
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for r in rounds:
        e = evaluates[r["round"]]
        assert r["federated_loss"] == pytest.approx(e["loss"])
        assert r["federated"]["roc_auc"] == pytest.approx(e["federated"]["roc_auc"])
        assert r["metric_source"] == "partners' local hold-out"
        assert r["duration_s"] is not None and r["duration_s"] >= 0
        assert sorted(r["secagg_stages"]) == sorted(["setup", "share_keys", "collect_masked_vectors", "unmask"])
        for p in r["partners"]:
            assert p["fit_loss"] == pytest.approx(fits[r["round"]]["partners"][p["partner"]]["loss"])
            assert p["dp_epsilon"] == pytest.approx(fits[r["round"]]["partners"][p["partner"]]["dp"]["epsilon"])
    third = rounds[2]
    assert third["evaluate_partners"] == ["A", "C"]
    assert third["dropouts"] == [{"stage": "evaluate", "partner": "B", "reason": "no reply within the stage timeout"}]
    b = next(p for p in list_partners(engine) if p["partner"] == "B")
    assert b["runs"] == ["r1"] and b["rounds_taken_part"] == 4 and b["dropouts"] == 1 and b["connected"] is False


def test_lineage_names_partners_rounds_heads_task_and_privacy(engine: Engine, tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "runs", "r2", rounds=3, dp=True, seed=5)
    index_run(engine, run_dir)
    model = get_model(engine, "r2:final")
    got = lineage(engine, "r2:final")
    assert got["partners"] == ["A", "B", "C"]
    assert [r["round"] for r in got["rounds"]] == list(range(1, model["round"] + 1))
    heads = {p: [json.loads(line) for line in (run_dir / "heads" / f"{p}.jsonl").read_text().splitlines()]
             for p in "ABC"}
    for h in got["ledger_heads"]:
        last = [x for x in heads[h["partner"]] if x["round"] <= model["round"]][-1]
        assert h["round"] == last["round"] and h["stage"] == last["stage"]
        assert f"\n{h['tree_size']}\n{h['root_hash']}\n" in last["checkpoint"]
    fits = [e for e in read_events(run_dir) if e["event"] == "fit" and e["round"] == model["round"]][0]
    assert got["privacy"]["differential_privacy"] is True
    for p in "ABC":
        assert got["privacy"]["partners"][p]["epsilon"] == pytest.approx(fits["partners"][p]["dp"]["epsilon"])
    assert got["task"]["schema_sha256"] == get_run(engine, "r2")["task_schema_sha256"]


def test_promotion_goes_candidate_staging_production_and_survives_a_rebuild(engine: Engine, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for rid, seed in (("r3", 1), ("r4", 2)):
        write_run(runs, rid, rounds=2, seed=seed)
    write_run(runs, "r5", rounds=2, seed=3, outcome="failed")
    assert sorted(rebuild(engine, runs)) == ["r3", "r4", "r5"]
    assert [m["model_id"] for m in list_models(engine)] == ["r5:final", "r4:final", "r3:final"]
    with pytest.raises(PromotionRefused, match="reached only from staging"):
        promote(engine, "r3:final", "production", by="ops")
    with pytest.raises(PromotionRefused, match="only a run's final model"):
        promote(engine, "r3:round-1", "staging", by="ops")
    with pytest.raises(PromotionRefused, match="failed, not completed"):
        promote(engine, "r5:final", "staging", by="ops")
    with pytest.raises(RegistryNotFound):
        promote(engine, "nope:final", "staging", by="ops")
    promote(engine, "r3:final", "staging", by="alice")
    promote(engine, "r3:final", "production", by="bob", note="best AUC")
    promote(engine, "r4:final", "staging", by="alice")
    promote(engine, "r4:final", "production", by="bob")
    assert get_model(engine, "r4:final")["stage"] == "production"
    assert get_model(engine, "r3:final")["stage"] == "archived"
    history = get_model(engine, "r3:final")["promotions"]
    assert [(h["from_stage"], h["to_stage"], h["by"]) for h in history] == [
        ("candidate", "staging", "alice"), ("staging", "production", "bob"), ("production", "archived", "bob")]
    # The registry is an index: dropped and rebuilt from the run directories, promotions come back.
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE registry_alembic_version"))
    from fedcrm.coordinator.registry_db import upgrade_registry

    upgrade_registry(engine)
    assert list_runs(engine) == []
    rebuild(engine, runs)
    assert get_model(engine, "r4:final")["stage"] == "production"
    assert [h["to_stage"] for h in get_model(engine, "r3:final")["promotions"]] == ["staging", "production", "archived"]


def test_a_tampered_model_cannot_be_promoted(engine: Engine, tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "runs", "r6", rounds=2)
    index_run(engine, run_dir)
    path = run_dir / "model" / "final.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        promote(engine, "r6:final", "staging", by="ops")


def test_final_model_can_be_the_last_rounds_when_the_run_says_so(engine: Engine, tmp_path: Path) -> None:
    index_run(engine, write_run(tmp_path / "runs", "r7", rounds=3, final_rule="last", seed=11))
    run = get_run(engine, "r7")
    assert run["final_rule"] == "last" and run["final_round"] == 3
    assert get_model(engine, "r7:final")["round"] == 3
