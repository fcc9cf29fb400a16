"""Every ```python block in README.md and docs/ runs as a program, so a doc example that hangs or
fails is a failing test. The block rules (markers, wrapping of fragments) are in
docs/conformance.md, "Code samples in the docs"; blocks are collected afresh on every run.

Each block runs in its own subprocess (``sys.executable``, cwd a temporary directory) with a hard
timeout. The generated program keeps the doc's line numbers, so a traceback's line is the doc's.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

import unimq
from unimq.errors import UnimqError
from unimq.testing.brokers import TARGETS

ROOT = Path(__file__).resolve().parents[2]
MEMORY_TIMEOUT = 30.0  #: seconds one block may take on memory://
BROKER_TIMEOUT = 90.0  #: on a real broker (Kafka group joins, Service Bus locks)
#: The targets the README's headline example must run on.
HEADLINE_TARGETS = ("rabbitmq", "kafka", "redis", "nats", "sqs", "servicebus")

#: URL schemes per backend: a literal URL of one of these in a ``# needs:`` block is swapped for
#: the test broker's URL; in a block without ``# needs:`` it is an error (it would leave memory://).
SCHEMES: dict[str, tuple[str, ...]] = {
    "rabbitmq": ("amqp", "amqps", "rabbitmq"),
    "kafka": ("kafka",),
    "redis": ("redis", "rediss"),
    "redis-cluster": ("redis+cluster", "rediss+cluster"),
    "nats": ("nats", "tls"),
    "sqs": ("sqs",),
    "servicebus": ("servicebus",),
}
BROKER_SCHEMES = tuple(s for schemes in SCHEMES.values() for s in schemes)
BACKEND_OF = {t.name: t.backend for t in TARGETS}
#: Services a ``# needs:`` block may name besides conformance targets (``scripts/brokers up NAME``
#: starts them): name → (the variable that overrides its URL, its URL). UNIMQ_URL stays memory://.
SERVICES = {"postgres": ("UNIMQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5433/postgres")}

#: A fence line (CommonMark: a backtick fence's info string has no backtick).
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?:(?P<ticks>`{3,})(?=[^`]*$)|(?P<tildes>~{3,}))[ \t]*(?P<info>\S*)")
MARKER = re.compile(r"^#\s*(?P<name>needs|not-run|continues)\b\s*:?\s*(?P<arg>.*?)\s*$")
#: A fragment (top-level await) becomes the body of ``main``, with ``broker`` connected to $UNIMQ_URL.
WRAP_HEAD = ("import asyncio, unimq; from datetime import timedelta",
             "async def main(broker: unimq.Broker) -> None:")
WRAP_TAIL = ("", "", "async def with_broker() -> None:",
             "    async with unimq.connect() as broker:",
             "        await main(broker)", "", "", "asyncio.run(with_broker())")
WRAP_INDENT = " " * 4


@dataclass(frozen=True)
class Block:
    """One fenced ```python block: where it is, its code, and its leading markers."""

    path: str  #: relative to the repository root
    line: int  #: the line of the opening fence (1-based)
    code: str
    needs: str | None
    not_run: str | None
    continues: bool
    previous: Block | None  #: the block before it in the same file

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    def chain(self) -> list[Block]:
        """This block and, while ``# continues`` says so, the ones before it (first first)."""
        blocks = [self]
        while blocks[0].continues:
            before = blocks[0].previous
            if before is None:
                raise AssertionError(f"{blocks[0].id}: '# continues' but no earlier python block in the file")
            blocks.insert(0, before)
        return blocks


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse_blocks(path: Path, root: Path = ROOT) -> Iterator[Block]:
    """The ```python blocks of one Markdown file, skipping blocks nested in other fences."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    previous: Block | None = None
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["ticks"] or opening["tildes"], opening["info"].lower()
        end = i + 1
        while end < len(lines):
            closing = FENCE.match(lines[end])
            if closing and (closing["ticks"] or closing["tildes"]).startswith(fence) and not closing["info"]:
                break
            end += 1
        if info == "python":
            body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
            block = _block(rel, i + 1, "\n".join(body) + "\n", previous)
            previous = block
            yield block
        i = end + 1


def _block(path: str, line: int, code: str, previous: Block | None) -> Block:
    needs = not_run = None
    continues = False
    for text in code.splitlines():
        if not text.strip().startswith("#"):
            break
        marker = MARKER.match(text.strip())
        if marker is None:
            continue
        if marker["name"] == "needs":
            needs = marker["arg"]
        elif marker["name"] == "not-run":
            not_run = marker["arg"]
        else:
            continues = True
    return Block(path, line, code, needs, not_run, continues, previous)


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in parse_blocks(path)]


def has_top_level_await(code: str, name: str) -> bool:
    """True for a fragment (top-level ``await``/``async with``/``async for``); SyntaxError if invalid."""
    compiled = compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    return bool(compiled.co_flags & inspect.CO_COROUTINE)


def program(block: Block) -> str:
    """The program a block runs as: its chain at the doc's line numbers, wrapped if a fragment."""
    chain = block.chain()
    joined = "".join(b.code for b in chain)
    wrap = has_top_level_await(joined, block.id)
    out: list[str] = list(WRAP_HEAD) if wrap else []
    for part in chain:
        first = part.line  # its code starts on the line after the fence
        out.extend([""] * max(0, first - len(out)))
        out.extend(textwrap.indent(part.code, WRAP_INDENT, lambda _: True).splitlines() if wrap
                   else part.code.splitlines())
    if wrap:
        out.extend(WRAP_TAIL)
    return "\n".join(out) + "\n"


def swap_urls(code: str, backend: str, url: str) -> str:
    """Replace every quoted URL of ``backend``'s schemes by ``url``, keeping query options ``url`` lacks."""
    schemes = "|".join(SCHEMES[backend])
    pattern = re.compile(rf"""(?P<q>["'])(?P<url>(?:{schemes})://[^"'\s]*)(?P=q)""")

    def replace(match: re.Match[str]) -> str:
        return f"{match['q']}{merge_query(url, match['url'])}{match['q']}"

    return pattern.sub(replace, code)


def merge_query(base: str, doc: str) -> str:
    """``base`` plus the query options of ``doc`` that ``base`` does not set (``prefix=app:``)."""
    head, _, query = base.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    for key, value in parse_qsl(urlsplit(doc).query, keep_blank_values=True):
        options.setdefault(key, value)
    return f"{head}?{urlencode(options, safe=':/')}" if options else head


def foreign_urls(code: str) -> list[str]:
    """Real-broker URLs in string literals (not comments): a block without ``# needs:`` must not use one."""
    pattern = re.compile(rf"""\b(?:{"|".join(BROKER_SCHEMES)})://[^"'\s]*""")
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return [url for token in tokens if token.type == tokenize.STRING for url in pattern.findall(token.string)]


def service_url(name: str) -> str:
    """The service's URL; unreachable, the test fails in CI and is skipped locally, like a broker."""
    variable, default = SERVICES[name]
    url = os.environ.get(variable, default)
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=1.0).close()
    except OSError:
        message = f"{name} unreachable at {parts.hostname}:{parts.port}: start it with `scripts/brokers up {name}`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url


def swap_service_urls(code: str, url: str) -> str:
    """Replace quoted URLs of the service's scheme (``postgresql+asyncpg://…``) by ``url``, keeping the driver."""
    scheme, _, rest = url.partition("://")
    pattern = re.compile(rf"""(?P<q>["']){re.escape(scheme)}(?P<driver>\+\w+)?://[^"'\s]*(?P=q)""")
    return pattern.sub(lambda m: f"{m['q']}{scheme}{m['driver'] or ''}://{rest}{m['q']}", code)


def run(source: str, url: str, tmp_path: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a program with ``UNIMQ_URL=url``; kill its process group on timeout."""
    script = tmp_path / "doc_example.py"
    script.write_text(source, encoding="utf-8")
    env = {**os.environ, "UNIMQ_URL": url, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"timed out after {timeout:.0f} s (a doc example must terminate)\n"
                        f"{report(source, out, err)}", pytrace=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def report(source: str, out: str, err: str) -> str:
    numbered = "\n".join(f"{n:4} {line}" for n, line in enumerate(source.splitlines(), 1) if line.strip())
    return (f"--- program (doc line numbers) ---\n{numbered}\n"
            f"--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-6000:]}")


def check(result: subprocess.CompletedProcess[str], source: str, block_id: str) -> None:
    if result.returncode != 0:
        pytest.fail(f"{block_id} exited with status {result.returncode}\n"
                    f"{report(source, result.stdout, result.stderr)}", pytrace=False)


def _param(block: Block) -> object:
    broker = block.needs and block.needs not in SERVICES and not block.not_run
    marks = [pytest.mark.needs_broker(block.needs)] if broker else []
    return pytest.param(block, marks=marks, id=block.id)


@pytest.mark.parametrize("block", [_param(b) for b in all_blocks()])
def test_doc_example(block: Block, tmp_path: Path, broker_url: Callable[[str], str]) -> None:
    """Runs the block on memory://, or on its ``# needs:`` broker; a ``# not-run:`` block must compile."""
    source = program(block)
    if block.not_run is not None:
        assert block.not_run, f"{block.id}: '# not-run:' needs a reason"
        return
    if block.needs is None:
        foreign = foreign_urls(source)
        assert not foreign, (f"{block.id} connects to {foreign}: use memory:// or unimq.connect() "
                             f"(UNIMQ_URL), or mark it '# needs: <target>'")
        check(run(source, "memory://", tmp_path, MEMORY_TIMEOUT), source, block.id)
        return
    if block.needs in SERVICES:
        source = swap_service_urls(source, service_url(block.needs))
        check(run(source, "memory://", tmp_path, BROKER_TIMEOUT), source, block.id)
        return
    known = sorted([*BACKEND_OF, *SERVICES])
    assert block.needs in BACKEND_OF, f"{block.id}: unknown '# needs: {block.needs}'; known: {known}"
    url = broker_url(block.needs)
    source = swap_urls(source, BACKEND_OF[block.needs], url)
    check(run(source, url, tmp_path, BROKER_TIMEOUT), source, block.id)


def headline() -> Block:
    """The README's first python block."""
    return next(parse_blocks(ROOT / "README.md"))


@pytest.mark.parametrize(
    "target", [pytest.param(t, marks=pytest.mark.needs_broker(t), id=t) for t in HEADLINE_TARGETS])
def test_readme_headline_on_every_backend(target: str, tmp_path: Path, broker_url: Callable[[str], str]) -> None:
    """The headline example, with its ``memory://`` swapped for the target's URL and its destination
    renamed (shared brokers: no leftovers from earlier runs), prints the message it sent."""
    block = headline()
    source = program(block)
    assert source.count('"memory://"') == 1, f"{block.id}: the headline must connect to \"memory://\" once"
    names = set(re.findall(r"""(?:producer|consumer|ensure)\(\s*"([^"]+)"\s*""", source))
    assert len(names) == 1, f"{block.id}: the headline must use one destination, found {sorted(names)}"
    (name,) = names
    sent = re.search(r"""\.send\(\s*(b'[^']*'|b"[^"]*")""", source)
    assert sent, f"{block.id}: the headline must send a bytes literal (the test looks for it in the output)"
    url = broker_url(target)
    unique = f"docs-{name}-{secrets.token_hex(4)}"
    source = source.replace('"memory://"', repr(url)).replace(f'"{name}"', f'"{unique}"')
    try:
        result = run(source, url, tmp_path, BROKER_TIMEOUT)
        check(result, source, f"{block.id} on {target}")
        assert repr(ast.literal_eval(sent[1])) in result.stdout, f"{block.id} on {target}: printed {result.stdout!r}"
    finally:
        asyncio.run(_delete(url, unique))


async def _delete(url: str, destination: str) -> None:
    """Best-effort cleanup of what the headline provisioned on a shared broker."""
    with contextlib.suppress(UnimqError, TimeoutError):
        async with asyncio.timeout(30), unimq.connect(url) as broker:
            await broker.delete(destination)


SAMPLE_DOC = """\
# A page
Inline ```` ```python ```` is not a fence.

```python
LIMIT = 3
```

````markdown
```python
raise SystemExit("a block nested in another fence is not collected")
```
````

```python
# continues
print(LIMIT + 1)
```

```python
await broker.producer("t").send(b"x")
1 / 0
```

```python
# needs: kafka
broker = await unimq.connect("kafka://h1:9092,h2:9092?client_id=app")
```

~~~python
# not-run: needs an Azure namespace
~~~
"""


def test_sample_rules(tmp_path: Path) -> None:
    """The rules above, on a sample page: fences, markers, chains, wrapping and doc line numbers."""
    (tmp_path / "page.md").write_text(SAMPLE_DOC, encoding="utf-8")
    prelude, continued, fragment, needs, not_run = parse_blocks(tmp_path / "page.md", tmp_path)
    assert [b.id for b in (prelude, fragment, not_run)] == ["page.md:4", "page.md:19", "page.md:29"]
    assert continued.chain() == [prelude, continued] and not prelude.continues
    assert (needs.needs, not_run.not_run) == ("kafka", "needs an Azure namespace")

    ran = run(program(continued), "memory://", tmp_path, MEMORY_TIMEOUT)
    assert (ran.returncode, ran.stdout) == (0, "4\n")

    failed = run(program(fragment), "memory://", tmp_path, MEMORY_TIMEOUT)
    assert failed.returncode == 1 and 'line 21, in main' in failed.stderr, failed.stderr

    url = "kafka://127.0.0.1:9092"
    assert f'unimq.connect("{url}?client_id=app")' in swap_urls(program(needs), "kafka", url)
    assert foreign_urls(program(needs)) == ["kafka://h1:9092,h2:9092?client_id=app"]
    assert foreign_urls('# "kafka://in-a-comment"\n') == []
    sqs = "sqs://?endpoint_url=http://127.0.0.1:9324&region=us-east-1"
    assert merge_query(sqs, "sqs://?region=eu-west-1&fifo=true") == sqs + "&fifo=true"
    pg = swap_service_urls('DB = "postgresql+asyncpg://u@db:5432/app"', "postgresql://postgres@127.0.0.1:5433/x")
    assert pg == 'DB = "postgresql+asyncpg://postgres@127.0.0.1:5433/x"'
