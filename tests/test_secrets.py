"""Secrets stay out of traces: environment values are never span attributes, secret
looking arguments are redacted in ``process.command_args``, baggage is not copied into
attributes. Checked on the raw bytes of the real trace file, so a secret anywhere
(attribute, event, resource) fails the test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from aiorunner import ScriptRunner
from aiorunner._redact import REDACTED, is_secret_env_name, redact_args, secret_values
from conftest import attr_value

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


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("PWD", False),  # the shell's working directory (issue 16 item 2)
        ("OLDPWD", False),
        ("DB_PWD", True),
        ("DB_PASSWORD", True),
        ("MYSQLPASSWORD", True),
        ("GITHUB_TOKEN", True),
        ("AWS_ACCESS_KEY_ID", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("OTEL_EXPORTER_OTLP_HEADERS", True),
        ("DATABASE_URL", True),
        ("APP_DATABASE_URL", True),
        ("SENTRY_DSN", True),
        ("SMTP_PASS", True),
        ("BASIC_AUTH", True),
        ("TOKENIZERS_PARALLELISM", False),
        ("SSH_AUTH_SOCK", False),
        ("SSH_ASKPASS", False),
        ("GIT_AUTHOR_NAME", False),
        ("XDG_SESSION_ID", False),
        ("KEYBOARD_LAYOUT", False),
        ("HOME", False),
    ],
)
def test_environment_secrets_are_known_by_name(name, secret):
    """A variable's value is a secret when a word of its name says so (PASSWORD, TOKEN,
    SECRET, KEY, PWD, HEADERS, DSN, ...), or it is DATABASE_URL; the shell's PWD and
    OLDPWD are directories, and a word merely containing TOKEN or AUTH is not one."""
    assert is_secret_env_name(name) is secret
    assert ("value-1234" in secret_values([], {name: "value-1234"})) is secret


async def test_tracebacks_keep_the_working_directory(tmp_path, monkeypatch, spans_of):
    """With the shell's PWD and OLDPWD set (every interactive shell sets them), the
    script's path in its traceback stays readable on the trace and in RunResult.error:
    it used to read File "[secure]/fail.py" everywhere."""
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("OLDPWD", str(tmp_path))
    script = tmp_path / "fail.py"
    script.write_text("raise RuntimeError('boom')\n")
    result = await ScriptRunner(str(script)).run()
    assert not result.success
    assert f'File "{script}"' in (result.error or "")
    execute = next(s for s in spans_of(result.trace_id) if s["name"] == "execute_script")
    (event,) = [e for e in execute["events"] if e["name"] == "exception"]
    attrs = {a["key"]: attr_value(a["value"]) for a in event["attributes"]}
    assert f'File "{script}"' in attrs["exception.stacktrace"]
    assert REDACTED not in attrs["exception.stacktrace"]


#: Echoed by SHOUT: short secret argument values, long ones, and environment secrets.
SHOUT = (
    "import os, sys\n"
    "print('kept: zq7x qzq', file=sys.stderr)\n"
    "raise SystemExit('bad args ' + ' '.join(sys.argv[1:]) + ' key '"
    " + os.environ['AWS_SECRET_ACCESS_KEY'] + ' id ' + os.environ['AWS_ACCESS_KEY_ID'])\n"
)
SHOUT_ARGS = ["token=zq7", "--password", "qz", "password=hunter2", "--api-key", "sk-live-123"]
SHOUT_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}
SHOUT_SECRETS = ("zq7", " qz", "hunter2", "sk-live-123", *SHOUT_ENV.values())


def _leaks(text: str) -> list[str]:
    """The secrets of SHOUT found in ``text`` (a short one only as a whole word)."""
    found = [s for s in SHOUT_SECRETS if s.strip() not in ("zq7", "qz") and s in text]
    found += [s for s in ("zq7", "qz") if re.search(rf"(?<!\w){s}(?!\w)", text)]
    return found


async def test_short_secret_argument_values_are_scrubbed(make_script, traces_file, spans_of):
    """`token=zq7` and `--password qz` are secrets whatever their length: scrubbed from
    RunResult.error, the statuses, the exception and stderr events (only values of 4
    characters or more were), where they stand as words; `zq7x` (a longer word) stays."""
    script = make_script(SHOUT)
    result = await ScriptRunner(script, SHOUT_ARGS, env=SHOUT_ENV).run()
    assert not result.success
    assert "bad args" in (result.error or "")
    assert _leaks(result.error or "") == []
    raw = traces_file.read_text()
    assert _leaks(raw) == []
    assert "kept: zq7x" in raw  # the stderr event: a word that only contains one stays
    spans = {s["name"]: s for s in spans_of(result.trace_id)}
    assert f"token={REDACTED}" in spans["execute_script"]["status"]["message"]
    assert _leaks(spans["ScriptRunner"]["status"]["message"]) == []


def test_the_cli_prints_what_it_exports_scrubbed(make_script, tmp_path):
    """`aiorunner run -q` printed the script's error with hunter2, sk-live-123 and an
    AWS key in it; now every line the CLI prints is scrubbed like the trace: the error
    and summary of one run, its --json (error and command), the many-scripts summary
    of a jobs file, and `traces show -v` of the run."""
    script = make_script(SHOUT)
    env = {**os.environ, **SHOUT_ENV}

    def aiorunner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aiorunner", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    one = aiorunner("run", "-q", str(script), *SHOUT_ARGS)
    assert one.returncode == 1, one.stderr
    assert "bad args" in one.stderr and REDACTED in one.stderr
    assert _leaks(one.stdout + one.stderr) == []
    as_json = aiorunner("run", "-q", "--json", str(script), *SHOUT_ARGS)
    data = json.loads(as_json.stdout)
    assert "bad args" in data["error"]
    assert _leaks(data["error"]) == [] and _leaks(" ".join(data["command"])) == []
    assert data["command"][-2:] == ["--api-key", REDACTED]
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f"[[jobs]]\nscript = {str(script)!r}\nargs = {SHOUT_ARGS!r}\n")
    many = aiorunner("run", "-q", "--jobs-file", str(jobs))
    assert many.returncode == 1, many.stderr
    assert "bad args" in many.stdout + many.stderr
    assert _leaks(many.stdout + many.stderr) == []
    trace_id = one.stderr.strip().rsplit("trace ", 1)[1].split()[0]
    show = aiorunner("traces", "show", "-v", "--width", "200", trace_id)
    assert show.returncode == 0, show.stderr
    assert "bad args" in show.stdout
    assert _leaks(show.stdout) == []
