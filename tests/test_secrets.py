"""Secrets stay out of traces: environment values are never span attributes, secret
looking arguments are redacted in ``process.command_args``, baggage is not copied into
attributes. Checked on the raw bytes of the real trace file, so a secret anywhere
(attribute, event, resource) fails the test."""

from __future__ import annotations

import pytest

from aiorunner import ScriptRunner
from aiorunner._redact import REDACTED, redact_args

SECRETS = ("hunter2-pw", "tok-123abc", "k3y-456", "urlpw-789", "qtok-000", "bearer-abc")


async def test_env_values_never_reach_the_trace(make_script, traces_file, spans_of, monkeypatch):
    """Variables given with env= or inherited are passed to the script, but only the
    names of the overridden ones are recorded; no value appears anywhere in the file,
    not even from the script's own spans."""
    monkeypatch.setenv("INHERITED_SECRET", "tok-123abc")
    script = make_script(
        "import os\n"
        "from opentelemetry import trace\n"
        "with trace.get_tracer('s').start_as_current_span('work'): pass\n"
        "print(os.environ['DB_PASSWORD'], os.environ['INHERITED_SECRET'])\n"
    )
    result = await ScriptRunner(script, env={"DB_PASSWORD": "hunter2-pw"}).run()
    assert result.success, result.error
    assert result.stdout.split() == ["hunter2-pw", "tok-123abc"]
    raw = traces_file.read_text()
    assert "hunter2-pw" not in raw and "tok-123abc" not in raw
    spans = {s["name"]: s for s in spans_of(result.trace_id)}
    assert spans["setup_environment"]["attrs"]["aiorunner.env.overridden"] == ["DB_PASSWORD"]
    assert "work" in spans


async def test_secret_arguments_are_redacted_end_to_end(make_script, traces_file, spans_of):
    """Secret-looking argument values become [REDACTED] in process.command_args while
    the script still receives them; the rest of the command line is kept."""
    args = [
        "--password",
        "hunter2-pw",
        "--token=tok-123abc",
        "api_key=k3y-456",
        "https://etl:urlpw-789@db.example.com/x?access_token=qtok-000&page=2",
        "Authorization: Bearer bearer-abc",
        "--day",
        "2024-10-23",
    ]
    script = make_script("import sys; print(len(sys.argv[1:]), sys.argv[2])")
    result = await ScriptRunner(script, args).run()
    assert result.stdout.split() == ["8", "hunter2-pw"]
    raw = traces_file.read_text()
    for secret in SECRETS:
        assert secret not in raw, secret
    execute = next(s for s in spans_of(result.trace_id) if s["name"] == "execute_script")
    assert execute["attrs"]["process.command_args"][2:] == [
        "--password",
        REDACTED,
        f"--token={REDACTED}",
        f"api_key={REDACTED}",
        f"https://etl:{REDACTED}@db.example.com/x?access_token={REDACTED}&page=2",
        f"Authorization: Bearer {REDACTED}",
        "--day",
        "2024-10-23",
    ]


async def test_baggage_is_propagated_not_recorded(make_script, traces_file):
    """Baggage reaches the child (BAGGAGE) but is never copied into span attributes."""
    script = make_script(
        "import os\n"
        "from opentelemetry import baggage, trace\n"
        "with trace.get_tracer('s').start_as_current_span('work'):\n"
        "    print(baggage.get_baggage('session.token'))\n"
    )
    carrier = {"baggage": "session.token=bagsecret-1,user=alice"}
    result = await ScriptRunner(script, carrier=carrier).run()
    assert result.success, result.error
    assert result.stdout.strip() == "bagsecret-1"  # the script's OTel API sees it
    raw = traces_file.read_text()
    assert "bagsecret-1" not in raw
    assert "alice" not in raw


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--password", "x"], ["--password", REDACTED]),
        (["--db-password=x"], [f"--db-password={REDACTED}"]),
        (["--api-key", "x", "--apikey=y"], ["--api-key", REDACTED, f"--apikey={REDACTED}"]),
        (
            ["SECRET_KEY=x", "client_secret=y"],
            [f"SECRET_KEY={REDACTED}", f"client_secret={REDACTED}"],
        ),
        (["--auth", "x"], ["--auth", REDACTED]),
        (["-p", "8080"], ["-p", "8080"]),
        (["--passphrase", "words"], ["--passphrase", REDACTED]),
        (["postgres://u:p@h/db"], [f"postgres://u:{REDACTED}@h/db"]),
        (["https://h/a?x=1&token=t"], [f"https://h/a?x=1&token={REDACTED}"]),
        (["--day", "2024-10-23", "file.csv"], ["--day", "2024-10-23", "file.csv"]),
        (["https://example.com/path"], ["https://example.com/path"]),
        (["--password"], ["--password"]),
    ],
)
def test_redact_args(args, expected):
    """The redaction rules, one case each (a flag with no value is left as is)."""
    assert redact_args(args) == expected
