"""Start and stop the message brokers used by the unimq test suite, natively.

Called through the scripts/brokers wrapper:

    scripts/brokers up|down|status|restart|env [backend ...]

Backends: rabbitmq, redis, nats, kafka, sqs (ElasticMQ), servicebus (in-repo double).
With no backend named, all five real brokers are meant (servicebus only on request).

Every broker runs as our own child process, bound to 127.0.0.1, with its data, logs and pid
file under .brokers/<backend>/. `down` stops it by pid (SIGTERM, then SIGKILL) and wipes its
data; `restart` stops and starts it keeping the data. Missing software is installed on first
use: Debian packages with apt-get, Kafka and ElasticMQ jars with Maven (scripts/jars/*/pom.xml),
nats-server with go install.
Python standard library only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".brokers"
JARS = ROOT / "scripts" / "jars"
HOST = "127.0.0.1"

#: nats-server is built from source (Go module proxy); Debian's 2.9 has a redelivery-count bug.
NATS_MODULE = "github.com/nats-io/nats-server/v2"
NATS_VERSION = "v2.15.3"

DEFAULT_BACKENDS = ["rabbitmq", "redis", "nats", "kafka", "sqs"]
ALL_BACKENDS = [*DEFAULT_BACKENDS, "servicebus", "postgres", "s3", "azurite"]

SERVICEBUS_CONNECTION_STRING = (
    f"Endpoint=sb://{HOST}:5673;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
)


class BrokerError(Exception):
    """A broker could not be installed, started or stopped; the message says why."""


def say(msg: str) -> None:
    """Progress messages go to stderr so that stdout stays one line per backend."""
    print(f"brokers: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Small helpers: processes, ports, protocol probes
# ---------------------------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def exchange(port: int, payload: bytes, nbytes: int, timeout: float = 2.0) -> bytes:
    """Send payload to HOST:port and return up to nbytes of the reply (b'' on any error)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(payload)
            data = b""
            while len(data) < nbytes:
                chunk = sock.recv(nbytes - len(data))
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return b""


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


_apt_updated = False


def apt_install(packages: list[str]) -> None:
    """Install Debian packages without letting their system services start.

    Debian's postinst scripts start redis-server/rabbitmq-server/nats-server right away, which
    would grab our ports. A policy-rc.d that exits 101 forbids that during the install; one that
    already exists (as in container images) is left alone. On a systemd host the units are also
    disabled so they do not come back at boot.
    """
    global _apt_updated  # noqa: PLW0603 - one apt-get update per run
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        script = f"printf '#!/bin/sh\\nexit 101\\n' > {policy} && chmod 755 {policy}"
        subprocess.run([*sudo(), "sh", "-c", script], check=True)
    try:
        if not _apt_updated:
            say("apt-get update")
            subprocess.run([*sudo(), "apt-get", "update", "-qq"], check=True, env=env)
            _apt_updated = True
        say(f"apt-get install {' '.join(packages)}")
        subprocess.run([*sudo(), "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        raise BrokerError(f"apt-get failed for {' '.join(packages)}: {exc}") from exc
    finally:
        if own_policy:
            subprocess.run([*sudo(), "rm", "-f", str(policy)], check=False)
    if Path("/run/systemd/system").is_dir():
        for unit in ("rabbitmq-server", "redis-server", "nats-server"):
            if unit in packages:
                subprocess.run([*sudo(), "systemctl", "disable", "--now", unit],
                               check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def maven_libs(name: str, libs: Path) -> None:
    """Copy the runtime jars of scripts/jars/<name>/pom.xml into libs/, unless already there.

    libs/.pom-sha256 records the pom the jars came from; a changed pom downloads again.
    """
    pom = JARS / name / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    stamp = libs / ".pom-sha256"
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    if not shutil.which("java") or not shutil.which("mvn"):
        apt_install(["openjdk-17-jre-headless", "maven"])
    say(f"{name}: downloading jars with Maven (first run only; ~/.m2 caches them) ...")
    started = time.monotonic()
    tmp = libs.with_name(libs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(
        ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
        check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if result.returncode != 0:
        raise BrokerError(f"mvn failed for {pom}:\n{result.stdout[-3000:]}")
    (tmp / ".pom-sha256").write_text(digest + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    count = len(list(libs.glob("*.jar")))
    say(f"{name}: {count} jars in {libs.relative_to(ROOT)} ({time.monotonic() - started:.1f}s)")


def go_install(module: str, version: str, binary: Path) -> None:
    """Build ``module@version`` with ``go install`` into binary's folder, unless that version is there.

    A ``.version`` file beside the binary records what was built; a changed version builds again.
    """
    stamp = binary.with_name(binary.name + ".version")
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == version:
        return
    go = shutil.which("go")
    if go is None:
        raise BrokerError(f"building {binary.name} needs Go (1.24 or newer) on PATH: install it, then rerun")
    say(f"{binary.name}: building {module}@{version} with go install (first run only) ...")
    started = time.monotonic()
    binary.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([go, "install", f"{module}@{version}"], check=False, text=True,
                            env={**os.environ, "GOBIN": str(binary.parent), "CGO_ENABLED": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise BrokerError(f"go install {module}@{version} failed:\n{result.stdout[-3000:]}")
    stamp.write_text(version + "\n")
    say(f"{binary.name}: built {version} ({time.monotonic() - started:.1f}s)")


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    (no log at {path})"
    return "\n".join("    " + line for line in text[-lines:])


# ---------------------------------------------------------------------------------------------
# Broker base class
# ---------------------------------------------------------------------------------------------

class Broker:
    """One backend: how to install, start, probe and stop it.

    Subclasses set name/port/url/start_timeout and implement command() and ready(); they may
    add missing_packages() or install(), env(), prepare() (before each start) and booted().
    """

    name = ""
    port = 0
    url = ""
    start_timeout = 30.0
    stop_timeout = 20.0

    def __init__(self, home: Path | None = None) -> None:
        """``home`` runs a second, private instance with its own state, data and logs."""
        self.dir = home or STATE / self.name
        self.data = self.dir / "data"
        self.logs = self.dir / "logs"
        self.log = self.logs / "server.log"
        self.pidfile = self.dir / "server.pid"
        self.log_offset = 0

    # -- to override -------------------------------------------------------------------------
    def missing_packages(self) -> list[str]:
        """Debian packages still to install (all brokers' are installed in one apt-get run)."""
        return []

    def install(self) -> None:
        """Make sure the software is present (idempotent, quiet when nothing to do)."""

    def prepare(self) -> None:
        """Write config files and initialise data before a start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        """A protocol-level check that the broker serves clients."""
        raise NotImplementedError

    def booted(self) -> bool:
        """Extra startup condition checked only right after spawn() (e.g. a log line)."""
        return True

    # -- common machinery --------------------------------------------------------------------
    def pid(self) -> int | None:
        """The pid from our pid file if that process is alive and ours (it runs inside self.dir)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid):
            return None
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            if not any(cwd.is_relative_to(d.resolve()) for d in (self.dir, self.data)):
                return None  # the pid was reused by an unrelated process
        except OSError:
            pass
        return pid

    def pid_status(self) -> str:
        """Why :meth:`pid` found no process of ours: for an error message."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            return f"pid file: {exc}"
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError as exc:
            return f"pid {pid}: {exc.strerror}"
        return f"pid {pid}: state {state}, cwd {cwd}"

    def is_up(self) -> bool:
        return self.pid() is not None and self.ready()

    def spawn(self) -> None:
        """Start the broker in the background (its own session, output appended to its log)."""
        if self.pid() is not None:
            raise BrokerError(f"{self.name}: pid {self.pid()} is running but not answering; "
                              f"try `scripts/brokers restart {self.name}`\n{tail(self.log)}")
        if port_open(self.port):
            raise BrokerError(f"{self.name}: port {self.port} on {HOST} is held by a process we did "
                              f"not start (a system service?); see `ss -ltnp 'sport = :{self.port}'`")
        for d in (self.data, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            out.write(f"\n===== scripts/brokers: starting {self.name} at {time.ctime()} =====\n".encode())
            out.flush()
            proc = subprocess.Popen(self.command(), cwd=self.dir, env=self.env(), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pidfile.write_text(f"{proc.pid}\n")

    def log_since_start(self) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def startup_done(self, started_at: float) -> bool:
        """True once ready; False while still booting; BrokerError if it died or timed out."""
        if self.pid() is None:
            raise BrokerError(f"{self.name}: process exited during startup ({self.pid_status()}); log tail "
                              f"({self.log}):\n{tail(self.log)}")
        if self.booted() and self.ready():
            return True
        if time.monotonic() - started_at > self.start_timeout:
            raise BrokerError(f"{self.name}: not ready after {self.start_timeout:.0f}s; log tail "
                              f"({self.log}):\n{tail(self.log)}")
        return False

    def stop(self) -> None:
        """SIGTERM the pid we started, SIGKILL it (and its process group) after stop_timeout."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                say(f"{self.name}: pid {pid} ignored SIGTERM for {self.stop_timeout:.0f}s, sending SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            self.wait_port_closed()
        self.pidfile.unlink(missing_ok=True)

    def wait_port_closed(self) -> None:
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def wipe(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The backends
# ---------------------------------------------------------------------------------------------

class RabbitMQ(Broker):
    """Debian's rabbitmq-server, run as root from its real scripts (not the `su rabbitmq` wrapper)
    with our own node name, HOME (Erlang cookie), mnesia and log dirs. The foreground
    rabbitmq-server script traps SIGTERM and shuts the node down cleanly.

    ``home``, ``ports`` (AMQP, Erlang distribution) and ``node`` run a second, private node
    (tests/reliability starts one with a TLS listener); ``config`` is appended to its rabbitmq.conf.
    """

    name = "rabbitmq"
    port = 5672
    dist_port = 25672
    url = f"amqp://guest:guest@{HOST}:5672/"
    start_timeout = 90.0
    stop_timeout = 30.0
    node = "unimq@localhost"
    bin = Path("/usr/lib/rabbitmq/bin")

    def __init__(self, home: Path | None = None, ports: tuple[int, int] | None = None, node: str | None = None,
                 config: str = "") -> None:
        super().__init__(home)
        if ports is not None:
            self.port, self.dist_port = ports
            self.url = f"amqp://guest:guest@{HOST}:{self.port}/"
        self.node = node or self.node
        self.extra_config = config

    def missing_packages(self) -> list[str]:
        return [] if (self.bin / "rabbitmq-server").exists() else ["rabbitmq-server"]

    def prepare(self) -> None:
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {HOST}:{self.port}\n"
            f"distribution.listener.interface = {HOST}\n"
            "loopback_users.guest = true\n"
            + self.extra_config
        )
        (self.dir / "enabled_plugins").write_text("[].\n")

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            HOME=str(self.dir / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.data),
            RABBITMQ_LOG_BASE=str(self.logs),
            RABBITMQ_PID_FILE=str(self.dir / "node.pid"),
            ERL_EPMD_ADDRESS=HOST,
        )

    def command(self) -> list[str]:
        return [str(self.bin / "rabbitmq-server")]

    def ready(self) -> bool:
        # AMQP 0-9-1 protocol header; a serving node answers with a Connection.Start method
        # frame (type 1, channel 0). The listener only opens once the node has fully booted.
        reply = exchange(self.port, b"AMQP\x00\x00\x09\x01", 7)
        return reply[:3] == b"\x01\x00\x00"


class Redis(Broker):
    """Debian's redis-server with an append-only file (fsync every second), so a
    `restart redis` keeps the streams and consumer groups the tests created."""

    name = "redis"
    port = 6379
    url = f"redis://{HOST}:6379/0"
    start_timeout = 15.0

    def missing_packages(self) -> list[str]:
        return [] if shutil.which("redis-server") else ["redis-server"]

    def command(self) -> list[str]:
        return ["redis-server", "--bind", HOST, "--port", str(self.port), "--dir", str(self.data),
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                "--daemonize", "no", "--protected-mode", "yes"]

    def ready(self) -> bool:
        return exchange(self.port, b"PING\r\n", 7).startswith(b"+PONG")


class Nats(Broker):
    """nats-server NATS_VERSION, built from the Go module proxy into .brokers/nats/bin (shared by
    nats-cluster), with JetStream stored under .brokers/nats/data and capped in memory/disk so it
    does not claim a share of the whole machine.

    Not Debian's 2.9.10: it reports a message nak'ed with a delay as delivered once when it comes
    back (one run in five), and later servers are what users run."""

    name = "nats"
    port = 4222
    monitor_port = 8222
    url = f"nats://{HOST}:4222"
    start_timeout = 15.0
    binary = STATE / "nats" / "bin" / "nats-server"

    def install(self) -> None:
        go_install(NATS_MODULE, NATS_VERSION, self.binary)

    def prepare(self) -> None:
        (self.dir / "nats.conf").write_text(
            f"host: {HOST}\n"
            f"port: {self.port}\n"
            f"http: \"{HOST}:{self.monitor_port}\"\n"
            "jetstream {\n"
            f"  store_dir: \"{self.data}\"\n"
            "  max_memory_store: 256MB\n"
            "  max_file_store: 2GB\n"
            "}\n"
        )

    def command(self) -> list[str]:
        return [str(self.binary), "-c", str(self.dir / "nats.conf")]

    def ready(self) -> bool:
        return http_status(self.monitor_port, "/healthz?js-enabled-only=true") == 200


class Kafka(Broker):
    """Apache Kafka in KRaft combined mode (broker + controller, node 1) from Maven jars,
    tuned so that a single consumer joins its group at once.

    ``home`` and ``ports`` run a second, private instance from the same jars (tests/reliability
    starts one with TLS and SASL/SCRAM listeners): ``settings`` add to or replace entries of its
    server.properties, ``format_args`` go to ``kafka-storage format`` (e.g. ``--add-scram``).
    """

    name = "kafka"
    port = 9092
    controller_port = 9093
    #: A second listener for fault tests: it advertises 29093, where the test's FaultProxy
    #: listens and forwards to 29092, so clients reconnect through the proxy (tests/faults).
    proxy_listener_port = 29092
    proxy_port = 29093
    url = f"kafka://{HOST}:9092"
    start_timeout = 120.0
    stop_timeout = 30.0

    def __init__(self, home: Path | None = None, ports: tuple[int, int] | None = None,
                 settings: dict[str, str] | None = None, format_args: tuple[str, ...] = (),
                 heap: str = "512m") -> None:
        super().__init__(home)
        self.libs = STATE / self.name / "libs"  # shared by every instance
        if ports is not None:
            self.port, self.controller_port = ports
            self.url = f"kafka://{HOST}:{self.port}"
        self.config = self.dir / "server.properties"
        self.extra_settings = settings or {}
        self.format_args = format_args
        self.heap = heap

    def install(self) -> None:
        maven_libs("kafka", self.libs)

    def java(self, main: str, *args: str) -> list[str]:
        return ["java", "-Xms128m", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", f"-Dkafka.logs.dir={self.logs}",
                f"-Dlog4j.configuration=file:{JARS / 'kafka' / 'log4j.properties'}",
                "-cp", f"{self.libs}/*", main, *args]

    def settings(self) -> dict[str, str]:
        """server.properties entries (a private instance's ``settings`` last)."""
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port},"
                         f"PROXY://{HOST}:{self.proxy_listener_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port},PROXY://{HOST}:{self.proxy_port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXY:PLAINTEXT",
            "log.dirs": str(self.data),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.flush.interval.messages": "1",
            **self.extra_settings,
        }

    def prepare(self) -> None:
        # Java properties: a multi-line value (an inline PEM) is written with \n escapes.
        lines = (f"{key}={value}".replace("\n", "\\n") for key, value in self.settings().items())
        self.config.write_text("\n".join(lines) + "\n")
        if not (self.data / "meta.properties").exists():
            cluster_id = "-"
            while cluster_id.startswith("-"):  # a leading "-" would be parsed as an option
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            result = subprocess.run(
                self.java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config),
                          *self.format_args),
                check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            if result.returncode != 0:
                raise BrokerError(f"kafka: storage format failed:\n{result.stdout[-3000:]}")

    def command(self) -> list[str]:
        return self.java("kafka.Kafka", str(self.config))

    def booted(self) -> bool:
        return "Kafka Server started" in self.log_since_start()

    def ready(self) -> bool:
        # ApiVersions v0 request (api key 18, correlation id 1, no client id); the reply echoes
        # the correlation id followed by error code 0.
        request = struct.pack(">hhih", 18, 0, 1, -1)
        reply = exchange(self.port, struct.pack(">i", len(request)) + request, 10)
        return len(reply) == 10 and struct.unpack(">iih", reply)[1:] == (1, 0)


class ElasticMQ(Broker):
    """ElasticMQ, an SQS-compatible server, from Maven jars. Queues (standard and FIFO) are
    created by the tests through the API; nothing is predeclared.

    The shared instance keeps everything in memory: `restart sqs` empties it. ``persistent``
    keeps queues and messages in an H2 database under data/ (ElasticMQ's ``messages-storage``;
    the jars come with elasticmq-server), so a restart keeps them; messages received but not
    deleted are visible again after it. It is off for the shared instance because it cost
    20-50 % of ElasticMQ's throughput here (docs/reliability.md). ``port`` and ``home`` run a
    second, private instance: tests/faults restarts one of its own, persistent.
    """

    name = "sqs"
    port = 9324
    region = "elasticmq"
    url = f"sqs://?endpoint_url=http://{HOST}:9324&region={region}"
    start_timeout = 60.0

    def __init__(self, port: int | None = None, home: Path | None = None, persistent: bool = False) -> None:
        super().__init__(home)
        self.libs = STATE / self.name / "libs"  # shared by every instance
        if port is not None:
            self.port = port
            self.url = f"sqs://?endpoint_url=http://{HOST}:{port}&region={self.region}"
        self.persistent = persistent
        self.config = self.dir / "elasticmq.conf"
        self.queues_at_stop = self.dir / "queues-at-stop"

    def install(self) -> None:
        maven_libs("elasticmq", self.libs)

    def prepare(self) -> None:
        # H2 must not close itself on SIGTERM (ElasticMQ still serves a few ms after that and then
        # loses acknowledged sends); WRITE_DELAY=0 writes each commit at once, so even a SIGKILL
        # keeps every acknowledged send.
        uri = f"jdbc:h2:{self.data / 'elasticmq'};DB_CLOSE_ON_EXIT=FALSE;WRITE_DELAY=0"
        storage = f'messages-storage {{ enabled = true, uri = "{uri}" }}\n' if self.persistent else ""
        self.config.write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = http, host = "{HOST}", port = {self.port}, context-path = "" }}\n'
            f'rest-sqs {{ enabled = true, bind-port = {self.port}, bind-hostname = "{HOST}", sqs-limits = strict }}\n'
            "rest-stats { enabled = false }\n"
            "generate-node-address = false\n"
            f'aws {{ region = "{self.region}", accountId = "000000000000" }}\n'
            + storage
        )

    def command(self) -> list[str]:
        return ["java", "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Dconfig.file={self.config}", "-cp", f"{self.libs}/*", "org.elasticmq.server.Main"]

    def ready(self) -> bool:
        return http_status(self.port, "/?Action=ListQueues") == 200

    def queue_count(self) -> int:
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=2.0)
            conn.request("GET", "/?Action=ListQueues")
            body = conn.getresponse().read()
            conn.close()
        except OSError:
            return -1
        return body.count(b"<QueueUrl>")

    def booted(self) -> bool:
        """A persistent ElasticMQ answers before it has restored its queues from H2: until then
        they do not exist for clients. Wait for as many queues as there were at the last stop."""
        try:
            expected = int(self.queues_at_stop.read_text())
        except (OSError, ValueError):
            return True
        return self.queue_count() >= expected

    def stop(self) -> None:
        if self.persistent and self.pid() is not None:
            self.queues_at_stop.write_text(f"{max(self.queue_count(), 0)}\n")
        super().stop()


class Postgres(Broker):
    """Debian's PostgreSQL (for the transactional outbox and the SQL inbox, docs/exactly-once.md):
    a private cluster made by initdb under .brokers/postgres/data, TCP on 127.0.0.1:5433 only, trust
    auth, small memory settings. PostgreSQL refuses to run as root, so then it runs as the
    ``postgres`` user the package creates (setpriv execs it, so the pid file holds the postmaster).
    ``stop`` asks for a fast shutdown (SIGINT): SIGTERM would wait for every client to disconnect.
    """

    name = "postgres"
    port = 5433
    url = f"postgresql://postgres@{HOST}:5433/postgres"
    start_timeout = 60.0
    stop_timeout = 20.0
    user = "postgres"

    def __init__(self, home: Path | None = None, port: int | None = None) -> None:
        super().__init__(home)
        if port is not None:
            self.port = port
            self.url = f"postgresql://postgres@{HOST}:{port}/postgres"
        if os.geteuid() == 0:
            # The server runs as the postgres user, who may not be able to enter the checkout (a
            # private parent such as /root or a mktemp directory): keep its data where it can.
            tag = hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:12]
            self.data = Path("/var/tmp") / f"unimq-postgres-{tag}" / "data"

    def bin(self) -> Path | None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
        return versions[-1].parent if versions else None

    def missing_packages(self) -> list[str]:
        return [] if self.bin() is not None else ["postgresql"]

    def as_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", "--"]

    def prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        if os.geteuid() == 0:
            shutil.chown(self.data.parent, self.user, self.user)
            shutil.chown(self.data, self.user, self.user)
        self.data.chmod(0o700)
        bin_dir = self.bin()
        if bin_dir is None:
            raise BrokerError("postgres: no server under /usr/lib/postgresql (apt-get install postgresql)")
        with open(self.log, "ab") as out:
            done = subprocess.run([*self.as_user(), str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                   "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                                  cwd=self.data, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  check=False)
        if done.returncode != 0:
            raise BrokerError(f"postgres: initdb failed; log tail ({self.log}):\n{tail(self.log)}")

    def command(self) -> list[str]:
        bin_dir = self.bin()
        assert bin_dir is not None
        settings = {
            "listen_addresses": HOST, "port": str(self.port), "unix_socket_directories": "",
            "shared_buffers": "32MB", "work_mem": "4MB", "maintenance_work_mem": "16MB", "max_connections": "100",
            "max_wal_size": "256MB", "effective_cache_size": "128MB", "logging_collector": "off",
        }
        return [*self.as_user(), str(bin_dir / "postgres"), "-D", str(self.data),
                *(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}"))]

    def ready(self) -> bool:
        # A StartupMessage (protocol 3.0) for user postgres: a serving cluster with trust auth
        # answers AuthenticationOk ('R', length 8, code 0); one still starting answers 'E'.
        params = b"user\x00postgres\x00database\x00postgres\x00\x00"
        startup = struct.pack("!ii", 8 + len(params), 196608) + params
        return exchange(self.port, startup, 9) == b"R\x00\x00\x00\x08\x00\x00\x00\x00"

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + self.stop_timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        super().stop()


class ServiceBusDouble(Broker):
    """The in-repo Azure Service Bus test double (AMQP 1.0 on 5673), a Python module.

    It keeps its state in data/state.pickle (``--data-dir``), written on SIGTERM and about
    every second, so `restart servicebus` keeps entities and messages. ``port`` and ``home``
    run a second, private instance (tests/faults restarts one of its own).

    The shared instance comes with a static-mode companion on 5674 (state under ``static/``): the
    official emulator's constraints (no ``$unimq-control`` node, no entity created on first use),
    its entities declared by scripts/servicebus-emulator-config.json; the ``servicebus-static``
    conformance target runs there. `up`/`down`/`status servicebus` handle both.
    """

    name = "servicebus"
    port = 5673
    url = SERVICEBUS_CONNECTION_STRING
    module = "unimq_servicebus.testing.double"
    config = ROOT / "scripts" / "servicebus-emulator-config.json"
    start_timeout = 30.0

    def __init__(self, port: int | None = None, home: Path | None = None, static: bool = False) -> None:
        super().__init__(home)
        self.static = static
        if port is not None:
            self.port = port
            self.url = SERVICEBUS_CONNECTION_STRING.replace(":5673;", f":{port};")
        shared = port is None and home is None and not static
        self.companion = ServiceBusDouble(5674, self.dir / "static", static=True) if shared else None

    def python(self) -> str:
        venv = ROOT / ".venv" / "bin" / "python"
        return str(venv) if venv.exists() else "python3"

    def env(self) -> dict[str, str]:
        paths = [str(ROOT / "adapters" / "servicebus"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))

    def install(self) -> None:
        probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({self.module!r}) else 1)"
        found = subprocess.run([self.python(), "-c", probe], check=False, env=self.env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if not found:
            raise BrokerError(f"servicebus: module {self.module} not found for {self.python()} "
                              "(install the adapter: scripts/bootstrap)")

    def command(self) -> list[str]:
        static = ["--static", "--config", str(self.config)] if self.static else []
        return [self.python(), "-m", self.module, "--host", HOST, "--port", str(self.port),
                "--data-dir", str(self.data), *static]

    def ready(self) -> bool:
        # AMQP 1.0 SASL protocol header; an AMQP 1.0 server answers with the same header.
        header = b"AMQP\x03\x01\x00\x00"
        return exchange(self.port, header, 8) == header

    def is_up(self) -> bool:
        return super().is_up() and (self.companion is None or self.companion.is_up())

    def spawn(self) -> None:
        """Start whichever of the pair is not running (the other keeps its clients)."""
        if self.pid() is None:
            super().spawn()
        if self.companion is not None and self.companion.pid() is None:
            self.companion.spawn()

    def startup_done(self, started_at: float) -> bool:
        done = super().startup_done(started_at)
        return (self.companion is None or self.companion.startup_done(started_at)) and done

    def stop(self) -> None:
        if self.companion is not None:
            self.companion.stop()
        super().stop()

    def wipe(self) -> None:
        if self.companion is not None:
            self.companion.wipe()
        super().wipe()


class S3Proxy(Broker):
    """S3Proxy, an S3-compatible server (Maven jars, scripts/jars/s3proxy/pom.xml) over jclouds'
    in-memory ``transient`` blob store, for the claim-check S3 store (docs/payloads.md). Test
    credentials only; the bucket ``unimq-test`` is created on start. ``restart s3`` empties it.
    """

    name = "s3"
    port = 9400
    bucket = "unimq-test"
    identity = "unimq"
    credential = "unimq-s3-test-secret"
    url = f"s3://{identity}:{credential}@{bucket}/?endpoint_url=http://{HOST}:9400&region=us-east-1"
    start_timeout = 60.0

    def __init__(self, home: Path | None = None) -> None:
        super().__init__(home)
        self.libs = STATE / self.name / "libs"
        self.config = self.dir / "s3proxy.conf"
        self.logback = self.dir / "logback.xml"

    def install(self) -> None:
        maven_libs("s3proxy", self.libs)

    def prepare(self) -> None:
        self.config.write_text(
            f"s3proxy.endpoint=http://{HOST}:{self.port}\n"
            "s3proxy.authorization=aws-v2-or-v4\n"
            f"s3proxy.identity={self.identity}\ns3proxy.credential={self.credential}\n"
            f"jclouds.provider=transient\njclouds.identity={self.identity}\njclouds.credential={self.credential}\n"
        )
        self.logback.write_text(
            "<configuration><appender name=\"out\" class=\"ch.qos.logback.core.ConsoleAppender\">"
            "<encoder><pattern>%d %level %logger{20} %msg%n</pattern></encoder></appender>"
            "<root level=\"WARN\"><appender-ref ref=\"out\"/></root></configuration>\n"
        )

    def command(self) -> list[str]:
        return ["java", "-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Dlogback.configurationFile={self.logback}", "-cp", f"{self.libs}/*",
                "org.gaul.s3proxy.Main", "--properties", str(self.config)]

    def ready(self) -> bool:
        # Unsigned requests are refused (403) once the server answers; then make sure of the bucket.
        return http_status(self.port, "/") == 403 and self.create_bucket()

    def create_bucket(self) -> bool:
        """PUT the bucket with an AWS signature v2 (standard library only); 409 = it exists."""
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        digest = hmac.new(self.credential.encode(), f"PUT\n\n\n{date}\n/{self.bucket}".encode(), "sha1").digest()
        headers = {"Date": date, "Authorization": f"AWS {self.identity}:{base64.b64encode(digest).decode()}"}
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=5.0)
            conn.request("PUT", f"/{self.bucket}", headers=headers)
            status = conn.getresponse().status
            conn.close()
        except OSError:
            return False
        return status in (200, 409)


class Azurite(Broker):
    """Azurite, Microsoft's Azure Storage emulator (blob service only), from npm into
    .brokers/azurite, in memory (``restart azurite`` empties it), for the claim-check Azure Blob
    store. ``url`` is the well-known development-storage connection string (a public test key).
    """

    name = "azurite"
    port = 10000
    version = "3.37.0"
    account = "devstoreaccount1"
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    url = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
           f"BlobEndpoint=http://{HOST}:10000/{account};")
    start_timeout = 60.0

    def __init__(self, home: Path | None = None) -> None:
        super().__init__(home)
        self.prefix = STATE / self.name / "npm"
        self.bin = self.prefix / "node_modules" / ".bin" / "azurite-blob"

    def install(self) -> None:
        stamp = self.prefix / ".version"
        if self.bin.exists() and stamp.exists() and stamp.read_text().strip() == self.version:
            return
        if not shutil.which("npm"):
            apt_install(["nodejs", "npm"])
        say(f"azurite: npm install azurite@{self.version} (first run only) ...")
        self.prefix.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix",
                                 str(self.prefix), f"azurite@{self.version}"],
                                check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0 or not self.bin.exists():
            raise BrokerError(f"npm install azurite failed:\n{result.stdout[-3000:]}")
        stamp.write_text(self.version + "\n")

    def command(self) -> list[str]:
        return [str(self.bin), "--blobHost", HOST, "--blobPort", str(self.port), "--inMemoryPersistence",
                "--extentMemoryLimit", "1024", "--skipApiVersionCheck", "--disableProductStyleUrl"]

    def ready(self) -> bool:
        # An unsigned account request is answered (403/400) once the blob service listens.
        return http_status(self.port, f"/{self.account}?comp=list") in (400, 403)


# ---------------------------------------------------------------------------------------------
# Clusters (issue 28): three nodes per backend on loopback, on ports clear of the single nodes
# ---------------------------------------------------------------------------------------------

class Cluster(Broker):
    """Several nodes of one backend, started, probed and stopped together under .brokers/<name>/.

    `up` spawns every node that is not running, waits until each answers, then forms the cluster
    (form(), idempotent) and waits until formed() holds. ``nodes`` are ordinary Broker instances,
    so a test can SIGKILL one and spawn it again (tests/cluster).
    """

    def __init__(self, home: Path | None = None) -> None:
        super().__init__(home)
        self.nodes = self.make_nodes()
        self.port = self.nodes[0].port

    def make_nodes(self) -> list[Broker]:
        raise NotImplementedError

    def form(self) -> None:
        """Join the running nodes into one cluster (nothing to do where the config does it)."""

    def formed(self) -> bool:
        return True

    def missing_packages(self) -> list[str]:
        return sorted({p for node in self.nodes for p in node.missing_packages()})

    def install(self) -> None:
        for node in self.nodes:
            node.install()

    def pid(self) -> int | None:
        pids = [node.pid() for node in self.nodes]
        return pids[0] if all(p is not None for p in pids) else None

    def is_up(self) -> bool:
        return all(node.is_up() for node in self.nodes) and self.formed()

    def ready(self) -> bool:
        return all(node.ready() for node in self.nodes)

    def spawn(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            if node.pid() is None:
                node.spawn()

    def startup_done(self, started_at: float) -> bool:
        if not all([node.startup_done(started_at) for node in self.nodes]):
            return False
        if not self.formed():
            self.form()
            if not self.formed():
                if time.monotonic() - started_at > self.start_timeout:
                    raise BrokerError(f"{self.name}: nodes up but no cluster after {self.start_timeout:.0f}s")
                return False
        return True

    def stop(self) -> None:
        # All at once: a Kafka or RabbitMQ node stopped last would wait for a quorum that is gone.
        for node in self.nodes:
            pid = node.pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def wipe(self) -> None:
        for node in self.nodes:
            node.wipe()


class KafkaClusterNode(Kafka):
    """One KRaft broker+controller of kafka-cluster: formatted with the cluster's shared id."""

    def __init__(self, home: Path, ports: tuple[int, int], settings: dict[str, str], cluster_id: Path) -> None:
        super().__init__(home, ports, settings, heap="256m")
        self.name = f"kafka-cluster/{home.name}"
        self.cluster_id = cluster_id

    def java(self, main: str, *args: str) -> list[str]:
        return ["-Xms64m" if arg == "-Xms128m" else arg for arg in super().java(main, *args)]

    def prepare(self) -> None:
        self.config.write_text("".join(f"{key}={value}\n" for key, value in self.settings().items()))
        if not (self.data / "meta.properties").exists():
            result = subprocess.run(
                self.java("kafka.tools.StorageTool", "format", "-t", self.cluster_id.read_text().strip(),
                          "-c", str(self.config)),
                check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            if result.returncode != 0:
                raise BrokerError(f"{self.name}: storage format failed:\n{result.stdout[-3000:]}")


class KafkaCluster(Cluster):
    """Three KRaft nodes (each broker and controller), 256 MB heap each: replication 3,
    min.insync.replicas 2, a dead broker fenced after 3 s (broker.session.timeout.ms)."""

    name = "kafka-cluster"
    ports = (19092, 19093, 19094)
    controller_ports = (19095, 19096, 19097)
    url = "kafka://" + ",".join(f"{HOST}:{p}" for p in ports)
    start_timeout = 180.0

    def make_nodes(self) -> list[Broker]:
        voters = ",".join(f"{i + 1}@{HOST}:{p}" for i, p in enumerate(self.controller_ports))
        nodes: list[Broker] = []
        for i, (port, cport) in enumerate(zip(self.ports, self.controller_ports, strict=True)):
            settings = {
                "node.id": str(i + 1), "controller.quorum.voters": voters,
                "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
                "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "default.replication.factor": "3", "min.insync.replicas": "2",
                "offsets.topic.replication.factor": "3", "transaction.state.log.replication.factor": "3",
                "transaction.state.log.min.isr": "2", "log.flush.interval.messages": "9223372036854775807",
                "broker.heartbeat.interval.ms": "500", "broker.session.timeout.ms": "3000",
            }
            nodes.append(KafkaClusterNode(self.dir / f"n{i + 1}", (port, cport), settings, self.dir / "cluster-id"))
        return nodes

    def spawn(self) -> None:
        ident = self.dir / "cluster-id"
        if not ident.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            ident.write_text(base64.urlsafe_b64encode(b"unimq-cluster-28").rstrip(b"=").decode() + "\n")
        super().spawn()


class NatsClusterNode(Nats):
    """One nats-server of nats-cluster: JetStream on, routes to the three cluster ports."""

    route_ports = (16222, 16223, 16224)

    def __init__(self, home: Path, index: int) -> None:
        super().__init__(home)
        self.index = index
        self.name = f"nats-cluster/{home.name}"
        self.port = 14222 + index
        self.monitor_port = 18222 + index

    def prepare(self) -> None:
        routes = ", ".join(f"nats-route://{HOST}:{p}" for p in self.route_ports)
        (self.dir / "nats.conf").write_text(
            f"server_name: n{self.index + 1}\n"
            f"host: {HOST}\nport: {self.port}\nhttp: \"{HOST}:{self.monitor_port}\"\n"
            f"jetstream {{\n  store_dir: \"{self.data}\"\n  max_memory_store: 64MB\n  max_file_store: 512MB\n}}\n"
            f"cluster {{\n  name: unimq\n  host: {HOST}\n  port: {self.route_ports[self.index]}\n"
            f"  routes: [{routes}]\n}}\n"
        )

    def ready(self) -> bool:
        # Plain /healthz also waits for every stream and consumer replica to catch up, which a node
        # restarted mid-stream only does once clients use them again.
        return http_status(self.monitor_port, "/healthz?js-enabled-only=true") == 200


class NatsCluster(Cluster):
    """Three nats-servers in one cluster with JetStream: streams created with replicas=3 (R3)."""

    name = "nats-cluster"
    url = "nats://" + ",".join(f"{HOST}:{14222 + i}" for i in range(3)) + "?replicas=3"
    start_timeout = 60.0

    def make_nodes(self) -> list[Broker]:
        return [NatsClusterNode(self.dir / f"n{i + 1}", i) for i in range(3)]


class RedisClusterNode(Redis):
    """One redis-server of redis-cluster (cluster bus on port + 10000, 2 s node timeout)."""

    def __init__(self, home: Path, port: int) -> None:
        super().__init__(home)
        self.name = f"redis-cluster/{home.name}"
        self.port = port

    def command(self) -> list[str]:
        return [*super().command(), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000"]


class RedisCluster(Cluster):
    """Redis Cluster: three primaries and three replicas (redis-cli --cluster create)."""

    name = "redis-cluster"
    ports = (17000, 17001, 17002, 17003, 17004, 17005)
    url = "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in ports[:3])
    start_timeout = 60.0

    def make_nodes(self) -> list[Broker]:
        return [RedisClusterNode(self.dir / f"n{i + 1}", p) for i, p in enumerate(self.ports)]

    def info(self) -> bytes:
        return exchange(self.ports[0], b"CLUSTER INFO\r\nQUIT\r\n", 4096, timeout=2.0)

    def formed(self) -> bool:
        return b"cluster_state:ok" in self.info()

    def form(self) -> None:
        if b"cluster_slots_assigned:0\r\n" not in self.info():
            return  # created already: wait for the nodes to agree
        result = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports), "--cluster-replicas", "1",
             "--cluster-yes"], check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        if result.returncode != 0:
            raise BrokerError(f"{self.name}: redis-cli --cluster create failed:\n{result.stdout[-3000:]}")


class RabbitMQCluster(Cluster):
    """Three RabbitMQ nodes (unimqc1..3@localhost) sharing one Erlang cookie; nodes 2 and 3 join
    node 1 with rabbitmqctl join_cluster. Use quorum queues (``?queue_type=quorum``)."""

    name = "rabbitmq-cluster"
    ports = (5682, 5683, 5684)
    url = "amqp://guest:guest@" + ",".join(f"{HOST}:{p}" for p in ports) + "/?queue_type=quorum"
    start_timeout = 240.0
    stop_timeout = 30.0

    def make_nodes(self) -> list[Broker]:
        nodes: list[Broker] = []
        for i, port in enumerate(self.ports):
            node = RabbitMQ(self.dir / f"n{i + 1}", (port, 25682 + i), f"unimqc{i + 1}@localhost")
            node.name = f"{self.name}/n{i + 1}"
            nodes.append(node)
        return nodes

    def spawn(self) -> None:
        cookie = self.dir / "cookie"
        if not cookie.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            cookie.write_text(uuid.uuid4().hex)
        for node in self.nodes:
            home = node.dir / "home"
            home.mkdir(parents=True, exist_ok=True)
            shared = home / ".erlang.cookie"
            if not shared.exists():
                shutil.copy(cookie, shared)
        super().spawn()

    def ctl(self, node: Broker, *args: str) -> subprocess.CompletedProcess[str]:
        assert isinstance(node, RabbitMQ)
        return subprocess.run([str(node.bin / "rabbitmqctl"), "-n", node.node, *args], env=node.env(), check=False,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)

    def running(self) -> str:
        return self.ctl(self.nodes[0], "eval", "rabbit_nodes:all_running().").stdout

    def formed(self) -> bool:
        out = self.running()
        return all(isinstance(n, RabbitMQ) and n.node in out for n in self.nodes)

    def form(self) -> None:
        first = self.nodes[0]
        assert isinstance(first, RabbitMQ)
        running = self.running()
        for node in self.nodes[1:]:
            assert isinstance(node, RabbitMQ)
            if node.node in running:
                continue
            for args in (("stop_app",), ("join_cluster", first.node), ("start_app",)):
                result = self.ctl(node, *args)
                if result.returncode != 0:
                    raise BrokerError(f"{self.name}: rabbitmqctl {' '.join(args)} on {node.node} failed:\n"
                                      f"{result.stdout[-2000:]}")


BROKERS: dict[str, type[Broker]] = {
    "rabbitmq": RabbitMQ, "redis": Redis, "nats": Nats, "kafka": Kafka, "sqs": ElasticMQ,
    "servicebus": ServiceBusDouble, "postgres": Postgres,
    "s3": S3Proxy, "azurite": Azurite,
    "kafka-cluster": KafkaCluster, "nats-cluster": NatsCluster, "redis-cluster": RedisCluster,
    "rabbitmq-cluster": RabbitMQCluster,
}


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

def line(broker: Broker, state: str, seconds: float | None = None, note: str = "") -> None:
    took = f"  ({seconds:.1f}s)" if seconds is not None else ""
    print(f"{broker.name:<10}  {state:<4}  {broker.url}{took}{note}", flush=True)


def up(brokers: list[Broker]) -> bool:
    """Install what is missing, start every broker that is not running, then wait for each.

    Brokers boot in parallel; each line is printed when that broker answers, with the seconds
    since `up` began (so a first run's times include apt-get and Maven downloads).
    """
    ok = True
    t0 = time.monotonic()
    down_brokers = []
    for broker in brokers:
        if broker.is_up():
            line(broker, "up", note="  (already running)")
        else:
            down_brokers.append(broker)
    packages = [p for broker in down_brokers for p in broker.missing_packages()]
    if packages:
        try:
            apt_install(packages)
        except BrokerError as exc:
            say(str(exc))
            for broker in down_brokers:
                line(broker, "FAIL")
            return False
    started: list[tuple[Broker, float]] = []
    for broker in down_brokers:
        try:
            broker.install()
            broker.spawn()
            started.append((broker, time.monotonic()))
        except BrokerError as exc:
            line(broker, "FAIL")
            say(str(exc))
            ok = False
    while started:
        for broker, spawned_at in list(started):
            try:
                if not broker.startup_done(spawned_at):
                    continue
                line(broker, "up", time.monotonic() - t0)
            except BrokerError as exc:
                line(broker, "FAIL", time.monotonic() - t0)
                say(str(exc))
                ok = False
            started.remove((broker, spawned_at))
        time.sleep(0.2)
    return ok


def down(brokers: list[Broker], wipe: bool = True) -> bool:
    for broker in brokers:
        t0 = time.monotonic()
        broker.stop()
        if wipe:
            broker.wipe()
        line(broker, "down", time.monotonic() - t0)
    return True


def status(brokers: list[Broker]) -> bool:
    ok = True
    for broker in brokers:
        running = broker.is_up()
        ok = ok and running
        line(broker, "up" if running else "down")
    return ok


def env(brokers: list[Broker]) -> bool:
    for broker in brokers:
        if not broker.is_up():
            continue
        if isinstance(broker, ServiceBusDouble):
            print(f"export UNIMQ_TEST_SERVICEBUS_CONNECTION_STRING={shlex.quote(broker.url)}")
        else:
            print(f"export UNIMQ_TEST_{broker.name.upper().replace('-', '_')}_URL={shlex.quote(broker.url)}")
    return True


USAGE = f"""usage: scripts/brokers up|down|stop|status|restart|env [backend ...]
  down: stop and wipe data; stop: stop and keep data (up starts it again with its data)
backends: {', '.join(ALL_BACKENDS)} (default: {', '.join(DEFAULT_BACKENDS)})
clusters (three nodes each, on their own ports): kafka-cluster nats-cluster redis-cluster rabbitmq-cluster
state, data and logs: {STATE}/<backend>/"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command = argv[0]
    names = argv[1:] or (ALL_BACKENDS if command == "env" else DEFAULT_BACKENDS)
    unknown = [n for n in names if n not in BROKERS]
    if unknown or command not in ("up", "down", "stop", "status", "restart", "env"):
        print(USAGE, file=sys.stderr)
        return 2
    brokers = [BROKERS[n]() for n in dict.fromkeys(names)]
    if command == "up":
        ok = up(brokers)
    elif command == "down":
        ok = down(brokers)
    elif command == "stop":
        ok = down(brokers, wipe=False)
    elif command == "restart":
        ok = down(brokers, wipe=False) and up(brokers)
    elif command == "status":
        ok = status(brokers)
    else:
        ok = env(brokers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
