"""Chunked ingestion stays under a memory cap that reading the whole export at once exceeds.

How the cap was chosen (measured on the project's 2-core machines, pandas 3.1, pyarrow 26):
``fedcrm client ingest`` on a 100-row export peaks at about 230 MB (the imports). On the
export below (200,000 rows × 52 columns, about 96 MB of CSV, 20 chunks of 10,000 rows)
chunked ingestion peaked 80–105 MB above that (two runs; 111 MB with the physical-line reader of
``client/export_reader.py``); a plain ``pandas.read_csv`` of the whole
file with the same options, after the same imports, about 350 MB above. The cap is the
measured baseline + 200 MB: about twice the chunked growth, and well under the unchunked.
The part of ingestion's memory that grows with the file is the set of ids seen (duplicate
detection), roughly 100 bytes per customer — 20 MB here.

Peak RSS is the child's ``ru_maxrss`` read by a small wrapper process, so each measurement
covers one process and nothing else.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import REJECTS_FILE, ingest, load_id_map
from fedcrm.client.pseudonymise import create_key

FEDCRM = Path(sys.executable).with_name("fedcrm")
ROWS, CHUNK, NUMERIC, TEXT = 200_000, 10_000, 10, 40
MARGIN_MB = 200
# Runs argv[1:] and prints the peak resident set size of that child alone, in MB.
WRAPPER = ("import resource, subprocess, sys\n"
           "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
           "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")


def peak_mb(*command: str) -> float:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, check=True)
    rc, mb = out.stdout.split()
    assert rc == "0", f"{command} failed: {out.stderr[-2000:]}"
    return float(mb)


def write_export(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {"cust": [f"C{i:08d}" for i in range(rows)]}
    for j in range(NUMERIC):
        cols[f"num{j}"] = np.round(rng.random(rows) * 1000, 2).astype(str)
    words = np.array([f"w{k:08d}" for k in range(1000)])
    for j in range(TEXT):
        cols[f"txt{j}"] = words[rng.integers(0, 1000, rows)]
    cols["left"] = rng.choice(["yes", "no"], rows)
    pd.DataFrame(cols).to_csv(path, index=False)


def write_config(directory: Path, export: str, chunk_rows: int) -> Path:
    lines = ["name = 'mem'", "[source]", f"path = '{export}'", f"chunk_rows = {chunk_rows}",
             "[columns.cust]", "role = 'customer_id'", "category = 'user.unique_id'",
             "[columns.left]", "role = 'label'", "positive = ['yes']", "negative = ['no']",
             "category = 'user.behavior.service_subscription'"]
    for j in range(NUMERIC):
        lines += [f"[columns.num{j}]", "role = 'feature'", "type = 'numeric'", "category = 'user.financial.billing'"]
    for j in range(TEXT):
        lines += [f"[columns.txt{j}]", "role = 'ignore'"]
    path = directory / f"{Path(export).stem}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_chunked_ingest_stays_under_a_cap_that_a_whole_file_read_exceeds(
        tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    write_export(tmp_path / "small.csv", 100)
    write_export(tmp_path / "big.csv", ROWS)
    small, big = write_config(tmp_path, "small.csv", CHUNK), write_config(tmp_path, "big.csv", CHUNK)
    create_key(load_partner_config(small).key_path)  # both configs use the same partner.key

    baseline = peak_mb(str(FEDCRM), "client", "ingest", "--config", str(small), "--out", str(tmp_path / "w0"))
    cap = baseline + MARGIN_MB
    chunked = peak_mb(str(FEDCRM), "client", "ingest", "--config", str(big), "--out", str(tmp_path / "w1"))
    whole = peak_mb(sys.executable, "-c", (
        "import fedcrm.cli, fedcrm.client.cli, fedcrm.client.ingest, pandas as pd\n"
        f"frame = pd.read_csv({str(tmp_path / 'big.csv')!r}, dtype=str, keep_default_na=False, na_filter=False,"
        " skipinitialspace=True)\n"
        f"assert len(frame) == {ROWS}"))
    numbers = {"baseline_mb": round(baseline), "cap_mb": round(cap), "chunked_mb": round(chunked),
               "unchunked_mb": round(whole), "rows": ROWS, "chunk_rows": CHUNK,
               "file_mb": round((tmp_path / "big.csv").stat().st_size / 2**20)}
    record_property("ingest_memory", json.dumps(numbers))
    print("ingest memory:", numbers)
    assert pq.ParquetFile(tmp_path / "w1" / "customers.parquet").metadata.num_rows == ROWS
    assert chunked < cap, numbers
    assert whole > cap, numbers


def test_parquet_export_is_read_in_batches_with_row_numbers(tmp_path: Path) -> None:
    rows, chunk = 2_500, 300
    spend = [f"{i}.5" for i in range(rows)]
    spend[1999] = "lots"  # row 2000 of the file
    table = pa.table({"cust": [f"P{i:05d}" for i in range(rows)], "spend": spend,
                      "left": ["yes" if i % 3 == 0 else "no" for i in range(rows)]})
    pq.write_table(table, tmp_path / "export.parquet", row_group_size=1000)
    (tmp_path / "partner.toml").write_text(
        "name = 'pq'\n[source]\npath = 'export.parquet'\nchunk_rows = 300\n"
        "[columns.cust]\nrole = 'customer_id'\ncategory = 'user.unique_id'\n"
        "[columns.spend]\nrole = 'feature'\ntype = 'numeric'\ncategory = 'user.financial.billing'\n"
        "[columns.left]\nrole = 'label'\npositive = ['yes']\nnegative = ['no']\n"
        "category = 'user.behavior.service_subscription'\n")
    config = load_partner_config(tmp_path / "partner.toml")
    create_key(config.key_path)
    seen: list[int] = []
    report = ingest(config, on_chunk=seen.append)
    assert len(seen) == math.ceil(rows / chunk) and max(seen) <= chunk and sum(seen) == rows
    assert report.rows_kept == rows - 1
    rejects = pd.read_csv(config.work_path / REJECTS_FILE, dtype=str)
    assert rejects.values.tolist() == [["2000", "spend", "lots", "not a number: 'lots'"]]
    customers = pd.read_parquet(report.outputs["customers"])
    assert customers["spend"].iloc[1999] == 2000.5  # the row after the rejected one and customers["label"].sum() == len(range(0, rows, 3))
    assert load_id_map(config)["customer_id"].iloc[-1] == f"P{rows - 1:05d}"
