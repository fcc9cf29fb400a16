"""Run the whole benchmark profile and publish it: JSON in benchmarks/results/, docs/benchmarks.md, PNG charts.

    .venv/bin/python benchmarks/run_all.py --quick            # the whole matrix, every backend that is up (~10 min)
    .venv/bin/python benchmarks/run_all.py                    # full profile (hours on a 2-core machine)
    .venv/bin/python benchmarks/run_all.py --quick --full-subset --migrate --soak   # what docs/benchmarks.md shows
    .venv/bin/python benchmarks/run_all.py --render benchmarks/results/<date>.json  # re-render only

Backends are skipped when their broker does not answer on its port (``scripts/brokers status``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
BACKENDS = ("memory", "rabbitmq", "redis", "nats", "kafka", "sqs", "servicebus")
PORTS = {"rabbitmq": 5672, "redis": 6379, "nats": 4222, "kafka": 9092, "sqs": 9324, "servicebus": 5673}


def is_up(name: str) -> bool:
    if name == "memory":
        return True
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", PORTS[name]), timeout=1):
        return True
    return False


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f"{kib / 1024 / 1024:.0f} GiB RAM"
    return {"cpus": os.cpu_count(), "cpu": model, "memory": mem, "python": platform.python_version(),
            "platform": platform.platform(), "load_at_start": load()}


async def broker_versions(up: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(Exception):
        if "rabbitmq" in up:
            import aiormq

            conn = await aiormq.connect("amqp://guest:guest@127.0.0.1:5672/")
            version = conn.server_properties.get("version")
            out["rabbitmq"] = f"RabbitMQ {version.decode() if isinstance(version, bytes) else version}"
            await conn.close()
    with contextlib.suppress(Exception):
        if "redis" in up:
            from redis.asyncio import Redis

            r = Redis()
            out["redis"] = f"Redis {(await r.info('server'))['redis_version']}"
            await r.aclose()
    with contextlib.suppress(Exception):
        if "nats" in up:
            import nats

            nc = await nats.connect("nats://127.0.0.1:4222")
            out["nats"] = f"nats-server {nc._server_info.get('version')}"
            await nc.close()
    for name, pattern, label in (("kafka", "kafka_2.13-*.jar", "Apache Kafka (KRaft) "),
                                 ("sqs", "elasticmq-server_*.jar", "ElasticMQ ")):
        jars = sorted((ROOT / ".brokers" / name / "libs").glob(pattern))
        if jars:
            out[name] = label + jars[0].stem.rsplit("-", 1)[-1]
    out["servicebus"] = "in-repo AMQP 1.0 double (python-qpid-proton)"
    out["memory"] = "in-process"
    return out


def module_for(name: str) -> Any:
    return importlib.import_module(f"{name}_bench")


async def run_matrix(names: list[str], quick: bool, full_subset: bool, sizes: list[int],
                     repeat: int | None, save: Any) -> list[dict[str, Any]]:
    """Run each backend's profile(s); ``save(figures)`` after each, so an interrupted run keeps its results."""
    figures: list[dict[str, Any]] = []
    for name in names:
        try:
            backend: harness.Backend = module_for(name).BACKEND
        except ImportError as exc:
            harness._log(f"{name}: no benchmark module ({exc})")
            continue
        url = os.environ.get(f"UNIMQ_TEST_{name.upper()}_URL", backend.default_url)
        runs: list[tuple[str, harness.Profile, list[int], list[bool], list[int], list[str]]] = []
        if quick:
            runs.append(("quick", backend.profile(True, repeat), sizes, [True, False], [1, 8], list(harness.OPS)))
        if full_subset:
            runs.append(("full", backend.profile(False, repeat), [1024], [True], [1], ["produce", "consume"]))
        if not quick and not full_subset:
            runs.append(("full", backend.profile(False, repeat), sizes, [True, False], [1, 8], list(harness.OPS)))
        for profile_name, profile, sz, batches, conc, ops in runs:
            before = load()
            started = datetime.datetime.now(datetime.UTC)
            result = await harness.run_backend(backend, url, profile, sz, batches, conc, ops)
            seconds = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
            harness._log(f"== {name} {profile_name}: {seconds:.0f} s, load {before} → {load()}")
            for fig in result:
                figures.append({**asdict(fig), "profile": profile_name, "load_before": before, "load_after": load(),
                                "notes": backend.notes})
            save(figures)
    return figures


def run_script(args: list[str], timeout: float) -> Any:
    out = RESULTS / f".tmp-{os.getpid()}.json"
    try:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:], "--json", str(out)],
                       check=True, timeout=timeout, cwd=ROOT)
        return json.loads(out.read_text())
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        out.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the whole matrix with small counts")
    parser.add_argument("--full-subset", action="store_true", help="full profile for 1 KiB, batching on, c=1")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--sizes", default=",".join(map(str, harness.SIZES)))
    parser.add_argument("--skip-matrix", action="store_true", help="only --migrate / --soak")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per figure (at least 5)")
    parser.add_argument("--migrate", action="store_true", help="dual-publish and mirror throughput")
    parser.add_argument("--soak", action="store_true", help="RSS over 1,000,000 messages (memory://, redis)")
    parser.add_argument("--soak-messages", type=int, default=1_000_000)
    parser.add_argument("--render", metavar="JSON", help="only re-render docs from a results file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.render:
        import render

        render.render(json.loads(Path(args.render).read_text()), DOC, IMG)
        return
    names = [n for n in args.backends.split(",") if n]
    up = [n for n in names if is_up(n)]
    harness._log(f"brokers up: {up}; skipped: {sorted(set(names) - set(up))}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "brokers": asyncio.run(broker_versions(up)),
        "settings": {"quick": args.quick, "full_subset": args.full_subset, "sizes": args.sizes,
                     "skipped": sorted(set(names) - set(up))},
    }
    sizes = [int(s) for s in args.sizes.split(",")]
    path = RESULTS / f"{datetime.date.today().isoformat()}.json"

    def save(figures: list[dict[str, Any]]) -> None:
        previous = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(merge(previous, {**results, "figures": figures}), indent=1))

    results["figures"] = [] if args.skip_matrix else asyncio.run(
        run_matrix(up, args.quick, args.full_subset, sizes, args.repeat, save))
    if args.migrate:
        pairs = [p for p in (("redis", "nats"), ("rabbitmq", "kafka")) if p[0] in up and p[1] in up]
        count = "2000" if args.quick else "10000"
        results["migrate"] = [run_script(["migrate_bench.py", "--pair", ",".join(p), "--count", count], 900)
                              for p in pairs]
    if args.soak:
        results["soak"] = [run_script(["soak_bench.py", "--url", url, "--messages", str(args.soak_messages)], 1200)
                           for name, url in (("memory", "memory://soak?lock_timeout=60"),
                                             ("redis", "redis://127.0.0.1:6379/0")) if name in up]
    results["machine"]["load_at_end"] = load()
    save(results["figures"])
    results = json.loads(path.read_text())
    harness._log(f"wrote {path}")
    import render

    render.render(results, DOC, IMG)


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Today's earlier runs stay unless this run measured the same figure again."""
    def key(f: dict[str, Any]) -> tuple[Any, ...]:
        return f["backend"], f["profile"], f["contender"], f["op"], f["workload"]

    fresh = {key(f) for f in new.get("figures", [])}
    merged = {**old, **{k: v for k, v in new.items() if v}}
    merged["figures"] = [f for f in old.get("figures", []) if key(f) not in fresh] + new.get("figures", [])
    merged["brokers"] = {**old.get("brokers", {}), **new.get("brokers", {})}
    return merged


if __name__ == "__main__":
    main()
