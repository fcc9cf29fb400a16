"""``unimq dlq ls|peek|redrive|purge`` and ``unimq health``: real output, and every bad input is one
line on stderr with exit 2 (health: 1 for a broker that does not answer)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import unimq
from unimq.cli import main

pytestmark = pytest.mark.timeout(60)

UNIMQ = str(Path(sys.executable).with_name("unimq"))


@pytest.fixture
def url() -> str:
    """A memory:// broker of this process: 'jobs' with three dead letters (two 'too large'), 'empty'."""
    url = f"memory://ops-cli-{uuid.uuid4().hex[:8]}"

    async def fill() -> None:
        async with unimq.connect(url) as broker:
            await broker.ensure("jobs", dead_letter=True)
            await broker.ensure("empty", dead_letter=True)
            await broker.producer("jobs").send_many(
                [unimq.Message(f"job-{i}".encode(), message_id=f"job-{i}") for i in range(3)])
            async with broker.consumer("jobs") as consumer:
                for delivery in await consumer.receive_many(3, 5):
                    reason = "timeout talking to S3" if delivery.message.body == b"job-1" else "image too large"
                    await delivery.reject(reason)

    asyncio.run(fill())
    return url


def depth(url: str, destination: str) -> int:
    async def read() -> int:
        async with unimq.connect(url) as broker:
            return (await broker.stats(destination)).depth or 0

    return asyncio.run(read())


def test_dlq_ls_and_peek(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "ls", url, "jobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "3 dead letter(s) of jobs"
    assert [line.split()[0] for line in lines[:-1]] == ["job-0", "job-1", "job-2"]
    assert "reason=timeout talking to S3" in lines[1] and "at=20" in lines[1]

    assert main(["dlq", "ls", url, "jobs", "--json", "--count", "2"]) == 0
    views = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(v["message_id"], v["reason"], v["source"]) for v in views] == [
        ("job-0", "image too large", "jobs"), ("job-1", "timeout talking to S3", "jobs")]

    assert main(["dlq", "peek", url, "jobs", "--count", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "  job-0"

    assert main(["dlq", "ls", url, "empty"]) == 0
    assert capsys.readouterr().out.strip() == "0 dead letter(s) of empty"


def test_dlq_redrive_and_purge(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "redrive", url, "jobs", "--filter-reason", "too large", "--limit", "1"]) == 0
    assert capsys.readouterr().out.strip() == "moved=1 skipped=0 failed=0 destination=jobs"
    assert depth(url, "jobs") == 1
    assert main(["dlq", "redrive", url, "jobs", "--filter-reason", "too large", "--rate", "100"]) == 0
    assert capsys.readouterr().out.strip() == "moved=1 skipped=1 failed=0 destination=jobs"
    assert depth(url, "jobs") == 2

    assert main(["dlq", "purge", url, "jobs", "--yes"]) == 0
    assert capsys.readouterr().out.strip() == "purged=1 destination=jobs dead_letter_destination=jobs.dlq"
    assert depth(url, "jobs") == 2  # the destination itself is untouched
    assert main(["dlq", "ls", url, "jobs"]) == 0
    assert capsys.readouterr().out.strip() == "0 dead letter(s) of jobs"


def test_url_from_the_environment(url: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIMQ_URL", url)
    assert main(["dlq", "ls", "jobs", "--count", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("job-0 ")


def test_health(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("healthy memory memory:// rtt_ms=") and "\n" not in line


def test_health_of_a_broker_that_does_not_answer_exits_1() -> None:
    """As a container probe runs it: a real process, one line, exit 1, the password masked."""
    done = subprocess.run([UNIMQ, "health", "amqp://guest:s3cret@127.0.0.1:1/", "--timeout", "3"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done
    [line] = done.stdout.splitlines()
    assert line.startswith("unhealthy amqp://guest:***@127.0.0.1:1/ ") and "s3cret" not in done.stdout
    assert done.stderr == ""  # the client library's own log of the failure is not a second line


BAD = [
    (["dlq"], "required: dlq_command"),
    (["dlq", "frob", "jobs"], "invalid choice: 'frob'"),
    (["dlq", "ls"], "required: destination"),
    (["dlq", "ls", "{url}", "jbos"], "no destination 'jbos'"),
    (["dlq", "ls", "{url}", "jobs", "--count", "0"], "must be at least 1"),
    (["dlq", "ls", "{url}", "jobs", "--count", "ten"], "not a whole number"),
    (["dlq", "ls", "{url}", "jobs", "--colour"], "unrecognized arguments: --colour"),
    (["dlq", "ls", "nope://x", "jobs"], "unknown URL scheme 'nope'"),
    (["dlq", "peek", "{url}", "jbos"], "no destination 'jbos'"),
    (["dlq", "peek", "{url}", "jobs", "--count", "-3"], "--count"),
    (["dlq", "peek", "{url}", "jobs", "--json"], "unrecognized arguments: --json"),
    (["dlq", "redrive", "{url}", "jbos"], "no destination 'jbos'"),
    (["dlq", "redrive", "{url}", "jobs", "--rate", "0"], "above 0"),
    (["dlq", "redrive", "{url}", "jobs", "--rate", "nan"], "above 0"),
    (["dlq", "redrive", "{url}", "jobs", "--rate", "fast"], "not a number"),
    (["dlq", "redrive", "{url}", "jobs", "--limit", "0"], "must be at least 1"),
    (["dlq", "redrive", "{url}", "jobs", "--filter-reason"], "expected one argument"),
    (["dlq", "redrive", "{url}", "jobs", "--group", ""], "must not be empty"),
    (["dlq", "ls", "{url}", "jobs", "--group", " "], "must not be empty"),
    (["dlq", "purge", "{url}", "jobs"], "add --yes"),
    (["dlq", "purge", "{url}", "jbos", "--yes"], "no destination 'jbos'"),
    (["health", "nope://x"], "unknown URL scheme 'nope'"),
    (["health", "--timeout", "0"], "more than 0 seconds"),
    (["health", "--timeout", "soon"], "not a number of seconds"),
    (["health", "memory://", "extra"], "unrecognized arguments: extra"),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a).replace("{url}", "URL") for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(url: str, argv: list[str], words: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main([a.replace("{url}", url) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("unimq: ") and words in err, err
    assert "Traceback" not in err and out == ""
    assert depth(url, "jobs") == 0  # nothing was moved or purged


def test_bad_input_in_a_real_process() -> None:
    for argv in (["dlq", "purge", "memory://", "jobs"], ["dlq", "ls", "memory://", "jobs", "--count", "x"],
                 ["health", "--timeout", "-1"]):
        done = subprocess.run([UNIMQ, *argv], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done
