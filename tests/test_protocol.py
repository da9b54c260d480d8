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
