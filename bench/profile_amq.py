"""Profile amq's gunicorn worker under load with py-spy, and say where the time goes.

    python bench/profile_amq.py [--concurrency 10] [--duration 10] [--delay 0] [--rate 250]
                                [--pin] [--app-dir DIR]

amq runs as in end_to_end.py (one gevent worker, LOG_LEVEL=WARNING) in front of bench/fastq.py;
wrk loads it while `py-spy record --nonblocking` samples the worker. With --delay the fake sends
one frame every DELAY seconds (the realistic regime: each frame arrives on its own, so every
frame costs a socket read and an SSE write); use a large --concurrency then (e.g. 300).

Prints the busy time split into stages (each sample goes to the stage of the frame nearest
the leaf that names one), then the functions with the most inclusive and self time. Idle time
(the worker waiting in the gevent hub for I/O) is not sampled. The collapsed stacks are kept
in bench/results/profile-amq-*.txt (flamegraph.pl or speedscope read them).
Needs py-spy (pip install -r bench/requirements.txt) and permission to ptrace (root here).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
from common import BENCH, RESULTS, SMALL_REQUEST, AmqProcess, FastQProcess, cpu_seconds, loadavg, machine, need_tool

# (stage, markers): a sample belongs to the first stage of this list that has a marker in the
# sample's stack (a marker starts a frame's "function (file" text, or, in parentheses, is part
# of its file). Deeper stages come first: translate() encloses decoding, for instance.
STAGES = [
    ("SSE write: gunicorn chunked write, socket send()", ["Response.write (gunicorn", "write_chunk (gunicorn",
                                                          "Response.send_headers (gunicorn"]),
    ("SSE format: amq.sse.format_event (json.dumps)", ["format_event (amq"]),
    ("decode: EventStreamDecoder.feed", ["EventStreamDecoder."]),
    ("event payload JSON: amq.upstream._event", ["_event (amq"]),
    ("upstream body read: requests iter_content, urllib3 chunked, recv", [
        "Response.iter_content", "HTTPResponse.read_chunked", "HTTPResponse.stream", "HTTPResponse._update_chunk",
        "HTTPResponse._handle_chunk", "HTTPResponse.read (urllib3", "HTTPResponse.close", "Response.close"]),
    ("ping pump: greenlet + queue hand-over per chunk", ["_chunks_with_pings", "hand_over", "pump (amq",
                                                        "_shutdown_socket"]),
    ("translate: StreamTranslator", ["StreamTranslator."]),
    ("upstream call: requests POST until Q's headers", ["QClient.open", "QClient._call", "QClient._post"]),
    ("token manager", ["TokenManager."]),
    ("convert_request", ["convert_request", "_turns (amq", "_user_message (amq"]),
    ("token count estimate", ["count_request_tokens", "estimate_tokens"]),
    ("request body read + JSON parse", ["_json_object (amq", "_body (amq"]),
    ("rest of amq (views, proxy, models)", ["(amq/", "(app.py"]),
    ("Flask/werkzeug around the view", ["Flask.", "(werkzeug/", "(flask/"]),
    ("gunicorn request parse, keep-alive loop", ["(gunicorn/"]),
    ("gevent hub, scheduling", ["(gevent/", "(greenlet"]),
]


def frame_key(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (path/file.py)'."""
    name, sep, rest = frame.partition(" (")
    return f"{name} ({rest.rsplit(':', 1)[0]})" if sep else frame


def summarise(raw_path: Path, top: int = 25) -> dict:
    stacks = []
    # Split on "\n" only: --nonblocking sampling can catch a frame mid-update and record a
    # garbled name holding other line-break characters; such a sample is still counted.
    for line in raw_path.read_bytes().decode("utf-8", "replace").split("\n"):
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    total = sum(n for _, n in stacks) or 1
    stages, inclusive, own = Counter(), Counter(), Counter()
    for frames, n in stacks:
        for key in {frame_key(f) for f in frames}:
            inclusive[key] += n
        own[frame_key(frames[-1])] += n
        stage = next((name for name, marks in STAGES
                      if any(f.startswith(m) or (m.startswith("(") and m in f) for m in marks for f in frames)),
                     "other")
        stages[stage] += n
    pct = lambda c: [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)]  # noqa: E731
    return {"samples": total, "stages": pct(stages), "inclusive": pct(inclusive), "self": pct(own)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10, help="seconds sampled")
    parser.add_argument("--delay", type=float, default=0.0, help="fake Q's pause before each frame")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--app-dir", help="profile another checkout (a changed copy of amq)")
    parser.add_argument("--pin", action="store_true",
                        help="amq alone on CPU 1, the fake and wrk on CPU 0: py-spy samples wall time, so "
                             "without this a send() that wakes wrk on the same core looks expensive")
    args = parser.parse_args(argv)
    wrk = need_tool("wrk")
    pyspy = shutil.which("py-spy") or sys.exit("py-spy is needed: pip install -r bench/requirements.txt")
    common.raise_fd_limit()
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="amq-prof-"))
    body, headers = workdir / "body.json", workdir / "headers.txt"
    body.write_text(json.dumps(SMALL_REQUEST))
    headers.write_text("Content-Type: application/json\nx-api-key: sk-bench\nanthropic-version: 2023-06-01\n")
    RESULTS.mkdir(exist_ok=True)
    label = f"c{args.concurrency}-d{args.delay:g}{'-pinned' if args.pin else ''}"
    raw = RESULTS / f"profile-amq-{label}.txt"
    fake = FastQProcess(delay=args.delay, cpus="0" if args.pin else None)
    amq = None
    try:
        amq = AmqProcess(fake, cpus="1" if args.pin else None, app_dir=args.app_dir)
        if args.pin:  # wrk inherits this
            subprocess.run(["taskset", "-pc", "0", str(common.os.getpid())], check=True, stdout=subprocess.DEVNULL)
        lua = [str(BENCH / "stream.lua"), amq.url + "/v1/messages", "--", "sse", str(body), str(headers)]
        subprocess.run([wrk, "-t1", "-c10", "-d2s", "-s", *lua], capture_output=True)  # warm-up
        load = wrk_load = loadavg()
        load_proc = subprocess.Popen([wrk, "-t1", f"-c{args.concurrency}", f"-d{args.duration + 4:g}s",
                                      "--timeout", "60s", "-s", *lua], stdout=subprocess.PIPE, text=True)
        time.sleep(2)  # let the load settle before sampling
        cpu0, split0 = cpu_seconds(amq.worker_pid), common.cpu_split(amq.worker_pid)
        spy = subprocess.run([pyspy, "record", "--nonblocking", "--format", "raw", "--rate", str(args.rate),
                              "--duration", f"{args.duration:g}", "-o", str(raw), "-p", str(amq.worker_pid)],
                             capture_output=True, text=True)
        cpu = cpu_seconds(amq.worker_pid) - cpu0
        user, system = (b - a for a, b in zip(split0, common.cpu_split(amq.worker_pid), strict=False))
        out, _ = load_proc.communicate(timeout=args.duration + 120)
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed:\n{spy.stderr}")
        wrk_load = next((json.loads(text[10:]) for text in out.splitlines() if text.startswith("BENCHJSON ")), {})
    finally:
        if amq is not None:
            amq.stop()
        fake.stop()
    summary = summarise(raw)
    rps = wrk_load.get("requests", 0) / max(1e-9, wrk_load.get("duration_us", 1) / 1e6)
    print(f"profile of amq's worker  {info['date']}  amq {info['amq']}  c={args.concurrency} "
          f"delay={args.delay:g}s  load {load}")
    print(f"  {rps:,.0f} req/s during the run; worker CPU {cpu:.1f} s in {args.duration:g} s sampled"
          f" ({100 * cpu / args.duration:.0f}% of a core: user {user:.1f} s, kernel {system:.1f} s);"
          f" {summary['samples']} samples (busy only)")
    print("\nbusy time by stage (each sample counted once, in its deepest stage):")
    for name, share in summary["stages"]:
        print(f"  {share:5.1f}%  {name}")
    print("\ninclusive (function and everything it calls):")
    for name, share in summary["inclusive"]:
        print(f"  {share:5.1f}%  {name}")
    print("\nself (in the function itself, syscalls included):")
    for name, share in summary["self"][:15]:
        print(f"  {share:5.1f}%  {name}")
    (RESULTS / f"profile-amq-{label}.json").write_text(json.dumps(
        {"machine": info, "args": vars(args), "rps": rps, "worker_cpu_s": cpu,
         "worker_user_s": user, "worker_kernel_s": system, **summary}, indent=2))
    print(f"\ncollapsed stacks: {raw.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
