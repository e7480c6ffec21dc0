"""Hostile data in what fleetwarden writes (issue 8, defects 6 and 12a): CSV cells that a spreadsheet would run as
formulas, secrets in encoded forms, markup in the HTML report."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import re
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from markupsafe import escape

from fleetwarden.model import FindingStatus, Severity
from fleetwarden.output import csv_bytes, csv_cell, findings_csv, write_outputs
from fleetwarden.report import render_html
from fleetwarden.secrets import REDACTED, RedactingFilter, SecretResolver, encoded_forms
from fleetwarden.workflows.compliance import compliance_csv
from sample_reports import make_report, sample_finding

SRC = Path(__file__).resolve().parents[2] / "src" / "fleetwarden"
# What a spreadsheet reads as the start of a formula (OWASP), with the full-width forms.
TRIGGERS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
HOSTILE = [
    '=HYPERLINK("http://x","y")',
    "@SUM(A1)",
    "+1",
    "-2+3",
    "\t=1",
    "\r=1",
    " =1+1",
    "\n@x",
    "\uff1dSUM(A1)",  # full-width =
    "\uff0b1",
    "\uff0d1",
    "\uff20SUM(A1)",
    "\u00a0=1",  # a no-break space before it
]


def formula_cells(data: bytes) -> list[str]:
    """Every cell of a CSV file that a spreadsheet would evaluate: its first non-blank character is a trigger."""
    rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    return [cell for row in rows for cell in row if cell[:1] in TRIGGERS or cell.lstrip()[:1] in TRIGGERS]


# -- CSV --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", HOSTILE)
def test_a_formula_cell_gets_a_leading_quote_and_keeps_its_text(value: str) -> None:
    assert csv_cell(value) == "'" + value


@pytest.mark.parametrize(
    "value", ["web-01", "i-0abc", "2026-03-04T10:30:00+00:00", '{"missing": ["x"]}', "", "a=b", "'"]
)
def test_ordinary_text_is_untouched(value: str) -> None:
    assert csv_cell(value) == value


def test_real_numbers_stay_numbers_but_text_that_looks_like_one_does_not() -> None:
    assert csv_cell(-3) == -3 and csv_cell(-2.5) == -2.5 and csv_cell(0) == 0
    assert csv_cell("-3") == "'-3"  # text: it could as well be "-3+HYPERLINK(...)" cut short
    assert csv_cell(None) == "" and csv_cell(True) == "True"
    data = csv_bytes(["n", "s"], [[-3, "-3"]])
    assert data == b"n,s\r\n-3,'-3\r\n"


def test_findings_csv_neutralises_every_hostile_field() -> None:
    findings = [
        sample_finding("123456789012", "us-east-1", value, FindingStatus.NEW, Severity.HIGH).model_copy(
            update={"title": value, "control": value}
        )
        for value in HOSTILE
    ]
    data = findings_csv(findings)

    assert formula_cells(data) == []
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert sorted(r["title"] for r in rows) == sorted("'" + v for v in HOSTILE)
    assert sorted(r["resource_id"] for r in rows) == sorted("'" + v for v in HOSTILE)


def test_compliance_csv_neutralises_item_ids_and_titles() -> None:
    findings = []
    for value in HOSTILE:
        finding = sample_finding("123456789012", "us-east-1", "i-0abc", FindingStatus.NEW)
        findings.append(
            finding.model_copy(
                update={
                    "control": f"Custom:InSpec:{value}",
                    "details": {"item_id": value, "title": value, "compliance_type": "Custom:InSpec"},
                }
            )
        )
    data = compliance_csv(findings)

    assert formula_cells(data) == []
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert sorted(r["item_id"] for r in rows) == sorted("'" + v for v in HOSTILE)
    assert sorted(r["title"] for r in rows) == sorted("'" + v for v in HOSTILE)
    assert data.startswith(b"account_id,region,") and data.endswith(b"\r\n")  # a header; CRLF line ends


def test_findings_csv_in_the_output_dir_has_no_formula_cell(tmp_path: Path) -> None:
    report = make_report()
    report.findings[0] = report.findings[0].model_copy(update={"title": '=HYPERLINK("http://x","y")'})
    write_outputs(report, tmp_path)

    data = (tmp_path / "findings.csv").read_bytes()
    assert formula_cells(data) == []
    assert b'\'=HYPERLINK(""http://x"",""y"")' in data


def test_every_csv_in_the_package_is_written_through_the_safe_writer() -> None:
    """A new CSV cannot forget the neutralisation: only output.py may call the csv module's writers."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "output.py" and path.parent == SRC:
            continue
        text = path.read_text("utf-8")
        if re.search(r"csv\.(writer|DictWriter)\b|from csv import", text):
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


# -- secrets ----------------------------------------------------------------------------------------------
PASSWORD = 'Sm?p/Pa55+wd "q" &z~~!'


def _resolver(monkeypatch: pytest.MonkeyPatch, value: str = PASSWORD) -> SecretResolver:
    monkeypatch.setenv("FW_HOSTILE_SECRET", value)
    resolver = SecretResolver(None)
    assert resolver.resolve("env:FW_HOSTILE_SECRET") == value
    return resolver


def _forms(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "raw": value,
        "b64": base64.b64encode(raw).decode(),
        "b64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "b64 url": base64.urlsafe_b64encode(raw).decode(),
        "b64 url unpadded": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "quote": quote(value, safe=""),
        "quote /": quote(value),
        "quote_plus": quote_plus(value),
        "json": json.dumps(value)[1:-1],
        "html": html.escape(value),
        "html (jinja)": str(escape(value)),
    }


def test_the_test_password_has_distinct_encoded_forms() -> None:
    forms = _forms(PASSWORD)
    assert len(set(forms.values())) == len(forms), forms  # else the test below would prove less than it says


@pytest.mark.parametrize("form", list(_forms(PASSWORD)))
def test_every_encoded_form_is_redacted(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = _resolver(monkeypatch)
    value = _forms(PASSWORD)[form]

    assert resolver.redact(f"535 5.7.8 rejected [{value}] try again") == f"535 5.7.8 rejected [{REDACTED}] try again"


@pytest.mark.parametrize("user", ["u", "fleet-user", "someone.else@example.com"])
def test_the_password_inside_an_auth_plain_blob_is_redacted_whatever_the_user(
    user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = _resolver(monkeypatch)  # the resolver knows the password, not the user
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        redacted = resolver.redact(f"535 {blob}")
        assert REDACTED in redacted
        # What is left of the blob decodes to no more than the user name and a few bits of the password's edges.
        rest = redacted.removeprefix("535 ").replace(REDACTED, "")
        assert len(rest) <= len(encode(f"\0{user}\0".encode())) + 3


def test_a_registered_login_is_redacted_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = _resolver(monkeypatch)
    resolver.protect_login("fleet-user", PASSWORD)
    plain = base64.b64encode(f"\0fleet-user\0{PASSWORD}".encode()).decode()
    login_user = base64.b64encode(b"fleet-user").decode()
    basic = base64.b64encode(f"fleet-user:{PASSWORD}".encode()).decode()

    text = f"AUTH PLAIN {plain} / LOGIN {login_user} / Basic {basic} / as fleet-user"
    assert resolver.redact(text) == f"AUTH PLAIN {REDACTED} / LOGIN {REDACTED} / Basic {REDACTED} / as fleet-user"


def test_redacting_json_keeps_it_json(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = _resolver(monkeypatch)
    document = json.dumps({"error": f"refused {PASSWORD} and {base64.b64encode(PASSWORD.encode()).decode()}"})

    assert json.loads(resolver.redact(document)) == {"error": f"refused {REDACTED} and {REDACTED}"}


def test_a_short_secret_is_redacted_only_where_it_stands_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = _resolver(monkeypatch, "abc")
    text = "abcdef, cabcd and x-abc-y; token=abc; YWJj"
    assert resolver.redact(text) == f"abcdef, cabcd and x-{REDACTED}-y; token={REDACTED}; {REDACTED}"
    # Other long secrets are still redacted anywhere.
    long = _resolver(monkeypatch, "longer-secret-value")
    assert long.redact("xlonger-secret-valuex") == f"x{REDACTED}x"


def test_a_short_punctuation_secret_leaves_json_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = _resolver(monkeypatch, '"')
    document = json.dumps({"a": "b"})
    assert resolver.redact(document) == document


def test_nothing_resolved_redacts_nothing() -> None:
    resolver = SecretResolver(None)
    assert not resolver.active
    assert resolver.redact("plain text = 1 ***") == "plain text = 1 ***"


def test_encoded_forms_lists_what_the_docs_promise() -> None:
    forms = encoded_forms(PASSWORD)
    assert set(_forms(PASSWORD).values()) <= forms


def test_the_log_filter_redacts_messages_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = _resolver(monkeypatch)
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(resolver))
    log = logging.getLogger("fleetwarden.test.hostile")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("relay said %s", encoded)
        try:
            raise RuntimeError(f"server echoed {encoded}")
        except RuntimeError:
            log.exception("sending failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    output = stream.getvalue()
    assert f"relay said {REDACTED}" in output and f"RuntimeError: server echoed {REDACTED}" in output
    assert encoded not in output and PASSWORD not in output


def test_write_outputs_redacts_every_file_when_given_the_resolver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = _resolver(monkeypatch)
    report = make_report()
    # A value that reached the report unredacted (e.g. a target error no sink redacted), raw and base64.
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    report.findings[0] = report.findings[0].model_copy(update={"title": f"echo {PASSWORD} {encoded}"})
    report.deliveries[0] = report.deliveries[0].model_copy(update={"error": f"refused {encoded}"})

    paths = write_outputs(report, tmp_path, redact=resolver.redact)

    assert len(paths) == 4
    for path in paths:
        data = path.read_text("utf-8")
        leaked = [name for name, form in _forms(PASSWORD).items() if form in data]
        assert leaked == [], f"{path.name}: {leaked}"
    assert json.loads((tmp_path / "run.json").read_text("utf-8"))["deliveries"][0]["error"] == f"refused {REDACTED}"


# -- HTML -------------------------------------------------------------------------------------------------
def test_the_html_report_escapes_markup_from_findings_and_errors() -> None:
    report = make_report()
    payload = '<img src=x onerror="alert(1)">'
    report.findings[0] = report.findings[0].model_copy(update={"title": payload, "resource_id": payload})
    report.deliveries[0] = report.deliveries[0].model_copy(update={"error": payload})

    page = render_html(report)

    assert payload not in page and "<img" not in page
    assert str(escape(payload)) in page
