"""The client's connection pool (reconciler/client.py ``_LeanPool``): httpcore's own
decisions on which connection serves which request, and which are closed, made in one pass
over the connections rather than one per idle connection.

Fake connections stand in for httpcore's: each says what state it is in and counts how
often it is asked. The lean pool and httpcore's are given the same random states side by
side and must decide alike.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import httpcore
import pytest
from httpcore._sync.connection_pool import PoolRequest

from reconciler.client import _LeanPool, http_client

ORIGINS = [httpcore.URL("http://a.example/").origin, httpcore.URL("http://b.example/").origin]


class Conn:
    """A connection in a given state; counts every question asked of it."""

    def __init__(self, number: int, origin: httpcore.Origin, asked: Counter[str], *,
                 closed: bool = False, expired: bool = False, idle: bool = False,
                 available: bool = False) -> None:
        self.number, self.origin, self.asked = number, origin, asked
        self.closed, self.expired, self.idle, self.available = closed, expired, idle, available

    def is_closed(self) -> bool:
        self.asked["is_closed"] += 1
        return self.closed

    def has_expired(self) -> bool:
        self.asked["has_expired"] += 1
        return self.expired

    def is_idle(self) -> bool:
        self.asked["is_idle"] += 1
        return self.idle

    def is_available(self) -> bool:
        self.asked["is_available"] += 1
        return self.available

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        self.asked["can_handle_request"] += 1
        return origin == self.origin

    def __repr__(self) -> str:
        return f"Conn({self.number})"


def pool_of(cls: type[httpcore.ConnectionPool], conns: list[dict[str, Any]],
            requests: list[tuple[int, int | None]], *, max_connections: int,
            max_keepalive: int) -> tuple[httpcore.ConnectionPool, Counter[str]]:
    """A pool of ``cls`` holding connections in the states ``conns``, and ``requests``:
    (origin index, the index of the connection it has, or None: queued)."""
    asked: Counter[str] = Counter()
    pool = cls(max_connections=max_connections, max_keepalive_connections=max_keepalive)
    made = [Conn(i, ORIGINS[c["origin"]], asked, **{k: v for k, v in c.items()
                                                    if k != "origin"})
            for i, c in enumerate(conns)]
    pool._connections = list(made)  # type: ignore[arg-type]
    for origin, has in requests:
        pool_request = PoolRequest(httpcore.Request("GET", ORIGINS[origin].scheme + b"://"
                                                    + ORIGINS[origin].host + b"/"))
        if has is not None:
            pool_request.assign_to_connection(made[has])  # type: ignore[arg-type]
        pool._requests.append(pool_request)
    count = len(conns)

    def create_connection(origin: httpcore.Origin) -> Conn:
        nonlocal count
        count += 1
        return Conn(count - 1, origin, asked)

    pool.create_connection = create_connection  # type: ignore[method-assign,assignment]
    return pool, asked


def decided(pool: httpcore.ConnectionPool, closing: list[Any]) -> tuple[Any, ...]:
    def number(conn: Any) -> int | None:
        return None if conn is None else int(conn.number)

    return ([number(c) for c in pool._connections], [number(c) for c in closing],
            [number(r.connection) for r in pool._requests])


def random_case(rng: random.Random) -> tuple[list[dict[str, Any]], list[tuple[int, int | None]],
                                             int, int]:
    conns = []
    for _ in range(rng.randrange(0, 12)):
        idle = rng.random() < 0.4
        conns.append({"origin": rng.randrange(2), "closed": rng.random() < 0.1,
                      "expired": rng.random() < 0.1, "idle": idle,
                      "available": idle and rng.random() < 0.9})
    requests: list[tuple[int, int | None]] = [
        (rng.randrange(2), rng.randrange(len(conns)) if conns and rng.random() < 0.5 else None)
        for _ in range(rng.randrange(0, 6))]
    max_connections = rng.randrange(1, 14)
    return conns, requests, max_connections, rng.randrange(0, max_connections + 1)


@pytest.mark.parametrize("seed", range(300))
def test_the_lean_pool_decides_as_httpcores_does(seed: int) -> None:
    """The same connection for each request, never an expired one; the connections closed
    are httpcore's, but for expired ones it did not come to (closed later instead)."""
    conns, requests, max_connections, _ = random_case(random.Random(seed))
    max_connections = max(max_connections, len(conns))  # never more open than allowed
    theirs, _ = pool_of(httpcore.ConnectionPool, conns, requests,
                        max_connections=max_connections, max_keepalive=max_connections)
    ours, _ = pool_of(_LeanPool, conns, requests, max_connections=max_connections,
                      max_keepalive=max_connections)
    their_conns, their_closing, their_choice = decided(
        theirs, theirs._assign_requests_to_connections())
    our_conns, our_closing, our_choice = decided(ours, ours._assign_requests_to_connections())
    assert our_choice == their_choice
    left = set(our_conns) - set(their_conns)  # kept here, closed by httpcore
    assert set(our_conns) - left == set(their_conns)
    assert left == set(their_closing) - set(our_closing)
    assert set(our_closing) <= set(their_closing)
    assert all(conns[n]["expired"] and not conns[n]["closed"] for n in left)


@pytest.mark.parametrize("seed", range(100))
def test_a_pool_that_closes_idle_connections_past_a_limit_does_as_httpcore(seed: int) -> None:
    conns, requests, max_connections, max_keepalive = random_case(random.Random(seed))
    max_keepalive = min(max_keepalive, max_connections - 1)
    theirs, _ = pool_of(httpcore.ConnectionPool, conns, requests,
                        max_connections=max_connections, max_keepalive=max_keepalive)
    ours, _ = pool_of(_LeanPool, conns, requests, max_connections=max_connections,
                      max_keepalive=max_keepalive)
    assert (decided(ours, ours._assign_requests_to_connections())
            == decided(theirs, theirs._assign_requests_to_connections()))


def test_a_request_asks_one_idle_connection_whether_it_expired_not_every_one() -> None:
    """32 connections, 8 of them idle, one request queued (as when a worker sends while the
    others wait for their answers): httpcore asks each connection whether it expired (for
    an idle one a ``poll()`` of its socket) and whether it is idle once per idle one; the
    lean pool asks only the one it gives the request, and each at most a few questions."""
    conns = [{"origin": 0, "idle": i % 4 == 0, "available": i % 4 == 0} for i in range(32)]
    theirs, asked_theirs = pool_of(httpcore.ConnectionPool, conns, [(0, None)],
                                   max_connections=64, max_keepalive=64)
    ours, asked = pool_of(_LeanPool, conns, [(0, None)], max_connections=64,
                          max_keepalive=64)
    theirs._assign_requests_to_connections()
    ours._assign_requests_to_connections()
    assert asked_theirs["has_expired"] == 32 and asked_theirs["is_idle"] > 8 * 32
    assert asked["has_expired"] == 1
    assert sum(asked.values()) <= 2 * 32


def test_an_answer_closed_asks_no_connection_whether_it_expired() -> None:
    conns = [{"origin": 0, "idle": i % 4 == 0, "available": i % 4 == 0} for i in range(32)]
    ours, asked = pool_of(_LeanPool, conns, [(0, 1)], max_connections=64, max_keepalive=64)
    assert ours._assign_requests_to_connections() == []
    assert asked["has_expired"] == 0 and sum(asked.values()) == 32  # is it closed?


def test_the_client_pools_its_connections_in_the_lean_pool() -> None:
    client = http_client()
    try:
        assert type(client._transport._pool) is _LeanPool  # type: ignore[attr-defined]
    finally:
        client.close()
