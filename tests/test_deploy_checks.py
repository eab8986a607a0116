"""cxrflow.deploy_checks: cron validation and secret redaction (pure functions, no clients)."""

from __future__ import annotations

import pytest

from cxrflow.deploy import DeployError, kfp_cron, redact, validate_cron

SECRET = "s3cr3t-Tok3n-value"


# --- cron ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 3 * * *", "0 3 * * *"),
        ("  */15   0-6,22,23 1-31/2 1,6,12 0-6 ", "*/15 0-6,22,23 1-31/2 1,6,12 0-6"),
        ("59 23 31 12 6", "59 23 31 12 6"),
        ("0 3 * * MON", "0 3 * * MON"),  # names: the hand-written check refused these
        ("0 0 1 JAN *", "0 0 1 JAN *"),
        ("30 6 * jan-mar mon-fri", "30 6 * jan-mar mon-fri"),
        ("0 12 * * SUN,SAT", "0 12 * * SUN,SAT"),
    ],
)
def test_validate_cron_accepts_and_normalises(cron, expected):
    assert validate_cron(cron) == expected
    assert kfp_cron(cron) == "0 " + expected


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("", "got nothing"),
        ("0 3 * *", "expected 5 fields"),
        ("0 0 3 * * *", "expected 5 fields"),
        ("60 * * * *", "out of range"),
        ("0 24 * * *", "out of range"),
        ("0 0 0 * *", "out of range"),
        ("0 0 * 13 *", "out of range"),
        ("0 0 * * FOO", "not acceptable"),
        ("0 0 1 JANUARY *", "not acceptable"),
        ("0 0 ? * 1", "may hold only numbers"),
        ("0 0 L * *", "may hold only numbers"),
        ("0 0 * * 5#2", "may hold only numbers"),
        ("0 0 15W * *", "may hold only numbers"),
        ("@daily", "expected 5 fields"),
        ("*/0 * * * *", "step '0'"),
        ("5-1 * * * *", "reversed range"),
        ("1,,2 * * * *", "not acceptable"),
        ("1-2-3 * * * *", "not acceptable"),
        ("*/ * * * *", "not acceptable"),
    ],
)
def test_validate_cron_rejects_bad_strings(cron, why):
    with pytest.raises(DeployError, match="cron") as info:
        validate_cron(cron)
    assert why in str(info.value)
    assert isinstance(info.value, ValueError)


def test_vertex_cron_time_zone_prefix():
    assert validate_cron("TZ=America/New_York 0 9 * * 1", allow_timezone=True) == "TZ=America/New_York 0 9 * * 1"
    with pytest.raises(DeployError, match="unknown time zone"):
        validate_cron("TZ=Mars/Olympus 0 9 * * 1", allow_timezone=True)


# --- redaction -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"https://user:{SECRET}@kfp.example.com/pipeline", "https://user:***@kfp.example.com/pipeline"),
        (f"git clone https://{SECRET}@github.com/x/y", "https://***@github.com/x/y"),
        (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
        (f"{{'authorization': 'Basic {SECRET}'}}", "'authorization': 'Basic ***'"),
        (f"got bearer {SECRET} back", "bearer ***"),
        (f"/runs?access_token={SECRET}&page=2", "access_token=***&page=2"),
        (f'{{"refresh_token": "{SECRET}", "x": 1}}', '"refresh_token": "***"'),
        (f"client_secret={SECRET} existing_token={SECRET}", "client_secret=*** existing_token=***"),
        (f"password: {SECRET}", "password: ***"),
        (f"PASSWD={SECRET}", "PASSWD=***"),
        (f"api-key={SECRET}", "api-key=***"),
        (f"Cookie: session={SECRET}; other=1", "Cookie: ***"),
        (f"token ya29.{SECRET} expired", "ya29.***"),
        ("ghp_" + "a" * 36, "***"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijk", "***"),
    ],
)
def test_redact_removes_secrets(text, kept):
    out = redact(text)
    assert SECRET not in out and "a" * 36 not in out and "eyJzdWIi" not in out
    assert kept in out


def test_redact_keeps_ordinary_text():
    text = "could not reach http://localhost:8080: ConnectionRefusedError: [Errno 111] Connection refused"
    assert redact(text) == text
    assert redact("HTTPSConnectionPool(host='kfp', port=443): Max retries exceeded") == (
        "HTTPSConnectionPool(host='kfp', port=443): Max retries exceeded"
    )
