"""Soak: many messages through one backend with random handler failures and periodic connection resets.

    .venv/bin/python benchmarks/soak.py --url redis://127.0.0.1:6379/0 --messages 1000000 --reset-every 10
    .venv/bin/python benchmarks/soak.py --url URL1 --url URL2 ... --json results.json   # one after another

The producer and the consumer talk to the broker through a FaultProxy (except ``memory://``) that
resets every connection every ``--reset-every`` seconds; the handler fails at random
(``--fail-rate``) and is retried by ``broker.consume``. Reports loss (messages whose send
returned but never reached a successful handler: must be 0), duplicates, throughput and RSS
over time. The producer stays at most ``--lag`` messages ahead of the handler, so the broker's
backlog stays bounded. Exit status 1 on loss. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import unimq
from unimq.errors import PublishError, UnimqError
from unimq.testing.faultproxy import FaultProxy

#: scripts/brokers gives Kafka a listener (29092) advertised as 29093, where the proxy listens.
KAFKA_PROXY = ("127.0.0.1", 29092, 29093)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.total: int = args.messages
        self.sent = bytearray(self.total)  # 1 = send() returned
        self.seen = bytearray(self.total)  # handler successes, capped at 255
        self.duplicates = 0
        self.handled_count = 0  # distinct messages handled (kept as a counter: the hot path reads it)
        self.handler_failures = 0
        self.send_failures = 0
        self.resets = 0
        self.samples: list[tuple[float, float, int, int]] = []  # (seconds, RSS MiB, sent, handled)
        self.started = time.monotonic()
        self.progressed = asyncio.Event()

    @property
    def sent_count(self) -> int:
        return self.total - self.sent.count(0)

    @property
    def handled(self) -> int:
        return self.total - self.seen.count(0)

    async def produce(self, broker: unimq.Broker, dest: str) -> None:
        producer = broker.producer(dest)
        chunk = self.args.batch
        for start in range(0, self.total, chunk):
            while start - self.handled_count > self.args.lag:
                self.progressed.clear()
                await self.progressed.wait()
            ids = range(start, min(start + chunk, self.total))
            try:
                await producer.send_many([str(i).encode() for i in ids])
                for i in ids:
                    self.sent[i] = 1
            except PublishError as exc:
                for i, result in zip(ids, exc.results, strict=True):
                    if result is None:
                        self.sent[i] = 1
                    else:
                        self.send_failures += 1

    async def handle(self, delivery: unimq.Delivery) -> None:
        if random.random() < self.args.fail_rate:
            self.handler_failures += 1
            raise RuntimeError("random soak failure")
        i = int(delivery.message.body)
        if self.seen[i]:
            self.duplicates += 1
        else:
            self.handled_count += 1
            if self.handled_count % 1000 == 0:
                self.progressed.set()
        self.seen[i] = min(255, self.seen[i] + 1)

    async def sample(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self.started, rss_mb(), self.sent_count, self.handled))
            s = self.samples[-1]
            print(f"  t={s[0]:6.0f}s  RSS {s[1]:6.1f} MiB  sent {s[2]:>8}  handled {s[3]:>8}  "
                  f"dups {self.duplicates}  resets {self.resets}", flush=True)
            await asyncio.sleep(self.args.sample_every)

    async def reset(self, proxy: FaultProxy) -> None:
        while True:
            await asyncio.sleep(self.args.reset_every)
            await proxy.reset_all()
            self.resets += 1


async def run(args: argparse.Namespace, target: str) -> dict[str, object]:
    soak = Soak(args)
    dest = f"soak-{uuid.uuid4().hex[:8]}"
    scheme = target.split("://", 1)[0]
    proxy: FaultProxy | None = None
    url = target
    if scheme != "memory":
        if scheme == "kafka":
            host, port, listen = KAFKA_PROXY
            proxy = FaultProxy(host, port, port=listen)
            url = f"kafka://127.0.0.1:{listen}"
        else:
            proxy = FaultProxy.for_url(target)
        await proxy.start()
        url = url if scheme == "kafka" else proxy.url(target)
    background: list[asyncio.Task[None]] = []
    async with unimq.connect(url) as broker:
        await broker.ensure(dest)
        stop = asyncio.Event()
        retry = unimq.Retry(max_attempts=20, initial=timedelta(milliseconds=5), max_delay=timedelta(milliseconds=50))
        consumer = asyncio.create_task(broker.consume(dest, soak.handle, concurrency=args.concurrency,
                                                      prefetch=args.prefetch, retry=retry, stop=stop))
        background.append(asyncio.create_task(soak.sample()))
        if proxy is not None and args.reset_every > 0:
            background.append(asyncio.create_task(soak.reset(proxy)))
        await soak.produce(broker, dest)
        produced_at = time.monotonic()
        last, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < args.idle:
            missing = soak.sent_count - sum(1 for i in range(soak.total) if soak.sent[i] and soak.seen[i])
            if missing == 0:
                break
            if soak.handled != last:
                last, last_change = soak.handled, time.monotonic()
            await asyncio.sleep(1)
        for task in background:
            task.cancel()
        stop.set()
        await asyncio.wait_for(consumer, 60)
        soak.samples.append((time.monotonic() - soak.started, rss_mb(), soak.sent_count, soak.handled))
        try:
            await broker.delete(dest)
        except UnimqError as exc:  # a reset may hit the clean-up too; the figures stand
            print(f"  could not delete {dest}: {exc}")
    if proxy is not None:
        await proxy.close()
    lost = sum(1 for i in range(soak.total) if soak.sent[i] and not soak.seen[i])
    elapsed = produced_at - soak.started
    rss = [s[1] for s in soak.samples]
    print(f"\nsoak {broker.url} ({dest}): {soak.total} messages, reset every {args.reset_every or '-'} s, "
          f"handler fail rate {args.fail_rate}")
    print(f"  sent ok {soak.sent_count}, send failures {soak.send_failures}, resets {soak.resets}, "
          f"handler failures {soak.handler_failures}")
    print(f"  handled {soak.handled} distinct, duplicates {soak.duplicates} "
          f"({100 * soak.duplicates / max(1, soak.handled):.3f} %), LOST {lost}")
    print(f"  produce {soak.total / elapsed:.0f} msg/s; RSS min {min(rss):.1f} / max {max(rss):.1f} / "
          f"last {rss[-1]:.1f} MiB over {soak.samples[-1][0]:.0f} s")
    return {"url": broker.url, "messages": soak.total, "reset_every": args.reset_every,
            "fail_rate": args.fail_rate, "sent": soak.sent_count, "send_failures": soak.send_failures,
            "resets": soak.resets, "handler_failures": soak.handler_failures, "handled": soak.handled,
            "duplicates": soak.duplicates, "lost": lost, "seconds": round(soak.samples[-1][0], 1),
            "rss_mib": {"min": min(rss), "max": max(rss), "last": rss[-1]},
            "samples": [{"t": round(t, 1), "rss_mib": r, "sent": s, "handled": h} for t, r, s, h in soak.samples]}


async def run_all(args: argparse.Namespace) -> int:
    results = []
    for target in args.url:
        results.append(await run(args, target))
        if args.json:  # written after each backend, so a long run keeps what it has
            await asyncio.to_thread(Path(args.json).write_text, json.dumps(results, indent=1))
    print("\n| backend | messages | resets | handler failures | lost | duplicates | RSS MiB (min–max) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        rss = r["rss_mib"]
        assert isinstance(rss, dict)
        print(f"| {r['url']} | {r['messages']:,} | {r['resets']} | {r['handler_failures']:,} | {r['lost']} | "
              f"{r['duplicates']:,} | {rss['min']:.0f}–{rss['max']:.0f} | {r['seconds']:.0f} |")
    return 1 if any(r["lost"] for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, action="append", help="repeat to soak several backends in turn")
    parser.add_argument("--lag", type=int, default=20_000, help="how far the producer may run ahead of the handler")
    parser.add_argument("--json", help="write the results (with RSS samples) here")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--reset-every", type=float, default=10.0, help="seconds between resets; 0 = none")
    parser.add_argument("--fail-rate", type=float, default=0.01, help="probability a handler call fails")
    parser.add_argument("--batch", type=int, default=500, help="messages per send_many")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--idle", type=float, default=60.0, help="give up after this long without progress")
    parser.add_argument("--sample-every", type=float, default=5.0)
    sys.exit(asyncio.run(run_all(parser.parse_args())))


if __name__ == "__main__":
    main()
