"""Compare amq checkouts: worker CPU per answer and requests/s, runs interleaved.

    python bench/compare.py DIR [DIR ...] [--concurrency 10] [--rounds 3] [--duration 6]
                            [--delay 0] [--env NAME=VALUE]

Each DIR is a directory holding amq/, app.py, wsgi.py and gunicorn.conf.py (this checkout is
`.`; a changed copy is e.g. /tmp/amq-try). Every round starts each DIR's amq afresh in front
of the same bench/fastq.py, warms it up, and loads it with wrk (as end_to_end.py does); the
medians over rounds are printed. CPU milliseconds per answer (the worker's user+kernel time
over the answers served) is the figure to compare: it moves far less than requests/s when
the machine is shared. --delay makes the fake send one frame every DELAY seconds, the
regime where every frame is its own socket read and SSE write.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
from common import BENCH, SMALL_REQUEST, AmqProcess, FastQProcess, cpu_seconds, loadavg, machine, need_tool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="checkouts to compare ('.' is this one)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--delay", type=float, default=0.0, help="fake Q's pause before each frame")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for every amq")
    args = parser.parse_args(argv)
    wrk = need_tool("wrk")
    common.raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="amq-compare-"))
    body, headers = workdir / "body.json", workdir / "headers.txt"
    body.write_text(json.dumps(SMALL_REQUEST))
    headers.write_text("Content-Type: application/json\nx-api-key: sk-bench\nanthropic-version: 2023-06-01\n")
    env = dict(item.split("=", 1) for item in args.env)
    dirs = [str(Path(d).resolve()) for d in args.dirs]
    print(f"compare  {machine()['date']}  c={args.concurrency}  delay={args.delay:g}s  load {loadavg()}")
    results: dict[str, list[tuple[float, float, int]]] = {d: [] for d in dirs}
    fake = FastQProcess(delay=args.delay)
    try:
        for round_no in range(args.rounds):
            for directory in dirs:
                amq = AmqProcess(fake, app_dir=directory, extra_env=env)
                try:
                    lua = ["-s", str(BENCH / "stream.lua"), amq.url + "/v1/messages", "--", "sse",
                           str(body), str(headers)]
                    subprocess.run([wrk, "-t1", "-c10", "-d2s", *lua], capture_output=True)  # warm-up
                    cpu0 = cpu_seconds(amq.worker_pid)
                    out = subprocess.run([wrk, "-t1", f"-c{args.concurrency}", f"-d{args.duration}s",
                                          "--timeout", "60s", *lua], capture_output=True, text=True)
                    cpu = cpu_seconds(amq.worker_pid) - cpu0
                finally:
                    amq.stop()
                line = next(text for text in out.stdout.splitlines() if text.startswith("BENCHJSON "))
                raw = json.loads(line[len("BENCHJSON "):])
                rps = raw["requests"] / (raw["duration_us"] / 1e6)
                bad = raw["bad_answers"] + sum(raw["errors"].values())
                ms = 1000 * cpu / max(1, raw["requests"])
                results[directory].append((rps, ms, bad))
                print(f"  round {round_no + 1}  {directory:<40} {rps:7.0f} req/s  {ms:5.2f} cpu ms/answer"
                      f"  bad {bad}  (load {loadavg()})", flush=True)
    finally:
        fake.stop()
    print("\nmedian over rounds:")
    base = statistics.median(r[1] for r in results[dirs[0]])
    for directory, runs in results.items():
        ms = statistics.median(r[1] for r in runs)
        print(f"  {directory:<40} {statistics.median(r[0] for r in runs):7.0f} req/s  {ms:5.2f} cpu ms/answer"
              f" ({100 * (ms - base) / base:+.0f}%)  bad {sum(r[2] for r in runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
