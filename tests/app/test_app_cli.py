"""``unimq run`` and ``unimq docs``: bad input, the AsyncAPI file, graceful shutdown, workers, reload, health."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

import unimq.sync
from unimq.cli import main

SCHEMA = json.loads(gzip.decompress((Path(__file__).parent / "asyncapi-3.0.0-schema.json.gz").read_bytes()))

GOOD = """
    from pydantic import BaseModel
    import unimq

    class Order(BaseModel):
        id: int

    app = unimq.app.App({url!r})

    @app.subscriber("orders", group="billing", schema=Order)
    async def bill(order: Order) -> None: ...
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a module into a fresh working directory; returns its importable name."""
    monkeypatch.chdir(tmp_path)

    def write(source: str) -> str:
        name = f"svc_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text("import unimq.app\n" + textwrap.dedent(source))
        return name

    return write


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("unimq: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_module_that_cannot_be_imported(project: Callable[[str], str], capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "run", "no_such_module_here:app")
    assert code == 2
    one_line_error(err, "cannot import 'no_such_module_here'")
    code, err = run_cli(capsys, "run", "missing_colon")
    assert code == 2
    one_line_error(err, "is not module:app")
    name = project("x = 1\n")
    code, err = run_cli(capsys, "docs", f"{name}:app")
    one_line_error(err, "has no attribute 'app'")
    code, err = run_cli(capsys, "run", f"{name}:x")
    one_line_error(err, "is a int, not a unimq.App")
    broken = project("def f(:\n")
    code, err = run_cli(capsys, "run", f"{broken}:app")
    assert code == 2
    one_line_error(err, "SyntaxError")


@pytest.mark.parametrize(("value", "fragment"), [("0", "--workers must be >= 1"), ("two", "whole number")])
def test_bad_worker_counts(project: Callable[[str], str], capsys: pytest.CaptureFixture[str], value: str,
                           fragment: str) -> None:
    name = project(GOOD.format(url="memory://"))
    code, err = run_cli(capsys, "run", f"{name}:app", "--workers", value)
    assert code == 2
    one_line_error(err, fragment)


def test_bad_log_level_and_port(project: Callable[[str], str], capsys: pytest.CaptureFixture[str]) -> None:
    name = project(GOOD.format(url="memory://"))
    one_line_error(run_cli(capsys, "run", f"{name}:app", "--log-level", "loud")[1], "--log-level must be one of")
    one_line_error(run_cli(capsys, "run", f"{name}:app", "--health-port", "70000")[1], "0-65535")


def test_a_log_config_file(project: Callable[[str], str], capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    from unimq.app.cli import configure_logging

    config = tmp_path / "logging.json"
    config.write_text(json.dumps({"version": 1, "incremental": True, "loggers": {"unimq.app": {"level": "ERROR"}}}))
    try:
        configure_logging("INFO", None, str(config))
        assert logging.getLogger("unimq.app").level == logging.ERROR
    finally:
        logging.getLogger("unimq.app").setLevel(logging.NOTSET)
    name = project(GOOD.format(url="memory://"))
    one_line_error(run_cli(capsys, "run", f"{name}:app", "--log-config", str(tmp_path / "nope.ini"))[1],
                   "--log-config")


def test_two_subscribers_for_the_same_destination_and_group(project: Callable[[str], str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    name = project(textwrap.dedent(GOOD.format(url="memory://")) + textwrap.dedent("""
        @app.subscriber("orders", group="billing")
        async def bill_again(body: bytes) -> None: ...
    """))
    code, err = run_cli(capsys, "run", f"{name}:app")
    assert code == 2
    one_line_error(err, "two subscribers for 'orders/billing'", "bill", "bill_again")


def test_a_handler_without_the_declared_schema_type(project: Callable[[str], str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    name = project("""
        from pydantic import BaseModel

        class Order(BaseModel):
            id: int

        app = unimq.app.App()

        @app.subscriber("orders", schema=Order)
        async def bill(order: dict) -> None: ...
    """)
    code, err = run_cli(capsys, "docs", f"{name}:app")
    assert code == 2
    one_line_error(err, "handler bill(order) is typed dict but the subscriber declares schema=Order")


def test_docs_writes_a_valid_asyncapi_file(project: Callable[[str], str], capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    name = project(GOOD.format(url="memory://"))
    out = tmp_path / "asyncapi.json"
    code, err = run_cli(capsys, "docs", f"{name}:app", "-o", str(out), "--url", "kafka://127.0.0.1:9092")
    assert code == 0, err
    doc = json.loads(out.read_text())
    jsonschema.Draft7Validator(SCHEMA).validate(doc)
    assert doc["servers"]["kafka"]["host"] == "127.0.0.1:9092"
    assert doc["operations"]["orders.receive.billing"]["bindings"]["kafka"]["groupId"]["enum"] == ["billing"]


# The runner in a real process, on a real broker (memory:// lives inside one process).

SLOW = """
    import asyncio, os
    from pathlib import Path
    from pydantic import BaseModel

    class Job(BaseModel):
        id: int

    app = unimq.app.App({url!r}, shutdown_timeout=20)
    OUT = Path({out!r})

    @app.on_startup
    def started() -> None:
        with OUT.open("a") as f:
            f.write(f"start {{os.getpid()}}\\n")

    @app.subscriber({dest!r}, group="g", schema=Job, concurrency=4, prefetch=4)
    async def work(job: Job) -> None:
        with OUT.open("a") as f:
            f.write(f"begin {{job.id}}\\n")
        await asyncio.sleep(1.0)
        with OUT.open("a") as f:
            f.write(f"end {{job.id}}\\n")
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _lines(path: Path, word: str) -> list[str]:
    return [line.split()[1] for line in path.read_text().splitlines() if line.startswith(word)] if path.exists() else []


@pytest.fixture
def redis_job(broker_url: Callable[[str], str], project: Callable[[str], str],
              tmp_path: Path) -> Iterator[tuple[str, str, Path, str]]:
    """(module name, destination, output file, url) of a slow worker app on Redis; cleaned up after."""
    url = broker_url("redis")
    dest = f"app-run-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out.txt"
    name = project(SLOW.format(url=url, out=str(out), dest=dest))
    yield name, dest, out, url
    with unimq.sync.connect(url) as broker:
        broker.delete(dest)


def _spawn(*argv: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    return subprocess.Popen([sys.executable, "-m", "unimq.cli", *argv], env=env, stderr=subprocess.PIPE)


@pytest.mark.needs_broker("redis")
def test_sigterm_lets_in_flight_messages_finish_and_loses_nothing(redis_job: tuple[str, str, Path, str]) -> None:
    name, dest, out, url = redis_job
    port = _free_port()
    proc = _spawn("run", f"{name}:app", "--health-port", str(port), "--health-host", "127.0.0.1",
                  "--log-level", "warning")
    try:
        _wait(lambda: bool(_lines(out, "start")), 20, "the app to start")
        _wait(lambda: _health_ok(port), 10, "the health endpoint")
        status, body = _health(port)
        assert status == 200 and body["subscribers"] == {f"{dest}/g": "running"}
        with unimq.sync.connect(url) as broker:
            broker.producer(dest, schema=None).send_many([json.dumps({"id": i}).encode() for i in range(6)])
            _wait(lambda: len(_lines(out, "begin")) >= 4, 20, "four handlers in flight")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
            # Every handler that began finished and was acked; the rest was never taken: nothing lost.
            begun, ended = _lines(out, "begin"), _lines(out, "end")
            assert sorted(begun) == sorted(ended)
            rest: list[str] = []
            with broker.consumer(dest, "g") as consumer:
                while len(rest) < 6 - len(ended):
                    delivery = consumer.receive(timeout=10)
                    assert delivery is not None, f"lost: only {ended} + {rest} of 6"
                    rest.append(str(json.loads(delivery.message.body)["id"]))
                    delivery.ack()
                assert consumer.receive(timeout=0.5) is None, "an acked message came back"
            assert sorted(ended + rest, key=int) == [str(i) for i in range(6)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _health_ok(port: int) -> bool:
    try:
        return _health(port)[0] == 200
    except OSError:
        return False


@pytest.mark.needs_broker("redis")
def test_workers_and_reload(redis_job: tuple[str, str, Path, str]) -> None:
    name, dest, out, url = redis_job
    port = _free_port()
    proc = _spawn("run", f"{name}:app", "--workers", "2", "--reload", "--health-port", str(port),
                  "--health-host", "127.0.0.1", "--log-level", "warning")
    try:
        _wait(lambda: len(set(_lines(out, "start"))) == 2, 30, "two workers")
        _wait(lambda: _health_ok(port), 10, "the supervisor's health endpoint")
        assert _health(port)[1] == {"status": "ok", "workers": 2, "alive": 2}
        first = set(_lines(out, "start"))
        source = Path(f"{name}.py")
        source.write_text(source.read_text() + "\n# changed\n")
        _wait(lambda: len(set(_lines(out, "start"))) == 4, 30, "the workers to restart after a change")
        assert first < set(_lines(out, "start"))
        with unimq.sync.connect(url) as broker:
            broker.send_many(dest, [json.dumps({"id": i}).encode() for i in range(4)])
            _wait(lambda: len(_lines(out, "end")) == 4, 20, "the restarted workers to process")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_the_health_endpoint_follows_the_app() -> None:
    import asyncio

    from unimq.app import App
    from unimq.app.health import serve_health

    app = App("memory://")

    @app.subscriber("orders")
    async def handle(body: bytes) -> None: ...

    server = await serve_health("127.0.0.1", 0, app.health)
    port = server.sockets[0].getsockname()[1]

    async def get(method: str = "GET") -> tuple[str, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"{method} /health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0].decode(), body

    try:
        assert (await get())[0] == "HTTP/1.1 503 Service Unavailable"
        async with app:
            status, body = await get()
            assert status == "HTTP/1.1 200 OK"
            assert json.loads(body) == {"status": "ok", "subscribers": {"orders": "running"}}
            assert (await get("POST"))[0] == "HTTP/1.1 405 Method Not Allowed"
        assert (await get())[0] == "HTTP/1.1 503 Service Unavailable"
    finally:
        server.close()
        await server.wait_closed()
