"""Make the overlap pair: two Telco-style partners P and Q sharing a known set of customers.

Run from the repository root: ``python datasets/examples/overlap_pair/make_pair.py``.
Rows come from ``datasets/telco_churn.csv`` (IBM Telco sample): P holds rows 0-1,799, Q rows
1,400-3,399, so rows 1,400-1,799 (400 customers) are at both, under different local ids. Contact
identifiers are synthetic (``example.com``/``example.org`` addresses, reserved by RFC 2606; phone
numbers under country code +999, which the ITU keeps unassigned, so none is anyone's number),
formatted differently at each partner (case, spaces, ``+999``/``00999``/national ``0`` with
Q's default country code) so only normalisation makes them meet. Truth (``truth.json``): of the 400 shared customers, 20 have no
e-mail at Q and 50 have another phone number at Q.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "telco_churn.csv"
TEMPLATE = HERE.parents[1] / "partners" / "telco" / "skewed" / "A" / "partner.toml"


def main() -> None:
    rows = list(csv.DictReader(SOURCE.open(newline="")))
    header = list(rows[0])
    rng = random.Random(23)
    people = [{"email": f"customer{i:05d}@example.{'com' if i % 2 else 'org'}", "phone": f"7700 91{i:04d}"}
              for i in range(len(rows))]
    shared = range(1400, 1800)
    no_email_at_q = set(rng.sample(list(shared), 20))
    other_phone_at_q = set(rng.sample(sorted(set(shared) - no_email_at_q), 50))
    truth = {"shared_customers": len(shared), "shared_email": len(shared) - len(no_email_at_q),
             "shared_phone": len(shared) - len(other_phone_at_q), "P_customers": 1800, "Q_customers": 2000}
    for name, span, prefix in (("P", range(0, 1800), "P-"), ("Q", range(1400, 3400), "Q-")):
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        with (folder / "customers.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            for i in span:
                writer.writerow({**rows[i], "customerID": prefix + rows[i]["customerID"]})
        with (folder / "contacts.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["customer_id", "email", "phone"])
            for i in span:
                email, phone = people[i]["email"], people[i]["phone"]
                if name == "P":
                    writer.writerow([prefix + rows[i]["customerID"], email, "+999 " + phone])
                else:
                    email = "" if i in no_email_at_q else f"  {email.upper()} "
                    if i in other_phone_at_q:
                        phone = f"7700 92{i:04d}"
                    phone = ("00999-" + phone.replace(" ", "-")) if i % 3 else ("0" + phone)
                    writer.writerow([prefix + rows[i]["customerID"], email, phone])
        config = TEMPLATE.read_text().replace('name = "A"', f'name = "{name}"').replace(
            'description = "Telecom operator A: subscriber export"',
            f'description = "Telecom operator {name} of the overlap pair (datasets/examples/overlap_pair)"')
        config = config.replace("[privacy]\n", '[contacts]\npath = "contacts.csv"\n'
                                + ('default_country_code = "999"\n' if name == "Q" else "") + "\n[privacy]\n", 1)
        (folder / "partner.toml").write_text(config)
    (HERE / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(truth)


if __name__ == "__main__":
    main()
