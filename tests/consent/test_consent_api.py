"""Consent API: authorisation matrix, refused requests leave the log untouched, proofs verify, strict bodies."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fedcrm.consent import merkle
from fedcrm.consent.api import create_app
from fedcrm.consent.gate import UsageContext, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import make_consent
from fedcrm.consent.tokens import TokenStore, create_token, list_tokens, revoke_token
from fedcrm.errors import AuthorizationError, ConfigError

ALICE = "c0ffee00:" + "ab" * 32
T0 = datetime(2025, 2, 1, tzinfo=UTC)


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "secrets" / "tokens.json"
    issued = {role: create_token(path, role, f"{role}-1") for role in ("auditor", "partner-writer", "coordinator")}
    return path, issued


@pytest.fixture
def client(ledger: Ledger, tokens: tuple[Path, dict[str, str]]) -> Iterator[TestClient]:
    when = T0 - timedelta(days=3)
    ledger.append([make_consent(subject=ALICE, purpose="purchase_propensity", category="user.behavior", action="grant",
                                effective_at=when, recorded_at=when, source="web", notice_version="v1")])
    with TestClient(create_app(ledger, tokens[0])) as c:
        yield c


def auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


CSV = (
    "subject,purpose,category,action,legal_basis,effective_at,recorded_at,source,notice_version\n"
    f"{ALICE},churn_prediction,user,withdraw,legitimate_interest,2025-01-20T00:00:00Z,2025-01-20T00:00:00Z,call,v1\n"
)
GRANT = {"subject": ALICE, "purpose": "purchase_propensity", "action": "withdraw", "source": "web",
         "notice_version": "v2", "effective_at": "2025-01-30T00:00:00Z"}

# (method, path, body kwargs, roles that may call it)
ENDPOINTS = [
    ("GET", "/heads/latest", {}, {"auditor", "coordinator"}),
    ("GET", "/proofs/inclusion?index=0&size=1", {}, {"auditor", "coordinator"}),
    ("GET", "/proofs/consistency?old=0&new=1", {}, {"auditor", "coordinator"}),
    ("GET", f"/subjects/{ALICE}", {}, {"auditor"}),
    ("GET", "/report?start=2025-01-01T00:00:00Z&end=2025-03-01T00:00:00Z", {}, {"auditor"}),
    ("GET", "/verify", {}, {"auditor"}),
    ("GET", "/events", {}, {"auditor"}),
    ("POST", "/consents", {"json": GRANT}, {"partner-writer"}),
    ("POST", "/consents/import", {"content": CSV, "headers": {"Content-Type": "text/csv"}}, {"partner-writer"}),
]


@pytest.mark.parametrize(("method", "path", "body", "allowed"), ENDPOINTS, ids=[f"{m} {p.split('?')[0]}" for m, p, _, _ in ENDPOINTS])
def test_authorisation_matrix(
    client: TestClient, ledger: Ledger, tokens: tuple[Path, dict[str, str]], method: str, path: str, body: dict, allowed: set[str]
) -> None:
    issued = tokens[1]
    for presented, expected in [
        (None, 401),
        ("fcc_not-a-real-token", 401),
        *[(issued[role], None) for role in ("auditor", "partner-writer", "coordinator")],
    ]:
        role = next((r for r, t in issued.items() if t == presented), None)
        want = expected if expected is not None else (201 if method == "POST" else 200) if role in allowed else 403
        size = ledger.tree_size()
        kwargs = dict(body)
        kwargs["headers"] = {**kwargs.get("headers", {}), **auth(presented)}
        response = client.request(method, path, **kwargs)
        assert response.status_code == want, (role, response.text)
        if want in (401, 403):
            assert ledger.tree_size() == size, "a refused request must not change the log"
            assert response.json()["detail"]
        if want == 401:
            assert response.headers["WWW-Authenticate"] == "Bearer"


def test_head_and_proofs_verify_against_the_signed_root(client: TestClient, ledger: Ledger, tokens) -> None:
    h = auth(tokens[1]["coordinator"])
    ledger.append([make_consent(subject=ALICE, purpose="churn_prediction", category="user", action="withdraw",
                                source="t", notice_version="v") for _ in range(4)])
    head = client.get("/heads/latest", headers=h).json()
    assert head["size"] == 5 and head["note"].startswith(head["origin"] + "\n5\n")
    root = base64.b64decode(head["root_hash"])
    p = client.get("/proofs/inclusion", params={"index": 3, "size": 5}, headers=h).json()
    merkle.verify_inclusion(3, 5, base64.b64decode(p["leaf_hash"]), [base64.b64decode(x) for x in p["proof"]], root)
    old_root = ledger.checkpoint_at(1).root_hash
    c = client.get("/proofs/consistency", params={"old": 1}, headers=h).json()
    assert c["new"] == 5
    merkle.verify_consistency(1, 5, old_root, root, [base64.b64decode(x) for x in c["proof"]])
    bad = client.get("/proofs/inclusion", params={"index": 5, "size": 5}, headers=h)
    assert bad.status_code == 400 and "index 5" in bad.json()["detail"]


def test_grant_and_withdraw_are_recorded_and_answered_per_subject(client: TestClient, ledger: Ledger, tokens) -> None:
    w = auth(tokens[1]["partner-writer"])
    r = client.post("/consents", json={**GRANT, "action": "withdraw", "purpose": "churn_prediction"}, headers=w)
    assert r.status_code == 201
    body = r.json()
    assert body["first_index"] == 1 and body["count"] == 4 and body["head"]["size"] == 5  # one per churn category
    view = gate(
        __import__("pandas").DataFrame({"subject": [ALICE], "tenure": [3]}), {"tenure": "user.behavior.service_subscription"},
        "churn_prediction", T0, ["tenure"], ledger=ledger,
        use=UsageContext(job_id="j", partner="p", model_version="", stage="analytics"),
    )
    assert view.subjects == frozenset()
    s = client.get(f"/subjects/{ALICE}", headers=auth(tokens[1]["auditor"])).json()
    assert [c["action"] for c in s["consents"]] == ["grant", "withdraw", "withdraw", "withdraw", "withdraw"]
    report = client.get("/report", params={"start": "2025-01-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"},
                        headers=auth(tokens[1]["auditor"]))
    assert report.json()["verification"]["ok"] is True
    html = client.get("/report", params={"format": "html", "start": "2025-01-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"},
                      headers=auth(tokens[1]["auditor"]))
    assert html.headers["content-type"].startswith("text/html") and "does not remove" in html.text


def test_bodies_are_strict_and_bad_records_write_nothing(client: TestClient, ledger: Ledger, tokens) -> None:
    w = auth(tokens[1]["partner-writer"])
    size = ledger.tree_size()
    for body, status, needle in [
        ({**GRANT, "notice_version": 2}, 422, "notice_version"),
        ({**GRANT, "subject": True}, 422, "subject"),
        ({**GRANT, "extra": "x"}, 422, "extra"),
        ({**GRANT, "effective_at": "2025-01-30T00:00:00"}, 422, "effective_at"),
        ({**GRANT, "purpose": "upselling"}, 422, "unknown purpose 'upselling'"),
        ({**GRANT, "subject": "C-1234"}, 422, "pseudonym"),
    ]:
        r = client.post("/consents", json=body, headers=w)
        assert r.status_code == status and needle in r.text, r.text
    bad_csv = CSV.replace("legitimate_interest", "vibes")
    r = client.post("/consents/import", content=bad_csv, headers={**w, "Content-Type": "text/csv", "X-Filename": "c.csv"})
    assert r.status_code == 422 and r.json()["detail"].startswith("c.csv, line 2, column 'legal_basis'")
    assert ledger.tree_size() == size


def test_openapi_docs_are_served_and_name_every_resource(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/heads/latest", "/proofs/inclusion", "/proofs/consistency", "/consents", "/consents/import",
            "/subjects/{pseudonym}", "/report", "/verify", "/events"} <= set(paths)


# --- the token file ---------------------------------------------------------------------------


def test_tokens_are_stored_hashed_in_a_private_file(tokens: tuple[Path, dict[str, str]]) -> None:
    path, issued = tokens
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text(encoding="utf-8")
    assert all(secret not in raw for secret in issued.values())
    assert {t.role for t in list_tokens(path)} == {"auditor", "partner-writer", "coordinator"}
    store = TokenStore(path)
    assert store.authenticate(issued["auditor"]).name == "auditor-1"
    revoke_token(path, "auditor-1")
    with pytest.raises(AuthorizationError, match="unknown"):
        store.authenticate(issued["auditor"])


def test_token_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    create_token(path, "auditor", "a")
    with pytest.raises(ConfigError, match="already exists"):
        create_token(path, "auditor", "a")
    with pytest.raises(ConfigError, match="unknown role 'admin'"):
        create_token(path, "admin", "b")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 644, wider than 600"):
        list_tokens(path)
    path.chmod(0o600)
    path.write_text(json.dumps({"version": 1, "tokens": [{"name": "x"}]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{path}: tokens.0.role"):
        list_tokens(path)


# --- out-of-range input is a 4xx, never a 500 -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        # The default start (30 days before end) falls before year 1.
        ("/report?end=0001-01-01T00:00:01Z", 400, "give start as well"),
        # Parses, but UTC cannot represent it (year 1 shifted back an hour).
        ("/report?start=0001-01-01T00:00:00%2B01:00", 422, "query.start"),
        ("/report?end=9999-12-31T23:00:00-05:00", 422, "out of range"),
        ("/report?start=2025-03-01T00:00:00Z&end=2025-01-01T00:00:00Z", 400, "not after start"),
        ("/report?start=2025-03-01T00:00:00", 422, "query.start"),
        # Numbers are not read as Unix time (schemathesis found "0.5" accepted).
        ("/report?start=0.5", 422, "query.start: Value error, a timestamp must be an ISO-8601 string"),
        ("/report?end=1700000000", 422, "query.end"),
        ("/report?end=2024-W01-1T00:00:00Z", 422, "query.end"),
        (f"/events?start={2**63}", 422, "query.start"),
        (f"/events?start={2**64 + 5}", 422, "query.start"),
        ("/events?start=-1", 422, "query.start"),
        ("/events?limit=1001", 422, "query.limit"),
        (f"/proofs/inclusion?index={2**63}", 422, "query.index"),
        (f"/proofs/inclusion?index=0&size={2**63 - 1}", 400, "not in a tree"),
        (f"/proofs/consistency?old={2**63 - 1}", 400, "need old <= new"),
        ("/subjects/C-1234", 422, "path.pseudonym"),
    ],
)
def test_out_of_range_parameters_are_refused_with_4xx(client: TestClient, tokens, path: str, status: int, needle: str) -> None:
    r = client.get(path, headers=auth(tokens[1]["auditor"]))
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_the_largest_start_index_reads_nothing(client: TestClient, tokens) -> None:
    r = client.get(f"/events?start={2**63 - 1}&limit=1000", headers=auth(tokens[1]["auditor"]))
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"effective_at": "0001-01-01T00:00:00+01:00"}, "body.effective_at"),
        ({"expires_at": "9999-12-31T23:00:00-05:00"}, "body.expires_at"),
        ({"effective_at": 10**20}, "body.effective_at"),  # a number is not read as Unix time
        ({"categories": ["user.contact.email"], "action": "grant", "purpose": "purchase_propensity"}, "may not use"),
        ({"receipt_id": "r-1"}, "receipt_id: names one receipt"),  # four categories, one receipt id
        ({"subject": ALICE + "\n"}, "pseudonym"),
    ],
)
def test_bad_consent_bodies_are_422_and_write_nothing(client: TestClient, ledger: Ledger, tokens, change, needle) -> None:
    size = ledger.tree_size()
    body = {**GRANT, "purpose": "churn_prediction", **change}
    r = client.post("/consents", json=body, headers=auth(tokens[1]["partner-writer"]))
    assert r.status_code == 422 and needle in r.json()["detail"], r.text
    assert ledger.tree_size() == size


def test_out_of_range_timestamps_in_an_upload_name_line_and_column(client: TestClient, ledger: Ledger, tokens) -> None:
    w = {**auth(tokens[1]["partner-writer"]), "Content-Type": "text/csv", "X-Filename": "c.csv"}
    r = client.post("/consents/import", content=CSV.replace("2025-01-20T00:00:00Z,2025", "0001-01-01T00:00:00+01:00,2025"), headers=w)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("c.csv, line 2, column 'effective_at': '0001-01-01T00:00:00+01:00' is out of range")
    r = client.post("/consents/import", content=b"subject,purpose\n\xff\n", headers=w)
    assert r.status_code == 422 and r.json()["detail"] == "c.csv: not UTF-8 text (invalid start byte at byte 16, line 2)"
    assert ledger.tree_size() == 1


def test_a_receipt_id_already_logged_is_a_409_and_nothing_is_written(client: TestClient, ledger: Ledger, tokens) -> None:
    w = auth(tokens[1]["partner-writer"])
    one = {**GRANT, "categories": ["user.behavior.purchase_history"], "receipt_id": "rcpt-42"}
    assert client.post("/consents", json=one, headers=w).status_code == 201
    size = ledger.tree_size()
    again = client.post("/consents", json=one, headers=w)
    assert again.status_code == 409 and "receipt id 'rcpt-42' is already in the ledger (entry 1)" in again.json()["detail"]
    csv_with_ids = CSV.replace("notice_version\n", "notice_version,receipt_id\n").replace(",call,v1\n", ",call,v1,rcpt-7\n")
    h = {**w, "Content-Type": "text/csv", "X-Filename": "c.csv"}
    assert client.post("/consents/import", content=csv_with_ids, headers=h).status_code == 201
    r = client.post("/consents/import", content=csv_with_ids, headers=h)
    assert r.status_code == 409 and r.json()["detail"].startswith("c.csv, line 2, column 'receipt_id': receipt id 'rcpt-7'")
    assert ledger.tree_size() == size + 1


def test_request_bodies_over_the_limit_are_413(client: TestClient, ledger: Ledger, tokens) -> None:
    from fedcrm.consent.api import MAX_BODY_BYTES, MAX_IMPORT_BYTES

    w = auth(tokens[1]["partner-writer"])
    size = ledger.tree_size()
    big_json = json.dumps({**GRANT, "source": "x" * MAX_BODY_BYTES})
    r = client.post("/consents", content=big_json, headers={**w, "Content-Type": "application/json"})
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["detail"]
    big_csv = CSV + "#" * (MAX_IMPORT_BYTES - len(CSV) + 1)
    r = client.post("/consents/import", content=big_csv, headers={**w, "Content-Type": "text/csv"})
    assert r.status_code == 413 and str(MAX_IMPORT_BYTES) in r.json()["detail"]

    # That the limit holds while streaming (no Content-Length) is tested against the real server.
    assert ledger.tree_size() == size


def test_a_token_in_the_url_is_refused_and_never_authenticates(client: TestClient, tokens) -> None:
    token = tokens[1]["auditor"]
    for param in ("token", "access_token", "Access_Token"):
        r = client.get(f"/verify?{param}={token}")
        assert r.status_code == 400 and "Authorization" in r.json()["detail"]
        assert token not in r.text
    assert client.get(f"/verify?token={token}", headers=auth(token)).status_code == 400


def test_the_access_log_names_route_templates_never_pseudonyms_or_tokens(
    client: TestClient, tokens, caplog: pytest.LogCaptureFixture
) -> None:
    token = tokens[1]["auditor"]
    with caplog.at_level("INFO", logger="fedcrm.consent.access"):
        assert client.get(f"/subjects/{ALICE}", headers=auth(token)).status_code == 200
        assert client.get(f"/subjects/{ALICE}?token={token}").status_code == 400
        assert client.get("/report?start=2025-01-01T00:00:00Z", headers=auth(tokens[1]["coordinator"])).status_code == 403
        assert client.get("/nowhere/" + ALICE).status_code == 404
    records = [r for r in caplog.records if r.name == "fedcrm.consent.access"]
    assert [(r.method, r.route, r.status) for r in records] == [  # type: ignore[attr-defined]
        ("GET", "/subjects/{pseudonym}", 200),
        ("GET", "/subjects/{pseudonym}", 400),
        ("GET", "/report", 403),
        ("GET", "<unmatched>", 404),
    ]
    assert records[0].principal == "auditor-1"  # type: ignore[attr-defined]
    everything = " ".join(str(r.__dict__) for r in caplog.records)
    assert ALICE.split(":")[1] not in everything and token not in everything and "2025-01-01" not in everything


def test_a_token_file_made_readable_while_serving_refuses_requests_with_503(client: TestClient, tokens) -> None:
    path, issued = tokens
    path.chmod(0o644)
    r = client.get("/verify", headers=auth(issued["auditor"]))
    assert r.status_code == 503 and "token file" in r.json()["detail"] and str(path) not in r.text
    path.chmod(0o600)
    assert client.get("/heads/latest", headers=auth(issued["auditor"])).status_code == 200


def test_openapi_declares_every_error_answer_of_every_operation(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert {"400", "401", "403", "404", "413", "422"} <= set(op["responses"]), (method, path)
            assert op["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    report = spec["paths"]["/report"]["get"]["responses"]["200"]["content"]
    assert set(report) == {"application/json", "text/html"}


# --- fedcrm consent serve refuses a bad token file at start -------------------------------------


def test_serve_refuses_a_token_file_wider_than_0600_or_missing(tmp_path: Path, tokens) -> None:
    from typer.testing import CliRunner

    from fedcrm.consent.cli import app

    path = tokens[0]
    runner = CliRunner()
    base = ["serve", "--ledger", str(tmp_path / "nowhere.db")]
    for mode in (0o644, 0o640, 0o700):
        path.chmod(mode)
        result = runner.invoke(app, [*base, "--tokens", str(path)])
        assert result.exit_code == 2
        assert f"mode {mode:o}, wider than 600" in " ".join(result.output.split())
    result = runner.invoke(app, [*base, "--tokens", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "no token file" in " ".join(result.output.split())
    assert not (tmp_path / "nowhere.db").exists(), "refused before the ledger is opened"
