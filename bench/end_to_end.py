"""End to end: amq (gunicorn -k gevent, one worker) in front of a fast fake Q, against that fake
called directly, under wrk (throughput, total time, answer checks) and hey (time to first byte).

    python bench/end_to_end.py [--duration 10] [--concurrency 10 100] [--request small|tools]
                               [--upstream fastq|fakeq] [--pin] [--app-dir DIR]

For each concurrency C, and for each target (direct = the load generator POSTs Q's own request
to the fake; amq = it POSTs the Anthropic request with "stream": true to amq, which calls the
fake), in this order:
  1. wrk -t1 -cC -dD --latency -s bench/stream.lua: requests/s, events/s (SSE events for amq,
     event-stream frames for direct, counted per answer in Lua), p50/p99 total time, and bad
     answers (non-200, cut short, or an SSE `error` event);
  2. hey -cpus 1 -cC (about 5 s of requests): p50/p99 time to first byte and total time.
Then both targets once more at concurrency 1 (hey, sequential requests): the unloaded time to
first byte, whose difference is the time amq adds.

Targets: amq's request rate >= 0.5x direct at each concurrency; no errors at 100 streams;
added time to first byte (unloaded, p50) < 5 ms.
amq runs with LOG_LEVEL=WARNING, so no per-request log line is part of the measurement.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
import requests
from common import (
    ANTHROPIC_HEADERS,
    BENCH,
    REQUESTS,
    AmqProcess,
    FastQProcess,
    cpu_seconds,
    loadavg,
    machine,
    need_tool,
    percentile,
    save,
    verdict,
)

from tests.fakeq import GAR_TARGET

TARGET_RATE_RATIO = 0.5
TARGET_ADDED_TTFB_MS = 5.0


def q_body(anthropic_request: dict) -> dict:
    """The Q request amq itself would send for `anthropic_request` (amq's own converter)."""
    from amq.convert import convert_request

    return convert_request(anthropic_request, origin="CLI").for_model("claude-sonnet-4.5")


class Target:
    """One thing to load: its URL, body and headers as files (for wrk and hey), its answer kind."""

    def __init__(self, name: str, url: str, body: dict, headers: dict, mode: str, workdir: Path):
        self.name, self.url, self.mode = name, url, mode
        self.headers = headers
        self.body_file = workdir / f"{name}.body.json"
        self.body_file.write_text(json.dumps(body))
        self.headers_file = workdir / f"{name}.headers.txt"
        self.headers_file.write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))

    def check(self) -> int:
        """One request by hand: a complete, error-free answer; returns its event count."""
        response = requests.post(self.url, data=self.body_file.read_bytes(), headers=self.headers,
                                 timeout=30)
        if response.status_code != 200:
            raise SystemExit(f"{self.name}: HTTP {response.status_code}: {response.text[:300]}")
        if self.mode == "sse":
            text = response.text
            if "event: message_stop" not in text or "event: error" in text:
                raise SystemExit(f"{self.name}: incomplete SSE answer:\n{text[-500:]}")
            return text.count("\n\n")
        data, pos, count = response.content, 0, 0
        while pos < len(data):
            pos += int.from_bytes(data[pos:pos + 4], "big")
            count += 1
        return count


def run_wrk(wrk: str, target: Target, concurrency: int, duration: float, pids: dict) -> dict:
    cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--latency", "--timeout", "30s",
           "-s", str(BENCH / "stream.lua"), target.url, "--",
           target.mode, str(target.body_file), str(target.headers_file)]
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((text for text in out.stdout.splitlines() if text.startswith("BENCHJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line[len("BENCHJSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values()) + raw["bad_answers"]
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    cpu["wrk"] = (children_after.ru_utime + children_after.ru_stime
                  - children_before.ru_utime - children_before.ru_stime)
    return {"requests": raw["requests"], "rps": raw["requests"] / seconds,
            "events_per_s": raw["events"] / seconds,
            "events_per_answer": raw["events"] / max(1, raw["answers"] - raw["bad_answers"]),
            "total_ms": {k: v / 1000 for k, v in raw["latency_us"].items()},
            "errors": errors, "error_detail": dict(raw["errors"], bad_answers=raw["bad_answers"]),
            "cpu_s": cpu, "cpu_ms_per_request": {k: 1000 * v / max(1, raw["requests"]) for k, v in cpu.items()}}


def run_hey(hey: str, target: Target, concurrency: int, requests_count: int) -> dict:
    cmd = [hey, "-n", str(requests_count), "-c", str(concurrency), "-cpus", "1", "-t", "30",
           "-m", "POST", "-D", str(target.body_file), "-o", "csv"]
    for name, value in target.headers.items():
        if name.lower() == "content-type":
            cmd += ["-T", value]
        else:
            cmd += ["-H", f"{name}: {value}"]
    started = time.monotonic()
    out = subprocess.run([*cmd, target.url], capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    if not rows:
        raise SystemExit(f"hey failed:\n{out.stdout[:2000]}\n{out.stderr[:2000]}")
    ok = [r for r in rows if r["status-code"] == "200"]
    # hey's columns are seconds with 0.1 ms resolution; first byte = total - body read time.
    total = [float(r["response-time"]) * 1000 for r in ok]
    ttfb = [(float(r["response-time"]) - float(r["Response-read"])) * 1000 for r in ok]
    return {"requests": len(rows), "errors": len(rows) - len(ok), "rps": len(rows) / wall,
            "ttfb_ms": {"p50": percentile(ttfb, 50), "p99": percentile(ttfb, 99)},
            "total_ms": {"p50": percentile(total, 50), "p99": percentile(total, 99)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--request", choices=sorted(REQUESTS), default="small")
    parser.add_argument("--upstream", choices=["fastq", "fakeq"], default="fastq",
                        help="fastq: bench/fastq.py (default); fakeq: the tests' strict threaded fake")
    parser.add_argument("--hey-seconds", type=float, default=5, help="about this long per hey run")
    parser.add_argument("--app-dir", help="measure another checkout (a changed copy of amq)")
    parser.add_argument("--pin", action="store_true",
                        help="amq on CPU 1, the fake and the load generators on CPU 0")
    args = parser.parse_args(argv)

    wrk, hey = need_tool("wrk"), need_tool("hey")
    common.raise_fd_limit()
    info = machine()
    print(f"end-to-end bench  {info['date']}  amq {info['amq']}  python {info['python']}  {info['cpus']} cpus  "
          f"load {info['loadavg_start']}  upstream {args.upstream}  request {args.request}"
          f"{'  pinned' if args.pin else ''}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="amq-e2e-"))
    fake = FastQProcess(kind=args.upstream, cpus="0" if args.pin else None)
    amq = None
    try:
        amq = AmqProcess(fake, cpus="1" if args.pin else None, app_dir=args.app_dir)
        if args.pin:  # the load generators inherit this
            subprocess.run(["taskset", "-pc", "0", str(common.os.getpid())], check=True,
                           stdout=subprocess.DEVNULL)
        request = REQUESTS[args.request]
        direct = Target("direct", fake.url + "/", q_body(request),
                        {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": GAR_TARGET,
                         "Authorization": f"Bearer {fake.settings['access_token']}"}, "eventstream", workdir)
        proxied = Target("amq", amq.url + "/v1/messages", dict(request, stream=True), ANTHROPIC_HEADERS,
                         "sse", workdir)
        per_answer = {t.name: t.check() for t in (direct, proxied)}
        print(f"one answer: direct {per_answer['direct']} frames, amq {per_answer['amq']} SSE events")
        pids = {"amq": amq.worker_pid, "fake": fake.pid}
        run_wrk(wrk, proxied, 10, 2, pids)  # warm-up: connection pool, token, first-call paths

        results: dict = {"machine": info, "args": vars(args), "events_per_answer": per_answer, "runs": {}}
        for concurrency in args.concurrency:
            for target in (direct, proxied):
                load_before = loadavg()
                w = run_wrk(wrk, target, concurrency, args.duration, pids)
                count = int(min(20000, max(10 * concurrency, w["rps"] * args.hey_seconds)))
                h = run_hey(hey, target, concurrency, count)
                results["runs"][f"{target.name}@{concurrency}"] = {"wrk": w, "hey": h, "loadavg": load_before}
                print(f"  {target.name:>6} c={concurrency:<4} {w['rps']:>9,.0f} req/s {w['events_per_s']:>10,.0f} ev/s"
                      f"  total p50/p99 {w['total_ms']['p50']:.2f}/{w['total_ms']['p99']:.2f} ms"
                      f"  ttfb p50/p99 {h['ttfb_ms']['p50']:.2f}/{h['ttfb_ms']['p99']:.2f} ms"
                      f"  errors {w['errors'] + h['errors']}  cpu ms/req {w['cpu_ms_per_request']['amq']:.2f} amq,"
                      f" {w['cpu_ms_per_request']['fake']:.3f} fake  (load {load_before})", flush=True)
        unloaded = {t.name: run_hey(hey, t, 1, 500) for t in (direct, proxied)}
        results["unloaded"] = unloaded
        print(f"  unloaded (c=1): ttfb p50 direct {unloaded['direct']['ttfb_ms']['p50']:.2f} ms,"
              f" amq {unloaded['amq']['ttfb_ms']['p50']:.2f} ms")
        log_warnings = amq.warnings()
    finally:
        if amq is not None:
            amq.stop(keep_log="end_to_end-amq")
        fake.stop()

    # -- verdicts ---------------------------------------------------------------------------
    print()
    checks = []
    for concurrency in args.concurrency:
        a, d = results["runs"][f"amq@{concurrency}"], results["runs"][f"direct@{concurrency}"]
        ratio = a["wrk"]["rps"] / d["wrk"]["rps"]
        checks.append((f"rate at c={concurrency}: amq/direct", f"{ratio:.3f}x", f">= {TARGET_RATE_RATIO}x",
                       ratio >= TARGET_RATE_RATIO))
        added = a["hey"]["ttfb_ms"]["p50"] - d["hey"]["ttfb_ms"]["p50"]
        checks.append((f"added ttfb p50 at c={concurrency} (loaded)", f"{added:.2f} ms", "(info)", None))
    if 100 in args.concurrency:
        a = results["runs"]["amq@100"]
        errors = a["wrk"]["errors"] + a["hey"]["errors"]
        checks.append(("errors at c=100 (wrk+hey)", str(errors), "0", errors == 0))
    added = unloaded["amq"]["ttfb_ms"]["p50"] - unloaded["direct"]["ttfb_ms"]["p50"]
    checks.append(("added ttfb p50, unloaded (c=1)", f"{added:.2f} ms", f"< {TARGET_ADDED_TTFB_MS:g} ms",
                   added < TARGET_ADDED_TTFB_MS))
    results["checks"] = [{"figure": f, "value": v, "target": t, "pass": ok} for f, v, t, ok in checks]
    results["amq_log_warnings"] = log_warnings[:20]
    for figure, value, target, ok in checks:
        print(f"{figure:<40} {value:>12}  target {target:<10} {'' if ok is None else verdict(ok)}")
    if log_warnings:
        print(f"amq logged {len(log_warnings)} warning/error lines, first: {log_warnings[0][:200]}")
    info["loadavg_end"] = loadavg()
    path = save(f"end_to_end{'' if args.upstream == 'fastq' else '-' + args.upstream}"
                f"{'' if args.request == 'small' else '-' + args.request}{'-pinned' if args.pin else ''}", results)
    print(f"results: {path.relative_to(common.ROOT)}  (load at end {info['loadavg_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
