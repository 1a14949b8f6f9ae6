"""The calls' metrics counted in batches (runtime/metrics.py ``BoardMetrics``): once written, the samples are
what prometheus-client's own counters and Histogram.observe give for the same calls, and they are written a
second after the last write at the latest while calls go on, and shortly after the process has no call in
progress (so a scrape after a few calls sees them)."""

from __future__ import annotations

import asyncio
import random
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from board_server.runtime.metrics import _LATENCY_BUCKETS, FLUSH_EVERY_S, IDLE_FLUSH_S, BoardMetrics

SERVICE = "board.v1.BoardService"


def samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    }


def test_batched_samples_are_those_of_prometheus_clients_own_observe() -> None:
    asyncio.run(batched_samples_are_those_of_prometheus_clients_own_observe())


async def batched_samples_are_those_of_prometheus_clients_own_observe() -> None:
    registry, reference = CollectorRegistry(), CollectorRegistry()
    metrics = BoardMetrics(registry)
    labels = ("grpc_type", "grpc_service", "grpc_method", "protocol")
    started = Counter("grpc_server_started_total", "", labels, registry=reference)
    handled = Counter("grpc_server_handled_total", "", (*labels, "grpc_code"), registry=reference)
    seconds = Histogram(
        "grpc_server_handling_seconds", "", labels, buckets=_LATENCY_BUCKETS, registry=reference
    )
    chance = random.Random(7)
    in_flight: list[tuple[str, str]] = []
    for _ in range(3000):
        if in_flight and (len(in_flight) > 20 or chance.random() < 0.5):
            method, protocol = in_flight.pop(chance.randrange(len(in_flight)))
            code = chance.choice([grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL])
            # Values on the buckets' bounds too: a bound belongs to its bucket (le).
            took = chance.choice([*_LATENCY_BUCKETS, chance.uniform(0, 0.2), 120.0])
            metrics.handled(SERVICE, method, code, took, protocol=protocol)
            handled.labels("unary", SERVICE, method, protocol, code.name).inc()
            seconds.labels("unary", SERVICE, method, protocol).observe(took)
        else:
            call = (chance.choice(["GetPost", "ListPosts", "CreatePost"]), chance.choice(["grpc", "connect"]))
            metrics.started(SERVICE, call[0], protocol=call[1])
            started.labels("unary", SERVICE, *call).inc()
            in_flight.append(call)
    for method, protocol in in_flight:
        metrics.handled(SERVICE, method, grpc.StatusCode.OK, 0.003, protocol=protocol)
        handled.labels("unary", SERVICE, method, protocol, "OK").inc()
        seconds.labels("unary", SERVICE, method, protocol).observe(0.003)
    # The last call left the process idle: everything is written shortly after, without an explicit flush.
    await asyncio.sleep(IDLE_FLUSH_S * 4)
    got, want = samples(registry, "grpc_server_"), samples(reference, "grpc_server_")
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-6 * max(1.0, value), key


def test_calls_are_written_within_a_second_under_load_and_soon_after_it() -> None:
    asyncio.run(calls_are_written_within_a_second_under_load_and_soon_after_it())


async def calls_are_written_within_a_second_under_load_and_soon_after_it() -> None:
    registry = CollectorRegistry()
    metrics = BoardMetrics(registry)
    count = "grpc_server_handled_total"

    def handled_now() -> float:
        return sum(v for (name, _), v in samples(registry, count).items() if name == count)

    def one_call() -> None:
        metrics.started(SERVICE, "GetPost")
        metrics.handled(SERVICE, "GetPost", grpc.StatusCode.OK, 0.001)

    metrics.started(SERVICE, "WatchAttachment")  # a call in progress throughout: the process is never idle
    one_call()
    assert handled_now() == 1  # the first call after start is written at once
    began = time.monotonic()
    while time.monotonic() - began < FLUSH_EVERY_S * 0.5:
        one_call()
        assert handled_now() == 1  # kept while calls go on, within the second
        await asyncio.sleep(0.01)
    while time.monotonic() - began < FLUSH_EVERY_S * 1.5 and handled_now() == 1:
        one_call()
        await asyncio.sleep(0.01)
    written = handled_now()
    assert written > 2  # a call ending a second after the last write wrote them all
    one_call()
    metrics.flush()  # what the health loop does every few seconds
    assert handled_now() == written + 1
    metrics.handled(SERVICE, "WatchAttachment", grpc.StatusCode.OK, 30.0)  # now nothing is in progress
    one_call()
    assert handled_now() == written + 1  # not at once: a process is idle between calls many times a second
    await asyncio.sleep(IDLE_FLUSH_S * 4)
    assert handled_now() == written + 3
