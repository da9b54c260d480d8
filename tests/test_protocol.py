"""The task schema: canonical hash, and identical feature width/order for every partner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedcrm.client.features import encode_features
from fedcrm.errors import ConfigError
from fedcrm.paths import DATASETS
from fedcrm.protocol import UNSEEN_SLOT, TaskSchema, load_task_schema

TASK = DATASETS / "tasks" / "telco_churn.yaml"


def test_schema_hash_ignores_file_formatting_but_not_content(tmp_path) -> None:  # noqa: ANN001
    task = load_task_schema(TASK)
    as_json = tmp_path / "task.json"
    as_json.write_text(task.canonical_json().decode())
    assert load_task_schema(as_json).sha256() == task.sha256()
    changed = task.model_copy(update={"version": "1.0.1"})
    assert changed.sha256() != task.sha256()


def test_categoricals_get_an_explicit_unseen_slot() -> None:
    task = load_task_schema(TASK)
    contract = next(f for f in task.features if f.name == "contract")
    assert contract.encoded_names()[-1] == f"contract={UNSEEN_SLOT}"
    assert task.width == len(task.encoded_names())


def test_partners_with_different_local_category_sets_produce_identical_width_and_order() -> None:
    task = load_task_schema(TASK)
    scaling = {f: (0.0, 1.0) for f in task.numeric_features}
    only_monthly = pd.DataFrame({"subject": ["a", "b"], "contract": ["Month-to-month"] * 2, "tenure_months": [1, 2]})
    only_two_year = pd.DataFrame({"subject": ["c"], "contract": ["Two year"], "payment_method": ["Mailed check"]})
    unknown = pd.DataFrame({"subject": ["d"], "contract": ["Ten year"]})
    mats = [encode_features(f, task, scaling) for f in (only_monthly, only_two_year, unknown)]
    assert {m.shape[1] for m in mats} == {task.width}
    names = task.encoded_names()
    assert mats[0][0, names.index("contract=Month-to-month")] == 1
    assert mats[1][0, names.index("contract=Two year")] == 1
    assert mats[2][0, names.index(f"contract={UNSEEN_SLOT}")] == 1
    # a feature the partner does not hold at all is encoded as unseen (categorical) / mean (numeric)
    assert mats[1][0, names.index(f"internet_service={UNSEEN_SLOT}")] == 1
    assert np.all(mats[1][:, names.index("tenure_months")] == 0)


def test_malformed_task_schema_names_the_file_and_field(tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: '1'\npurpose: p\nlabel: {name: y, positive_value: '1'}\n"
                   "features: [{name: c, type: categorical}]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*features\.0.*vocabulary"):
        load_task_schema(bad)


def test_no_data_sets_schema_lives_in_code() -> None:
    import fedcrm.protocol as protocol

    assert not any(isinstance(v, TaskSchema) for v in vars(protocol).values())


# -- the wire contract --------------------------------------------------------------------------

import ast  # noqa: E402
from datetime import UTC, datetime, timedelta, timezone  # noqa: E402

import flwr.compat.common.recorddict_compat as compat  # noqa: E402
from flwr.common import (  # noqa: E402
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    Status,
)
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fedcrm import protocol  # noqa: E402
from fedcrm.errors import ProtocolError, ProtocolVersionMismatch, TaskSchemaMismatch  # noqa: E402
from fedcrm.paths import REPO_ROOT  # noqa: E402
from fedcrm.protocol import (  # noqa: E402
    PROTOCOL_VERSION,
    EvaluateMetrics,
    EvaluateOrder,
    FitMetrics,
    FitOrder,
    HelloOrder,
    HelloReply,
    StatisticsOrder,
    StatisticsReply,
    WireMessage,
    read_properties_order,
    wire_key,
)

MESSAGES: tuple[type[WireMessage], ...] = (HelloOrder, StatisticsOrder, FitOrder, EvaluateOrder, HelloReply,
                                          StatisticsReply, FitMetrics, EvaluateMetrics,
                                          # federated analytics (secure sums, overlap)
                                          protocol.SecureStatisticsOrder, protocol.SegmentSumsOrder,
                                          protocol.SegmentProfileOrder, protocol.SecureSumReceipt,
                                          protocol.OverlapOrder, protocol.OverlapReply)
_BASE = load_task_schema(TASK)

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_.-", min_size=1, max_size=16)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
positive = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))]))
tasks = st.builds(lambda v, p: _BASE.model_copy(update={"version": v, "purpose": p}), names, names)
scalings = st.dictionaries(st.text(min_size=1, max_size=12), st.tuples(finite, finite), max_size=5)


@st.composite
def task_fields(draw: st.DrawFn) -> dict:
    task = draw(tasks)
    return {"run_id": draw(names), "server_round": draw(st.integers(0, 10_000)), "task_schema": task,
            "task_schema_sha256": task.sha256(), "consent_as_of": draw(st.none() | times)}


def _reply_fields(draw: st.DrawFn) -> dict:
    return {"partner": draw(names), "consent_as_of": draw(times), "ledger_checkpoint": draw(st.text(min_size=1))}


messages = st.one_of(
    st.builds(HelloOrder, run_id=names),
    task_fields().map(lambda f: StatisticsOrder(**f)),
    st.builds(lambda f, arch, sc, ep, lr, bs, opt, mu, seed, proj, mw, cr: FitOrder(
        **f, architecture=arch, scaling=sc, local_epochs=ep, learning_rate=lr, batch_size=bs, optimizer=opt,
        proximal_mu=mu, seed=seed, project_params=proj, max_weight=mw, clipping_range=cr),
        task_fields(), st.sampled_from(["logistic", "mlp"]), scalings, st.integers(1, 100), positive,
        st.integers(0, 4096), st.sampled_from(["adam", "sgd"]), st.floats(0, 10), st.integers(-2**31, 2**31),
        st.booleans(), st.none() | positive, st.none() | positive),
    st.builds(lambda f, arch, sc: EvaluateOrder(**f, architecture=arch, scaling=sc), task_fields(),
              st.sampled_from(["logistic", "mlp"]), scalings),
    st.builds(HelloReply, partner=names),
    st.composite(lambda draw: StatisticsReply(**_reply_fields(draw), cells=draw(
        st.dictionaries(st.text(min_size=1, max_size=20), finite, max_size=8))))(),
    st.composite(lambda draw: FitMetrics(**_reply_fields(draw), loss=draw(finite)))(),
    st.composite(lambda draw: EvaluateMetrics(**_reply_fields(draw), roc_auc=draw(st.none() | finite),
                                              pr_auc=draw(st.none() | finite),
                                              top_decile_lift=draw(st.none() | finite)))(),
    # federated analytics
    st.builds(lambda f, cells, bits, limbs: protocol.SecureStatisticsOrder(
        **f, cells=cells, fraction_bits=bits, limbs=limbs, quantization_range=2**22, modulus_range=2**32),
        task_fields(), st.lists(names, max_size=6).map(tuple), st.integers(0, 64), st.integers(1, 16)),
    st.builds(lambda f, sc, centres: protocol.SegmentSumsOrder(
        **f, cells=("seg.0.count",), fraction_bits=24, limbs=5, quantization_range=2**22, modulus_range=2**32,
        scaling=sc, centroids=centres), task_fields(), scalings,
        st.lists(st.lists(finite, min_size=2, max_size=2).map(tuple), min_size=1, max_size=3).map(tuple)),
    st.builds(lambda f, sc, edges: protocol.SegmentProfileOrder(
        **f, cells=(), fraction_bits=24, limbs=5, quantization_range=2**22, modulus_range=2**32, scaling=sc,
        centroids=((0.0, 1.0),), histogram_edges=edges), task_fields(), scalings,
        st.dictionaries(names, st.lists(finite, max_size=4).map(tuple), max_size=3)),
    st.composite(lambda draw: protocol.SecureSumReceipt(**_reply_fields(draw)))(),
    st.builds(lambda step, run, session, purpose, partner, payload: protocol.OverlapOrder(
        step=step, run_id=run, session=session, purpose=purpose, counterpart=partner, payload=payload),
        st.sampled_from(["request", "respond", "count"]), names, names, names, names,
        st.binary(max_size=40).map(lambda b: __import__("base64").b64encode(b).decode())),
    st.builds(lambda partner, step, count, head: protocol.OverlapReply(
        partner=partner, step=step, count=count, ledger_checkpoint=head),
        names, st.sampled_from(["request", "respond", "count"]), st.none() | st.integers(0, 10**9),
        st.text(min_size=1)),
)


def _through_flower(message: WireMessage) -> dict:
    """The dict as it arrives on the other side: through Flower's legacy records and their protobuf bytes."""
    config = message.to_config()
    params = Parameters(tensors=[], tensor_type="numpy.ndarray")
    ok = Status(code=Code.OK, message="")
    if isinstance(message, FitOrder):
        content, back = compat.fitins_to_recorddict(FitIns(params, config), True), compat.recorddict_to_fitins
        field = "config"
    elif isinstance(message, EvaluateOrder):
        content, back = compat.evaluateins_to_recorddict(EvaluateIns(params, config), True), compat.recorddict_to_evaluateins
        field = "config"
    elif isinstance(message, HelloOrder | StatisticsOrder):
        content, back = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config)), compat.recorddict_to_getpropertiesins
        field = "config"
    elif isinstance(message, FitMetrics):
        content, back = compat.fitres_to_recorddict(FitRes(ok, params, 1, config), True), compat.recorddict_to_fitres
        field = "metrics"
    elif isinstance(message, EvaluateMetrics):
        content = compat.evaluateres_to_recorddict(EvaluateRes(ok, 0.5, 1, config))
        back, field = compat.recorddict_to_evaluateres, "metrics"
    else:
        content = compat.getpropertiesres_to_recorddict(GetPropertiesRes(ok, config))
        back, field = compat.recorddict_to_getpropertiesres, "properties"
    wire = recorddict_from_proto(recorddict_to_proto(content))
    decoded = back(wire, True) if back in (compat.recorddict_to_fitins, compat.recorddict_to_evaluateins,
                                           compat.recorddict_to_fitres) else back(wire)
    return dict(getattr(decoded, field))


@settings(max_examples=150, deadline=None)
@given(messages)
def test_every_message_round_trips_through_flowers_records(message: WireMessage) -> None:
    config = message.to_config()
    assert config[wire_key("protocol_version")] == PROTOCOL_VERSION
    assert all(k.startswith("fedcrm.") for k in config)
    assert all(isinstance(v, bool | int | float | str) for v in config.values()), "Flower carries scalars only"
    assert type(message).from_config(config) == message
    assert type(message).from_config(_through_flower(message)) == message


def test_every_kind_of_message_is_covered() -> None:
    defined = {v for v in vars(protocol).values()
               if isinstance(v, type) and issubclass(v, WireMessage) and v is not WireMessage and "NAME" in vars(v)}
    assert defined == set(MESSAGES)


def test_properties_orders_dispatch_on_their_stage() -> None:
    hello = HelloOrder(run_id="r")
    stats = StatisticsOrder(run_id="r", server_round=0, task_schema=_BASE, task_schema_sha256=_BASE.sha256())
    assert read_properties_order(hello.to_config()) == hello
    assert read_properties_order(stats.to_config()) == stats
    with pytest.raises(ProtocolError, match="unknown stage 'fit'"):
        read_properties_order({**hello.to_config(), wire_key("stage"): "fit"})


def test_a_message_of_another_version_is_refused_naming_both_versions() -> None:
    order = HelloOrder(run_id="r").to_config()
    with pytest.raises(ProtocolVersionMismatch, match="hello order: the coordinator speaks fedcrm protocol version 7, "
                                                      "this partner speaks version 2"):
        HelloOrder.from_config({**order, wire_key("protocol_version"): 7})
    reply = FitMetrics(partner="A", consent_as_of=datetime.now(UTC), ledger_checkpoint="h", loss=0.1).to_config()
    with pytest.raises(ProtocolVersionMismatch, match="fit metrics: the partner speaks fedcrm protocol version 0, "
                                                      "this coordinator speaks version 2"):
        FitMetrics.from_config({**reply, wire_key("protocol_version"): 0})


def test_unknown_missing_or_mistyped_keys_are_refused_naming_them() -> None:
    stats = StatisticsOrder(run_id="r", server_round=0, task_schema=_BASE, task_schema_sha256=_BASE.sha256())
    config = stats.to_config()
    with pytest.raises(ProtocolError, match=r"'fedcrm\.min-count': Extra inputs are not permitted"):
        StatisticsOrder.from_config({**config, "fedcrm.min-count": 10})
    with pytest.raises(ProtocolError, match=r"'fedcrm\.run-id': Field required"):
        StatisticsOrder.from_config({k: v for k, v in config.items() if k != wire_key("run_id")})
    with pytest.raises(ProtocolError, match=r"'fedcrm\.server-round': Input should be a valid integer"):
        StatisticsOrder.from_config({**config, wire_key("server_round"): "two"})
    with pytest.raises(ProtocolError, match=r"'fedcrm\.consent-as-of': .*timezone"):
        StatisticsOrder.from_config({**config, wire_key("consent_as_of"): "2026-01-01T00:00:00"})
    with pytest.raises(TaskSchemaMismatch, match="hashes to"):
        StatisticsOrder.from_config({**config, wire_key("task_schema_sha256"): "0" * 64})


def test_no_message_key_is_spelled_outside_the_protocol_module() -> None:
    keys = {wire_key(name) for cls in MESSAGES for name in cls.model_fields}
    keys |= {"ledger_checkpoint", "fedcrm.task-schema", "fedcrm.architecture", "fedcrm.optimizer"}
    offenders = []
    for folder in ("core", "client", "consent", "coordinator", "models", "benchmarks"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if path == REPO_ROOT / "core" / "protocol.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, offenders
    assert not hasattr(protocol, "Key"), "the bag of keys is gone: messages are typed models"
