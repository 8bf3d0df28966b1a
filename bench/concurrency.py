"""Concurrency: N slow streams open at once on one gevent worker; all complete; RSS per stream.

    python bench/concurrency.py [--streams 100 1000] [--delay 0.15]

For each N, a fresh amq (one gevent worker) is started in front of bench/fastq.py, which
sends the typical 53-frame answer one frame every DELAY seconds (8 s a stream by default). The
worker is warmed up (token, connection pool, first-call paths) with answers that skip the
delay, and its RSS is read. Then N clients (greenlets in this process, raw sockets, one
connection each) POST at once and read their streams to the end, while the worker's RSS and
the number of streams open at the client are sampled every 50 ms. A second wave of N on the
same worker (--waves) shows whether amq reuses its upstream connections (the fake counts the
connections it accepts) and whether memory comes back.

A stream completes when it is HTTP 200, ends with `message_stop`, holds every SSE event of the
answer, and has no `error` event. RSS per open stream = (peak RSS - RSS after warm-up) / N,
where peak is the kernel's high-water mark (VmHWM) of the worker.
Target: N=1000 all complete, under 100 KB per stream.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import common  # noqa: E402,F401  (puts the repo root on sys.path)
import gevent  # noqa: E402
from common import (  # noqa: E402
    SMALL_REQUEST,
    AmqProcess,
    FastQProcess,
    cpu_seconds,
    loadavg,
    machine,
    percentile,
    rss_kib,
    save,
    verdict,
)

TARGET_STREAMS = 1000
TARGET_KB_PER_STREAM = 100
EXPECTED_EVENTS = 56  # typical answer: message_start, ping, block start, 50 deltas, stop, delta, stop


def request_bytes(port: int, text: str) -> bytes:
    body = json.dumps(dict(SMALL_REQUEST, messages=[{"role": "user", "content": text}])).encode()
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"x-api-key: sk-bench\r\nanthropic-version: 2023-06-01\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n")
    return head.encode() + body


class Stream:
    """One client: send, read to EOF (Connection: close), then judge the answer."""

    open_now = 0
    open_peak = 0

    def __init__(self, port: int, payload: bytes):
        self.port, self.payload = port, payload
        self.ok = False
        self.problem = ""
        self.events = 0
        self.ttfb = self.total = float("nan")

    def run(self, timeout: float) -> None:
        started = time.monotonic()
        data = bytearray()
        counted = False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(self.payload)
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    if not data:
                        self.ttfb = time.monotonic() - started
                        Stream.open_now += 1
                        Stream.open_peak = max(Stream.open_peak, Stream.open_now)
                        counted = True
                    data += chunk
        except OSError as exc:
            self.problem = f"{type(exc).__name__}: {exc}"
        finally:
            if counted:
                Stream.open_now -= 1
        self.total = time.monotonic() - started
        if self.problem:
            return
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        self.events = body.count(b"event: ")
        if not head.startswith(b"HTTP/1.1 200"):
            self.problem = head.split(b"\r\n", 1)[0].decode(errors="replace") or "no answer"
        elif b"event: error" in body:
            self.problem = "error event"
        elif b"event: message_stop" not in body or self.events != EXPECTED_EVENTS:
            self.problem = f"incomplete: {self.events} events"
        else:
            self.ok = True


def upstream_stats(fake: FastQProcess) -> dict:
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: fastq\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data.partition(b"\r\n\r\n")[2])


def run_wave(port: int, pid: int, streams: int, timeout: float) -> dict:
    """N clients at once; returns what they saw, and the worker's RSS along the way."""
    payload = request_bytes(port, "Explain how the pieces fit together.")
    Stream.open_now = Stream.open_peak = 0
    clients = [Stream(port, payload) for _ in range(streams)]
    samples = []
    cpu0 = cpu_seconds(pid)
    started = time.monotonic()
    jobs = [gevent.spawn(c.run, timeout) for c in clients]
    while not all(job.ready() for job in jobs):
        samples.append((round(time.monotonic() - started, 2), Stream.open_now, rss_kib(pid)["VmRSS"]))
        gevent.sleep(0.05)
    problems: dict[str, int] = {}
    for c in clients:
        if not c.ok:
            problems[c.problem] = problems.get(c.problem, 0) + 1
    ttfb = [c.ttfb * 1000 for c in clients if c.ok]
    total = [c.total for c in clients if c.ok]
    return {"completed": sum(c.ok for c in clients), "problems": problems, "open_peak": Stream.open_peak,
            "wall_s": time.monotonic() - started, "worker_cpu_s": cpu_seconds(pid) - cpu0,
            "rss_peak_sampled_kib": max(s[2] for s in samples), "rss_after_kib": rss_kib(pid)["VmRSS"],
            "ttfb_ms": {"p50": percentile(ttfb, 50), "p99": percentile(ttfb, 99)},
            "total_s": {"p50": percentile(total, 50), "max": max(total) if total else float("nan")},
            "samples": samples[::4]}


def run_level(streams: int, delay: float, warmups: int, waves: int) -> dict:
    """A fresh amq and fake; warm-up; then `waves` rounds of N streams at once."""
    fake = FastQProcess(delay=delay)
    amq = None
    try:
        amq = AmqProcess(fake)
        pid = amq.worker_pid
        warm = request_bytes(amq.port, "warm-up [fastq:no-delay]")
        for _ in range(max(1, warmups // 10)):
            batch = [Stream(amq.port, warm) for _ in range(10)]
            gevent.joinall([gevent.spawn(s.run, 30) for s in batch])
            bad = [s.problem for s in batch if not s.ok]
            if bad:
                raise SystemExit(f"warm-up failed: {bad[0]}\n{amq.log_tail()}")
        time.sleep(0.5)
        base = rss_kib(pid)
        load_before = loadavg()
        rounds = []
        for _ in range(waves):
            before = upstream_stats(fake)
            wave = run_wave(amq.port, pid, streams, 53 * delay + 120)
            after = upstream_stats(fake)
            wave["upstream_connections_opened"] = after["connections"] - before["connections"]
            wave["rss_hwm_kib"] = rss_kib(pid)["VmHWM"]
            rounds.append(wave)
        warnings = amq.warnings()
    finally:
        if amq is not None:
            amq.stop(keep_log=f"concurrency-{streams}-amq")
        fake.stop()
    peak = max(w["rss_hwm_kib"] for w in rounds)
    return {"streams": streams, "delay": delay, "stream_seconds": 53 * delay, "waves": rounds,
            "completed": min(w["completed"] for w in rounds), "open_peak": min(w["open_peak"] for w in rounds),
            "rss_base_kib": base["VmRSS"], "rss_peak_kib": peak, "rss_after_kib": rounds[-1]["rss_after_kib"],
            "kib_per_stream": (peak - base["VmRSS"]) / streams, "loadavg": load_before,
            "amq_warnings": len(warnings),
            "amq_warning_kinds": sorted({w.split(": ", 1)[-1][:120] for w in warnings
                                         if "WARNING" in w or "ERROR" in w})[:5]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--delay", type=float, default=0.15,
                        help="seconds between frames (default 0.15: 8 s a stream)")
    parser.add_argument("--warmups", type=int, default=50)
    parser.add_argument("--waves", type=int, default=2,
                        help="rounds of N streams on the same worker (default 2: the second shows "
                             "connection reuse and whether memory comes back)")
    args = parser.parse_args(argv)
    common.raise_fd_limit()
    info = machine()
    print(f"concurrency bench  {info['date']}  amq {info['amq']}  python {info['python']}  "
          f"load {info['loadavg_start']}")
    levels = []
    for streams in args.streams:
        r = run_level(streams, args.delay, args.warmups, args.waves)
        levels.append(r)
        print(f"  N={streams}: RSS after warm-up {r['rss_base_kib'] / 1024:.1f} MiB, "
              f"peak {r['rss_peak_kib'] / 1024:.1f} MiB"
              f" -> {r['kib_per_stream']:.1f} KiB per stream  (load {r['loadavg']})", flush=True)
        for i, w in enumerate(r["waves"], 1):
            print(f"    wave {i}: completed {w['completed']}/{streams}, open at once {w['open_peak']},"
                  f" RSS peak {w['rss_hwm_kib'] / 1024:.1f} MiB, after {w['rss_after_kib'] / 1024:.1f} MiB,"
                  f" ttfb p50/p99 {w['ttfb_ms']['p50']:.0f}/{w['ttfb_ms']['p99']:.0f} ms,"
                  f" stream p50/max {w['total_s']['p50']:.2f}/{w['total_s']['max']:.2f} s,"
                  f" worker cpu {w['worker_cpu_s']:.1f} s, new upstream connections {w['upstream_connections_opened']}",
                  flush=True)
            if w["problems"]:
                print(f"      problems: {w['problems']}")
        print(f"    amq log: {r['amq_warnings']} warning/error lines")
        for kind in r["amq_warning_kinds"]:
            print(f"    amq log: {kind}")
    top = max(levels, key=lambda r: r["streams"])
    all_done = top["completed"] == top["streams"] and top["open_peak"] == top["streams"]
    kb = top["kib_per_stream"] * 1024 / 1000
    ok = top["streams"] >= TARGET_STREAMS and all_done and kb < TARGET_KB_PER_STREAM
    print(f"\ntarget: {TARGET_STREAMS} slow streams on one worker, all complete, < {TARGET_KB_PER_STREAM} KB each"
          f" -> N={top['streams']}: {top['completed']} complete, {top['open_peak']} open at once,"
          f" {kb:.1f} KB/stream  {verdict(ok)}")
    info["loadavg_end"] = loadavg()
    path = save("concurrency", {"machine": info, "args": vars(args), "levels": levels, "pass": ok})
    print(f"results: {path.relative_to(common.ROOT)}  (load at end {info['loadavg_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
