"""The command line: demo, send/consume, capabilities, errors without secrets."""

import argparse
import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from unimq.cli import build_parser, main


def test_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--orders", "30"]) == 0
    out = capsys.readouterr().out
    assert "order 7 succeeded on attempt 3" in out
    assert out.count("dead-lettered") == 2


def test_capabilities_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capabilities", "memory://", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "memory"


def test_errors_are_one_line_without_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capabilities", "memory://u:hunter22@x?bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "bogus" in err and "hunter22" not in err


def test_backends_lists_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    assert "unimq.memory:MemoryDriver" in capsys.readouterr().out


# Bad input: every command, every error is one line on stderr and exit status 2 -----------------

def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command path, nested ones (``migrate dual``) included."""
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _subcommands(sub, (*prefix, name)) or [(*prefix, name)]
    return found


COMMANDS = _subcommands(build_parser())

BAD = [
    ["send", "memory://", "q", "x", "-H", "novalue"],
    ["send", "memory://", "q", "x", "-H", "noequals"],
    ["send", "memory://", "q", "x", "-H", "=value"],
    ["send", "memory://", "q", "x", "--delay", "nan"],
    ["send", "memory://", "q", "x", "--delay", "inf"],
    ["send", "memory://", "q", "x", "--delay", "-5"],
    ["send", "memory://", "q", "x", "--delay", "1e12"],
    ["send", "memory://", "q", "x", "--ttl", "0"],
    ["send", "memory://", "q", "x", "--ttl", "nan"],
    ["send", "memory://", "q", "x", "--priority", "high"],
    ["send", "memory://", "q", "x", "--priority", "-1"],
    ["send", "memory://", "q", "x", "--file", "/nonexistent/body"],
    ["send", "memory://", "q", "x", "--file", "/etc/hostname"],
    ["send", "kafka://localhost:²", "q", "x"],
    ["send", "kafka://localhost:٩٠٩٢", "q", "x"],
    ["send", "redis://localhost/²", "q", "x"],
    ["send", "memory://u:p@x?bogus=1", "q", "x"],
    ["consume", "memory://", "q", "--wait", "nan"],
    ["consume", "memory://", "q", "--wait", "-1"],
    ["consume", "memory://", "q", "--count", "0"],
    ["consume", "memory://", "q", "--count", "٣"],
    ["peek", "memory://", "q", "--count", "abc"],
    ["peek", "memory://", "no-such-destination"],
    ["stats", "memory://", "no-such-destination"],
    ["capabilities", "nope://x"],
    ["ls", "kafka://localhost:99999"],
    ["bench", "--sizes", "abc"],
    ["bench", "--sizes", "100,,5"],
    ["bench", "--repeat", "0"],
    ["bench", "--rate", "nan"],
    ["bench", "--latency-seconds", "-1"],
    ["bench", "memory://?max_message_bytes=1024", "--quick", "--sizes", "4096"],
    ["demo", "--orders", "5"],
    ["demo", "--orders", "0"],
    ["demo", "--orders", "many"],
    ["mcp", "--max-wait", "nan"],
    ["mcp", "--max-count", "0"],
    ["mcp", "--port", "70000"],
    ["migrate", "dual", "memory://a", "memory://b", "q", "--policy", "primary"],
    ["migrate", "dual", "memory://a", "memory://a", "q"],
    ["migrate", "mirror", "memory://a", "q", "memory://a", "q"],
    ["migrate", "mirror", "memory://a", "q", "memory://b", "q", "--batch", "0"],
    ["migrate", "replay", "memory://a", "q", "--journal", "/nonexistent/typo-journal"],
    ["migrate", "drain", "memory://a", "q", "--idle", "nan"],
    ["migrate", "verify", "memory://a", "q", "memory://b", "q", "--tolerance", "-1"],
    [],
    ["no-such-command"],
]


def _assert_one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unimq: "), err


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) or "(none)" for a in BAD])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(argv)
    _assert_one_line_error(code, capsys.readouterr().err)


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_refuses_an_unknown_flag_in_one_line(command: tuple[str, ...],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*command, "--no-such-flag"])
    _assert_one_line_error(code, capsys.readouterr().err)


def _parser_of(command: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


URL_COMMANDS = [c for c in COMMANDS
                if any(not a.option_strings and "url" in a.dest for a in _parser_of(c)._actions)]


def test_the_url_commands_are_found() -> None:
    assert {("send",), ("consume",), ("peek",), ("migrate", "mirror")} <= set(URL_COMMANDS)


@pytest.mark.parametrize("command", URL_COMMANDS, ids=" ".join)
def test_every_url_position_refuses_a_unicode_digit_port(command: tuple[str, ...],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Every URL argument of the command gets ``kafka://localhost:²``; the other positionals a name."""
    parser = _parser_of(command)
    argv = list(command)
    for action in parser._actions:
        if not action.option_strings and action.dest != "help":
            argv.append("kafka://localhost:²" if "url" in action.dest else "q")
    if "--journal" in parser._option_string_actions and command[-1] == "replay":
        argv += ["--journal", "/nonexistent"]
    code = main(argv)
    err = capsys.readouterr().err
    _assert_one_line_error(code, err)


def test_secret_in_a_bad_url_is_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    key = "Abc/De+fGhIjKlMnOp=="
    conn = quote(f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={key}", safe="")
    for url in (f"servicebus://ns:99999?connection_string={conn}", f"amqp://user:{key}@host:5672/",
                f"nats://{key.replace('/', '')}@host:99999", f"kafka://h?sasl_password={key}&x y=1"):
        code = main(["send", url, "q", "x"])
        err = capsys.readouterr().err
        _assert_one_line_error(code, err)
        for part in (key, quote(key, safe=""), key.replace("/", "")):
            assert part not in err, err


def test_send_options_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(b"\xff\x00binary")
    url = f"memory://cli-{uuid.uuid4().hex[:6]}"
    assert main(["send", url, "q", "--file", str(body), "--ttl", "60", "--priority", "3", "--reply-to", "r",
                 "-H", "a=b=c"]) == 0
    capsys.readouterr()
    # memory:// lives in this process only: read it back through the same URL.
    assert main(["consume", url, "q", "--json", "--wait", "0.5"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    view = json.loads(line)
    assert view["body_encoding"] == "base64" and base64.b64decode(view["body"]) == b"\xff\x00binary"
    assert view["reply_to"] == "r" and view["priority"] == 3 and view["headers"] == {"a": "b=c"}
    assert view["attempt"] == 1 and view["body_bytes"] == 8


def test_non_utf8_body_on_argv_is_sent_as_given() -> None:
    """argv bytes that are not UTF-8 arrive as given (os.fsencode), not as a UnicodeEncodeError."""
    script = ("import asyncio, sys, unimq\n"
              "from unimq.cli import main\n"
              "assert main(['send', 'memory://argv', 'q', sys.argv[1]]) == 0\n"
              "async def read():\n"
              "    async with unimq.connect('memory://argv') as b, b.consumer('q') as c:\n"
              "        d = await c.receive(timeout=2)\n"
              "        sys.stdout.write(d.message.body.hex())\n"
              "asyncio.run(read())\n")
    run = subprocess.run([sys.executable, "-c", script, b"\xff\xfeok"], capture_output=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert run.stdout.decode().endswith(b"\xff\xfeok".hex())


def test_no_traceback_from_a_subprocess() -> None:
    run = subprocess.run([sys.executable, "-m", "unimq.cli", "send", "memory://", "q", "-H", "novalue"],
                         capture_output=True, text=True, timeout=60, check=False)
    _assert_one_line_error(run.returncode, run.stderr)
