"""An open-loop HTTP load generator, run as its own process by ``bench_serve_load.py``.

    python experiments/loadgen.py --port 8000 --paths paths.txt --rate 200 --seconds 30 [--timeout 2]

Request ``i`` is *scheduled* at ``start + i / rate`` whatever happened to the earlier ones
(open loop). It goes out on an idle keep-alive connection, or on a new one when every open
connection is busy: there is no connection cap, so an unsent request is never counted as a
server error. Latency runs from the scheduled time, so queueing anywhere (the client's loop,
the kernel's accept queue, the server) is in it; a request not answered within ``--timeout``
of its schedule is a timeout. The rate reported as achieved is measured from the times the
requests were actually written to their sockets, and ``send lag`` is how late those writes
were against the schedule: a client too slow to offer the load shows there, not as server
latency. The client's CPU time is reported as a share of one core.

Prints one JSON object: offered, achieved, sent, p50 / p90 / p99 / max latency (ms), errors
(non-200 answers and connection failures), timeouts, send lag p99 (ms), client CPU, and the
most connections open at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile by the nearest rank (``nan`` for no values)."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


class Conn:
    """One keep-alive HTTP/1.1 connection (a minimal client: no per-request library cost)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Conn":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, path: str) -> None:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    async def answer(self) -> int:
        """The status of the answer to the request sent last (its body read and dropped)."""
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("connection closed by the server")
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        self.writer.close()


async def open_loop(port: int, paths: list[str], rate: float, seconds: float, timeout: float) -> dict:
    """Offer ``rate`` requests/s for ``seconds``; wait for every answer (or its timeout)."""
    idle: list[Conn] = []
    state = {"open": 0, "most_open": 0}
    latencies: list[float] = []
    written: list[float] = []  # when each request reached its socket
    lags: list[float] = []
    errors = timeouts = 0
    total = int(rate * seconds)

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors, timeouts
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                state["open"] += 1
                state["most_open"] = max(state["most_open"], state["open"])
                conn = await asyncio.wait_for(Conn.open(port), max(scheduled + timeout - time.perf_counter(), 1e-3))
            conn.send(paths[i % len(paths)])
            now = time.perf_counter()
            written.append(now)
            lags.append(1000 * (now - scheduled))
            status = await asyncio.wait_for(conn.answer(), max(scheduled + timeout - now, 1e-3))
        except asyncio.TimeoutError:
            timeouts += 1
            latencies.append(1000 * timeout)
            _drop(conn)
            return
        except (ConnectionError, OSError):
            errors += 1
            latencies.append(1000 * (time.perf_counter() - scheduled))
            _drop(conn)
            return
        latencies.append(1000 * (time.perf_counter() - scheduled))
        errors += status != 200
        idle.append(conn)

    def _drop(conn: Conn | None) -> None:
        state["open"] -= 1
        if conn is not None:
            conn.close()

    cpu0 = time.process_time()
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for conn in idle:
        conn.close()
    written.sort()
    achieved = (len(written) - 1) / (written[-1] - written[0]) if len(written) > 1 else 0.0
    return {"offered": rate, "achieved": achieved, "sent": len(written), "scheduled": total,
            "p50": percentile(latencies, 0.5), "p90": percentile(latencies, 0.9), "p99": percentile(latencies, 0.99),
            "max": max(latencies, default=float("nan")), "errors": errors / max(total, 1),
            "timeouts": timeouts / max(total, 1), "send_lag_p99": percentile(lags, 0.99),
            "client_cpu": (time.process_time() - cpu0) / elapsed, "most_connections": state["most_open"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the service on 127.0.0.1")
    parser.add_argument("--paths", required=True, help="a file of request paths, one per line, used in turn")
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the rate is offered")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds from a request's schedule to its answer")
    args = parser.parse_args()
    with open(args.paths) as f:
        paths = [line.strip() for line in f if line.strip()]
    try:
        import uvloop  # the client's own overhead as low as it goes (uvicorn[standard] installs it)

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(open_loop(args.port, paths, args.rate, args.seconds, args.timeout))))


if __name__ == "__main__":
    main()
