"""A Redis Cluster of the test's own: redis-server processes on free loopback ports.

Three masters with one replica each by default (six processes), created with
``redis-cli --cluster create``; one master without replicas for ``bench/cluster.py``'s
baseline (``redis-cli`` refuses fewer than three masters, so that one gets its slots with
``CLUSTER ADDSLOTSRANGE``). ``cluster-require-full-coverage no``: while one master is
down and not yet replaced, the others keep answering for their own slots. A short
``cluster-node-timeout`` makes a failover take a second or two instead of fifteen.

The session fixture :func:`redis_cluster` starts one cluster for every test that asks
for it; a test that kills a node restarts it (as a replica) before it ends.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.redis_server import REDIS_SERVER, RedisServer, free_port
from tests.services import IN_CI

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
CLIENT_CLASS = "django_onceonly.stores.redis_cluster.ClusterClient"
SLOTS = 16384


def missing() -> str:
    """Why no cluster can be started here ("" when it can)."""
    absent = [path for path in (REDIS_SERVER, REDIS_CLI) if not Path(path).exists()]
    return f"{' and '.join(absent)} not installed (apt-get install redis-server)" if absent else ""


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES``, as far as the tests need it."""

    node_id: str
    port: int
    master: bool
    failed: bool
    master_id: str  # the master's id for a replica, "" for a master
    slots: tuple[tuple[int, int], ...]  # inclusive ranges


class OwnCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each."""

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        persistence: str = "none",
    ) -> None:
        self.directory = directory
        self.masters = masters
        self.replicas = replicas
        options = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # in the node's own --dir
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip
        self.nodes = [
            RedisServer(directory / f"node-{n}", persistence, *options)
            for n in range(masters * (1 + replicas))
        ]
        for node in self.nodes:
            node.port = self._free_port()

    # -- lifecycle -----------------------------------------------------------------------

    def _free_port(self) -> int:
        """A port and bus port (+10000) below Linux's ephemeral range (32768 and up), so
        that no outgoing connection takes one before the node binds it, and apart from
        this cluster's other nodes."""
        taken = {port for node in self.nodes for port in (node.port, node.port + 10000)}
        return free_port(below=22768, avoid=taken)

    def _start_node(self, node: RedisServer) -> None:
        # Another process can still bind the port between the check and the start.
        for attempt in range(5):
            try:
                node.start()
                return
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == 4:
                    raise
                node.port = self._free_port()

    def start(self, timeout: float = 60) -> OwnCluster:
        for node in self.nodes:
            self._start_node(node)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        if self.masters >= 3:
            done = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *addresses,
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        else:
            self._create_small()
        self.wait_ok(timeout)
        return self

    def _create_small(self) -> None:
        """Masters and replicas by hand: ``redis-cli`` wants at least three masters."""
        first = self.nodes[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        per_master = SLOTS // self.masters
        for index in range(self.masters):
            last = SLOTS - 1 if index == self.masters - 1 else (index + 1) * per_master - 1
            client = self.nodes[index].client()
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * per_master, last)
        self._wait(lambda: len(self.topology()) == len(self.nodes), 30, "the nodes to meet")
        for index, node in enumerate(self.nodes[self.masters :]):
            master_id = self.nodes[index % self.masters].client().execute_command("CLUSTER", "MYID")
            node.client().execute_command("CLUSTER", "REPLICATE", master_id)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.stop(signal.SIGKILL)

    def kill(self, node: RedisServer) -> None:
        """A crash: ``SIGKILL``, so nothing is flushed or handed over."""
        node.stop(signal.SIGKILL)

    # -- state -----------------------------------------------------------------------

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def topology(self) -> list[ClusterNodeInfo]:
        """``CLUSTER NODES`` as the first live node sees it."""
        text = self.live()[0].client().execute_command("CLUSTER", "NODES")
        if isinstance(text, bytes):
            text = text.decode()
        nodes = []
        for line in text.strip().splitlines():
            fields = line.split()
            flags = fields[2].split(",")
            slots = []
            for item in fields[8:]:
                if item.startswith("["):
                    continue  # a slot being migrated
                start, _, end = item.partition("-")
                slots.append((int(start), int(end or start)))
            nodes.append(
                ClusterNodeInfo(
                    node_id=fields[0],
                    port=int(fields[1].split(":")[1].split("@")[0]),
                    master="master" in flags,
                    failed="fail" in flags,
                    master_id="" if fields[3] == "-" else fields[3],
                    slots=tuple(slots),
                )
            )
        return nodes

    def master_of(self, slot: int) -> int:
        """The port of the master serving ``slot`` (as the first live node sees it)."""
        for info in self.topology():
            serves = any(start <= slot <= end for start, end in info.slots)
            if serves and info.master and not info.failed:
                return info.port
        raise LookupError(f"no live master serves slot {slot}")

    def master_nodes(self) -> list[RedisServer]:
        ports = {info.port for info in self.topology() if info.master and info.slots}
        return [node for node in self.live() if node.port in ports]

    def is_ok(self) -> bool:
        """Every live node says ``cluster_state:ok``, every slot has a live master, and
        every replica is in sync with it."""
        try:
            for node in self.live():
                client = node.client()
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                info = client.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
            topology = self.topology()
        except redis.exceptions.RedisError:
            return False
        live = {node.port for node in self.live()}
        served = sum(
            end - start + 1
            for info in topology
            if info.master and info.port in live and not info.failed
            for start, end in info.slots
        )
        return served == SLOTS

    def wait_ok(self, timeout: float = 30) -> float:
        """Wait until :meth:`is_ok`; return how long that took."""
        return self._wait(self.is_ok, timeout, "cluster_state:ok on every node")

    def _wait(self, condition: Any, timeout: float, what: str) -> float:
        began = time.monotonic()
        while not condition():
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)
        return time.monotonic() - began

    # -- for the tests -------------------------------------------------------------------

    @property
    def location(self) -> str:
        """Every node as a startup node, as ``LOCATION`` lists them."""
        return ",".join(f"redis://127.0.0.1:{node.port}" for node in self.nodes)

    def cache(self, prefix: str, **options: Any) -> dict[str, Any]:
        """A django-redis ``CACHES`` entry on this cluster that fails fast when a node is down.

        No retries (the tests want to see each failure); the client refreshes its slot
        map after each one, so the next call goes to the new master.
        """
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": self.location,
            "KEY_PREFIX": prefix,
            "OPTIONS": {
                "CLIENT_CLASS": CLIENT_CLASS,
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 2,
                "CLUSTER_KWARGS": {"retry": Retry(NoBackoff(), 0)},
                **options,
            },
        }

    def delete_keys(self, prefix: str) -> None:
        """Delete the keys under ``prefix`` on every master (one by one: they span slots)."""
        for node in self.master_nodes():
            client = node.client()
            names = list(client.scan_iter(match=prefix + "*", count=1000))
            with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.unlink(name)
                pipe.execute()

    def keys_per_master(self, prefix: str) -> dict[int, int]:
        """How many keys under ``prefix`` each master holds, by port."""
        return {
            node.port: sum(1 for _ in node.client().scan_iter(match=prefix + "*", count=1000))
            for node in self.master_nodes()
        }


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[OwnCluster]:
    """One three-master, three-replica cluster for the whole session."""
    reason = missing()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="onceonly-cluster-") as directory:
        cluster = OwnCluster(Path(directory))
        try:
            yield cluster.start()
        finally:
            cluster.stop()
