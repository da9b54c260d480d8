"""Make the bundled two-system example from partner A: a billing export and a CRM export.

Run from the repo root: `.venv/bin/python datasets/examples/two_systems/make_example.py`.
The billing system keys customers as `ACC-<id>` and holds the billing columns; the CRM keys
them as `<id>` in lower case with a space instead of the dash, uses semicolons, and holds
everything else plus the churn flag. Customers 1–2,600 are in billing, 101–2,753 in the CRM;
five monthly amounts differ between the systems (a conflict the merge must resolve).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "partners" / "telco" / "skewed" / "A" / "customers.csv"
BILLING_COLUMNS = ["customerID", "PaymentMethod", "PaperlessBilling", "MonthlyCharges", "TotalCharges"]


def main() -> None:
    rows = pd.read_csv(SOURCE, dtype=str, keep_default_na=False)
    billing = rows.iloc[:2600][BILLING_COLUMNS].copy()
    billing["customerID"] = "ACC-" + billing["customerID"]
    billing = billing.rename(columns={"customerID": "Account"})
    billing.to_csv(HERE / "billing.csv", index=False)
    crm = rows.iloc[100:].drop(columns=["PaymentMethod", "PaperlessBilling", "TotalCharges"]).copy()
    crm["customerID"] = crm["customerID"].str.lower().str.replace("-", " ")
    changed = crm.index[:5]
    crm.loc[changed, "MonthlyCharges"] = (crm.loc[changed, "MonthlyCharges"].astype(float) + 5).round(2).astype(str)
    crm.to_csv(HERE / "crm.csv", index=False, sep=";")


if __name__ == "__main__":
    main()
