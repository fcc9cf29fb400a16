"""``unimq run module:app`` (the worker runner) and ``unimq docs module:app`` (AsyncAPI export).

``run`` with one worker and no reload runs the app in this process. With ``--workers N`` or
``--reload`` this process becomes a supervisor: it starts N worker processes (``unimq run`` with one
worker each), forwards SIGTERM/SIGINT to them so each drains its in-flight messages, restarts them
all when a source file changes (``--reload``), and stops them all if one dies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.config
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unimq.errors import ConfigError

from .health import serve_health
from .loader import load_app

log = logging.getLogger("unimq.app.run")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: How often --reload looks at the sources' modification times, in seconds.
RELOAD_POLL = 0.5


def workers_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--workers must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise ConfigError(f"--workers must be >= 1, got {value}")
    return value


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--health-port must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise ConfigError(f"--health-port must be 0-65535, got {value}")
    return value


def level_arg(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.upper()


def configure_logging(level: str, worker: int | None = None, config: str | None = None) -> None:
    """Log to stderr at ``level``, or as the file ``config`` says (.json: dictConfig, else fileConfig)."""
    if config is not None:
        try:
            if config.endswith(".json"):
                logging.config.dictConfig(json.loads(Path(config).read_text()))
            else:
                logging.config.fileConfig(config, disable_existing_loggers=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
            raise ConfigError(f"--log-config {config}: {type(exc).__name__}: {exc}") from None
        return
    prefix = f"[worker {worker}] " if worker is not None else ""
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")


async def cmd_run(args: argparse.Namespace) -> int:
    app = load_app(args.app)  # in the supervisor too: a bad target fails once, before any worker starts
    configure_logging(args.log_level, args.worker_index, args.log_config)
    if args.url:
        app._url = args.url
    if args.workers > 1 or args.reload:
        return await _supervise(args)
    stop = asyncio.Event()
    health = None
    if args.health_port is not None:
        health = await serve_health(args.health_host, args.health_port, app.health)
        log.info("health endpoint on http://%s:%d/health", args.health_host, args.health_port)
    try:
        log.info("running %s (%d subscribers)", args.app, len(app.subscribers()))
        await app.run(handle_signals=True, stop=stop)
    finally:
        if health is not None:
            health.close()
    log.info("stopped %s", args.app)
    return 0


def _worker_command(args: argparse.Namespace, index: int) -> list[str]:
    command = [sys.executable, "-m", "unimq.cli", "run", args.app, "--log-level", args.log_level,
               "--worker-index", str(index)]
    if args.url:
        command += ["--url", args.url]
    if args.log_config:
        command += ["--log-config", args.log_config]
    return command


def _sources(root: Path) -> dict[Path, float]:
    out: dict[Path, float] = {}
    for path in root.rglob("*.py"):
        if any(part.startswith(".") or part in ("__pycache__", "node_modules") for part in path.parts):
            continue
        try:
            out[path] = path.stat().st_mtime
        except OSError:
            continue
    return out


async def _supervise(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    workers: list[asyncio.subprocess.Process] = []

    def check() -> tuple[bool, dict[str, Any]]:
        alive = [w.returncode is None for w in workers]
        return bool(alive) and all(alive), {"workers": len(workers), "alive": sum(alive)}

    health = None
    if args.health_port is not None:
        health = await serve_health(args.health_host, args.health_port, check)
    root = Path(os.getcwd())
    try:
        while True:
            workers[:] = [await asyncio.create_subprocess_exec(*_worker_command(args, i),
                                                               stdin=asyncio.subprocess.DEVNULL)
                          for i in range(args.workers)]
            log.info("started %d workers: %s", len(workers), " ".join(str(w.pid) for w in workers))
            reason = await _watch(workers, stop, root if args.reload else None)
            await _stop_all(workers)
            if reason == "reload":
                log.info("source changed: restarting the workers")
                continue
            if reason == "stop":
                return 0
            failed = next(w for w in workers if w.returncode not in (None, 0))
            log.error("worker %d exited with status %s: stopping", failed.pid, failed.returncode)
            return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if health is not None:
            health.close()


async def _watch(workers: list[asyncio.subprocess.Process], stop: asyncio.Event, root: Path | None) -> str:
    """Wait for a stop signal ("stop"), a worker exiting ("exit") or a changed source ("reload")."""
    exits = {asyncio.create_task(w.wait()) for w in workers}
    stopper = asyncio.create_task(stop.wait())
    before = _sources(root) if root is not None else {}
    try:
        while True:
            done, _ = await asyncio.wait({stopper, *exits}, timeout=RELOAD_POLL, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                return "stop"
            if done:
                return "exit" if any(w.returncode for w in workers) else "stop"
            if root is not None and _sources(root) != before:
                return "reload"
    finally:
        for task in (stopper, *exits):
            task.cancel()


async def _stop_all(workers: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM every live worker (each drains its in-flight messages) and wait for them."""
    for worker in workers:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
    await asyncio.gather(*(w.wait() for w in workers))


async def cmd_docs(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    text = json.dumps(app.asyncapi(args.url), indent=2)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, text + "\n")
    else:
        print(text)
    return 0


def add_commands(sub: Any, commands: Callable[..., Any] | None = None) -> None:
    """Register ``run`` and ``docs`` on the ``unimq`` parser's subcommands (``commands`` is unused:
    accepted so every module registers the same way)."""
    p = sub.add_parser("run", help="run a unimq.App: unimq run module:app",
                       description="Run the subscribers of a unimq.App until SIGTERM/SIGINT, then drain in-flight "
                                   "messages and stop.")
    p.add_argument("app", help="module:attribute of the App, e.g. service.main:app")
    p.add_argument("--url", help="broker URL, overriding the app's (default: the app's, else $UNIMQ_URL)")
    p.add_argument("--workers", type=workers_arg, default=1, help="worker processes (default 1)")
    p.add_argument("--reload", action="store_true", help="restart the workers when a .py file under . changes")
    p.add_argument("--health-port", type=port_arg, help="serve GET /health on this port (200 healthy, 503 not)")
    p.add_argument("--health-host", default="0.0.0.0", help="address of the health endpoint (default 0.0.0.0)")
    p.add_argument("--log-level", type=level_arg, default="INFO", help=f"one of {', '.join(LOG_LEVELS)}")
    p.add_argument("--log-config", help="a logging config file, .json (dictConfig) or .ini (fileConfig); "
                                        "replaces --log-level")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("docs", help="write the AsyncAPI 3.0 document of a unimq.App",
                       description="Write the AsyncAPI 3.0 document (channels, operations, payload schemas, "
                                   "bindings for the backend of the app's URL).")
    p.add_argument("app", help="module:attribute of the App")
    p.add_argument("-o", "--output", help="write to this file (default: stdout)")
    p.add_argument("--url", help="describe the app on this broker URL instead of its own")
    p.set_defaults(func=cmd_docs)
