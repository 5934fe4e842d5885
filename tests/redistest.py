"""Real redis-server processes for tests, on free ports of 127.0.0.1: one server
(stoppable and restartable on the same port; optionally a lone cluster node
owning every slot) and a Redis Cluster of several masters, with replicas when a
test needs a failover. Every process is stopped by its PID at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from gwtest import wait_for
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_port(taken: set[int] | None = None) -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", 0))
                port = int(a.getsockname()[1])
                if port + 10000 > 65535 or (taken and (port in taken or port + 10000 in taken)):
                    continue
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """``redis-server --port P --save '' --appendonly no``; ``stop()`` then ``start()``
    brings it back on the same port (empty, as after a crash without persistence).

    With ``cluster=True`` it is a cluster node; alone (``own_slots``) it takes every
    slot, else :class:`RedisClusterNodes` joins it to the others."""

    def __init__(self, port: int | None = None, cluster: bool = False,
                 workdir: Path | None = None, own_slots: bool = True,
                 args: tuple[str, ...] = ()) -> None:
        self.port = port or (cluster_port() if cluster else free_port())
        self.cluster = cluster
        self.workdir = workdir
        self.own_slots = own_slots
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def spawn(self) -> None:
        """Start the process (without waiting for it to answer)."""
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]
        if self.cluster:
            assert self.workdir is not None
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     str(self.workdir / f"nodes-{self.port}.conf"), "--dir", str(self.workdir)]
        self.proc = subprocess.Popen([*args, *self.args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self.spawn()
        ok = wait_for(self._ping, timeout=10, interval=0.02)
        assert ok, "redis-server did not start"
        if self.cluster and self.own_slots:
            c = self.client()
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
            assert wait_for(lambda: b"cluster_state:ok" in c.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "INFO"), timeout=10)

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self, timeout_s: float = 2.0) -> redis.Redis:
        """A client of this node alone; a call that fails or times out is not retried."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s,
                           socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))

    def stored_keys(self) -> list[str]:
        return sorted(k.decode() if isinstance(k, bytes) else str(k)
                      for k in self.client().keys("*"))

    def evalsha_calls(self) -> int:
        stats = self.client().info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung host)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: a paused server answers again."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """SIGKILL (a paused one too), then reap: the port is free when this returns."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self.paused = False


@contextmanager
def redis_server(**kwargs: object) -> Iterator[RedisServer]:
    server = RedisServer(**kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RedisClusterNodes:
    """``masters`` cluster nodes (plus ``replicas`` per master) joined by
    ``redis-cli --cluster create``; :meth:`master_of` names the node serving a key,
    :meth:`wait_ok` waits for ``cluster_state:ok`` on every live node."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 1000) -> None:
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        ports: set[int] = set()
        self.nodes: list[RedisServer] = []
        self.started_in_s = 0.0
        for _ in range(masters * (1 + replicas)):
            port = cluster_port(ports)
            ports |= {port, port + 10000}
            self.nodes.append(RedisServer(
                port, cluster=True, workdir=workdir, own_slots=False,
                args=("--cluster-node-timeout", str(node_timeout_ms),
                      # a replica promoted at once, however long it was cut off
                      "--cluster-replica-validity-factor", "0",
                      # a replica's first sync starts at once (the default waits 5 s)
                      "--repl-diskless-sync-delay", "0")))

    @property
    def url(self) -> str:
        """A seed node's URL (a cluster client learns the others from it)."""
        return self.nodes[0].url

    def start(self, timeout_s: float = 20.0) -> None:
        t0 = time.monotonic()
        for n in self.nodes:
            n.spawn()
        for n in self.nodes:
            assert wait_for(n._ping, timeout=10, interval=0.02), "redis-server did not start"
        out = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, timeout=timeout_s, check=False)
        assert out.returncode == 0, out.stdout.decode()[-2000:] + out.stderr.decode()[-2000:]
        self.wait_ok(timeout_s)
        self.started_in_s = time.monotonic() - t0

    def live(self) -> list[RedisServer]:
        """The nodes running and not paused."""
        return [n for n in self.nodes
                if n.proc is not None and n.proc.poll() is None and not n.paused]

    def wait_ok(self, timeout_s: float = 20.0) -> None:
        """Every live node says ``cluster_state:ok`` and agrees on who serves every slot."""
        def ok() -> bool:
            try:
                for n in self.live():
                    info = n.client().execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                    if b"cluster_state:ok" not in info:
                        return False
                    if self.replicas and not self._replicas_synced(n):
                        return False
                return True
            except redis.RedisError:
                return False

        assert wait_for(ok, timeout=timeout_s, interval=0.05), "the cluster did not become ok"

    @staticmethod
    def _replicas_synced(n: RedisServer) -> bool:
        info = n.client().info("replication")
        if info.get("role") == "slave":
            return bool(info.get("master_link_status") == "up")
        return True

    def master_of(self, key: str | bytes) -> RedisServer:
        """The live master serving ``key``'s slot, as the live nodes see it now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for n in self.live():
            try:
                shards = n.client(0.5).execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except redis.RedisError:
                continue
            for lo, hi, master, *_ in shards:
                if lo <= slot <= hi:
                    port = int(master[1])
                    return next(x for x in self.nodes if x.port == port)
        raise AssertionError(f"no live node serves slot {slot}")

    def keys(self, pattern: str = "*") -> list[str]:
        """Every key stored on the live masters."""
        out: list[str] = []
        for n in self.live():
            c = n.client()
            if c.info("replication").get("role") == "master":
                out += [k.decode() if isinstance(k, bytes) else str(k) for k in c.keys(pattern)]
        return sorted(out)

    def get(self, key: str) -> bytes | None:
        value = self.master_of(key).client(0.5).get(key)
        return value.encode() if isinstance(value, str) else value

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@contextmanager
def redis_cluster(workdir: Path, masters: int = 3, replicas: int = 0,
                  node_timeout_ms: int = 1000) -> Iterator[RedisClusterNodes]:
    cluster = RedisClusterNodes(workdir, masters, replicas, node_timeout_ms)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
