"""Latency: how long after an upstream frame leaves the fake Q its SSE event reaches the client.

    python bench/latency.py [--streams 20] [--concurrency 4] [--frames 20] [--gap 0.05] [--app-dir DIR]

The fake Q (bench/fastq.py, in this process) sends `--frames` text frames whose text is
`<k>`, `--gap` seconds apart, and notes the moment it writes each one. Clients (also in this
process, so both clocks are the same time.monotonic) read amq's SSE stream with raw sockets
and note when the text_delta carrying `<k>` arrives. The difference is the per-event delay.
The same clients then read the fake directly (its event stream, with no amq in between): that
is the floor the machine and this measuring add; amq's added delay is the difference of the two.

If amq held events back (buffering, waiting for a later frame, Nagle), the delay would be
close to a gap (50 ms) or more. Target: every SSE event is written as soon as its frame is
decoded: max delay well under one gap (< gap/2), p50 added delay under 1 ms.
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
import gevent.pool  # noqa: E402
from common import SMALL_REQUEST, AmqProcess, loadavg, machine, percentile, save, verdict  # noqa: E402
from fastq import FastQ, numbered_frames  # noqa: E402

from tests.fakeq import GAR_TARGET  # noqa: E402

TARGET_ADDED_P50_MS = 1.0


class InProcessFake:
    """FastQ in this process, with the settings AmqProcess needs; records frame send times."""

    def __init__(self, frames: int, gap: float):
        self.sent: dict[tuple[str, int], float] = {}
        self.server = FastQ(delay=gap, frames=numbered_frames(frames), on_frame=self._on_frame).start()
        self.settings = self.server.settings()
        self.url = self.server.url

    def _on_frame(self, tag: str, index: int, when: float) -> None:
        self.sent[(tag, index)] = when

    def stop(self) -> None:
        self.server.stop()


def http_request(port: int, path: str, headers: dict, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def read_stream(port: int, payload: bytes, frames: int) -> tuple[float, float, dict[int, float]]:
    """(start, first byte time, {k: arrival of `"<k>"`}) for one answer."""
    arrivals: dict[int, float] = {}
    data = bytearray()
    search_from, k = 0, 0
    started = time.monotonic()
    first = float("nan")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(payload)
        while True:
            chunk = sock.recv(65536)
            now = time.monotonic()
            if not chunk:
                break
            if not data:
                first = now
            data += chunk
            while k < frames:
                at = data.find(b'"<%d>"' % k, search_from)
                if at < 0:
                    break
                arrivals[k] = now
                search_from = at
                k += 1
    if k != frames:
        raise RuntimeError(f"stream ended after {k} of {frames} markers:\n{bytes(data[-400:])!r}")
    return started, first, arrivals


def measure(fake: InProcessFake, kind: str, port: int, streams: int, concurrency: int, frames: int) -> dict:
    delays, first_gaps = [], []

    def one(i: int) -> None:
        tag = f"latency {kind} stream {i}"
        if kind == "amq":
            body = json.dumps(dict(SMALL_REQUEST, messages=[{"role": "user", "content": tag}])).encode()
            payload = http_request(port, "/v1/messages", {"Content-Type": "application/json",
                                                          "x-api-key": "sk-bench",
                                                          "anthropic-version": "2023-06-01"}, body)
        else:
            from amq.convert import convert_request

            q = convert_request(dict(SMALL_REQUEST, messages=[{"role": "user", "content": tag}]),
                                origin="CLI").for_model("claude-sonnet-4.5")
            payload = http_request(port, "/", {"Content-Type": "application/x-amz-json-1.0",
                                               "X-Amz-Target": GAR_TARGET,
                                               "Authorization": f"Bearer {fake.settings['access_token']}"},
                                   json.dumps(q).encode())
        _started, first, arrivals = read_stream(port, payload, frames)
        # Frame 0 is metadata; frame k+1 carries "<k>".
        first_gaps.append((fake.sent[(tag, 0)] - first) * 1000)
        for k, arrived in arrivals.items():
            delays.append((arrived - fake.sent[(tag, k + 1)]) * 1000)

    pool = gevent.pool.Pool(concurrency)
    for i in range(streams):
        pool.spawn(one, i)
    pool.join(raise_error=True)
    return {"samples": len(delays), "delay_ms": {"p50": percentile(delays, 50), "p90": percentile(delays, 90),
                                                 "p99": percentile(delays, 99), "max": max(delays)},
            "first_byte_before_first_frame_ms": {"min": min(first_gaps), "p50": percentile(first_gaps, 50)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20, help="text frames per answer")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between frames")
    parser.add_argument("--app-dir", help="measure another checkout (a changed copy of amq)")
    args = parser.parse_args(argv)
    info = machine()
    print(f"latency bench  {info['date']}  amq {info['amq']}  python {info['python']}  load {info['loadavg_start']}")
    fake = InProcessFake(args.frames, args.gap)
    amq = None
    try:
        amq = AmqProcess(fake, app_dir=args.app_dir)
        # warm-up (token, pool); the gap makes it slow, so only two
        measure(fake, "amq", amq.port, 2, 2, args.frames)
        results = {}
        for kind, port in (("direct", fake.server.port), ("amq", amq.port)):
            results[kind] = r = measure(fake, kind, port, args.streams, args.concurrency, args.frames)
            print(f"  {kind:>6}: {r['samples']} frames  delay p50 {r['delay_ms']['p50']:.3f}  "
                  f"p90 {r['delay_ms']['p90']:.3f}"
                  f"  p99 {r['delay_ms']['p99']:.3f}  max {r['delay_ms']['max']:.3f} ms   first byte"
                  f" {r['first_byte_before_first_frame_ms']['p50']:.1f} ms before the first frame", flush=True)
        warnings = amq.warnings()
    finally:
        if amq is not None:
            amq.stop(keep_log="latency-amq")
        fake.stop()
    added = results["amq"]["delay_ms"]["p50"] - results["direct"]["delay_ms"]["p50"]
    worst = results["amq"]["delay_ms"]["max"]
    gap_ms = args.gap * 1000
    ok = added < TARGET_ADDED_P50_MS and worst < gap_ms / 2
    print(f"\ntarget: each SSE event written as soon as its frame is decoded -> added delay p50 {added:.3f} ms"
          f" (< {TARGET_ADDED_P50_MS:g} ms), worst {worst:.2f} ms (< half the {gap_ms:.0f} ms gap)  {verdict(ok)}")
    if warnings:
        print(f"amq logged {len(warnings)} warning lines, first: {warnings[0][:200]}")
    info["loadavg_end"] = loadavg()
    path = save("latency", {"machine": info, "args": vars(args), "results": results,
                            "added_p50_ms": added, "worst_ms": worst, "pass": ok})
    print(f"results: {path.relative_to(common.ROOT)}  (load at end {info['loadavg_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
