"""A django-redis client for Redis Cluster, so that ``RedisStore`` can run on one.

django-redis has no cluster client of its own. This one gives the cache a
``redis.cluster.RedisCluster`` (which routes each command to the master of its key's
slot and follows ``MOVED`` redirections) instead of a ``redis.Redis``::

    CACHES = {
        "onceonly": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://node-a:6379,redis://node-b:6379",  # any nodes: startup nodes
            "OPTIONS": {
                "CLIENT_CLASS": "django_onceonly.stores.redis_cluster.ClusterClient",
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 2,
            },
        },
    }

Every ``LOCATION`` is a startup node: the client asks the first that answers for the
slot map, so one configuration endpoint is enough. ``USERNAME``, ``PASSWORD``,
``SOCKET_CONNECT_TIMEOUT``, ``SOCKET_TIMEOUT`` and ``CONNECTION_POOL_KWARGS`` (the
connection arguments) apply to every node; a ``rediss://`` URL turns TLS on.
``CLUSTER_KWARGS`` passes arguments to ``RedisCluster`` itself, after those. A ``retry``
in either is the cluster client's: how often a command is retried after a connection
error or a ``TRYAGAIN``/``CLUSTERDOWN`` reply, with the slot map refreshed in between
(redis-py 8's default: 10 times, backing off from 10 ms up to 1 s).

``RedisStore`` needs nothing more: each of its scripts touches one hash slot, its
pipelines are split per node by redis-py, and scripts are loaded on every master.
Plain cache calls work for single-key commands; commands across slots (``delete_many``,
``clear``, ``keys``) are not supported by this client.
"""

from __future__ import annotations

import functools
from typing import Any

from django_redis.client import DefaultClient
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.connection import parse_url

__all__ = ["ClusterClient", "ScriptRedisCluster"]


class ScriptRedisCluster(RedisCluster):
    """``RedisCluster`` whose pipelines take ``EVALSHA``, routed by the script's keys.

    redis-py refuses ``EVALSHA`` in a cluster pipeline because a script's keys could
    span slots. ``RedisStore``'s never do (a record's keys share one hash tag), so each
    call is routed to its slot's master like any keyed command; a call whose keys did
    span slots would still get Redis's own ``CROSSSLOT`` error.
    """

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe: ClusterPipeline = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        setattr(pipe, "evalsha", functools.partial(pipe.execute_command, "EVALSHA"))  # noqa: B010
        return pipe


class ClusterClient(DefaultClient):  # type: ignore[misc]  # django-redis is untyped
    """A django-redis ``CLIENT_CLASS`` whose raw client is a :class:`ScriptRedisCluster`."""

    def get_next_client_index(self, write: bool = True, tried: list[int] | None = None) -> int:
        # One RedisCluster reaches every node: the other LOCATIONs are startup nodes, not
        # read replicas as they are for DefaultClient.
        return 0

    def connect(self, index: int = 0) -> Any:
        params = self.connection_factory.make_connection_params(self._server[0])
        url = params.pop("url")
        params.pop("parser_class", None)  # RedisCluster picks the parser of its nodes
        kwargs: dict[str, Any] = {
            **params,
            **self._options.get("CONNECTION_POOL_KWARGS", {}),
            **self._options.get("CLUSTER_KWARGS", {}),
        }
        # The first URL's node is a startup node too (from_url adds it).
        kwargs["startup_nodes"] = [
            ClusterNode(node.get("host", "localhost"), node.get("port", 6379))  # type: ignore[no-untyped-call]
            for node in map(parse_url, self._server[1:])
        ]
        return ScriptRedisCluster.from_url(url, **kwargs)

    def disconnect(self, index: int = 0, client: Any = None) -> None:
        client = client if client is not None else self._clients[0]
        if client is not None:
            client.close()
