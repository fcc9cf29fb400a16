"""The command line: demo, send/consume, capabilities, errors without secrets."""

import json

import pytest

from unimq.cli import main


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
