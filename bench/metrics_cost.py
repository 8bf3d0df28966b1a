"""CPU cost of the metrics and the access-log line per request, against a small answer's CPU.

    python bench/metrics_cost.py [--iterations 20000] [--answers 400] [--rounds 3]

Two measurements, both of CPU time (process user+system seconds), not wall time, so that other
work on a shared machine moves them little:

1. instrumentation: what amq does per streamed request for its metrics and log, called through
   the same public functions the app calls (a RequestRecord with the key's fingerprint, the
   stream wrapper over 8 batches, the error-counting wrapper, one upstream attempt counted,
   finish_request, the access line formatted and written to /dev/null), timed with
   time.process_time in a child process: with PROMETHEUS_MULTIPROC_DIR set (as under
   gunicorn: every increment is an mmap write) and without it (`flask run`), text and JSON lines.
2. a small answer: amq under gunicorn (one gevent worker) in front of bench/fastq.py's typical
   answer (~50 text frames), streamed to one keep-alive client; the worker's CPU (from /proc)
   over N answers. Run with LOG_LEVEL=INFO (access line written) and WARNING (no access line),
   interleaved, medians over rounds.

The verdict: instrumentation (1, multiprocess, JSON line: the dearer case) / the answer's CPU (2,
INFO) < 5%. Metrics cannot be switched off in amq, so (2) alone cannot show them; (1) is the
added work measured on its own, and INFO - WARNING in (2) is the access line end to end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import common  # noqa: F401  (puts the repo root on sys.path)
import requests
from common import SMALL_REQUEST, AmqProcess, FastQProcess, cpu_seconds, loadavg, machine, save, verdict

TARGET = 0.05
HEADERS = {"Content-Type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}

# Run in a child process, so PROMETHEUS_MULTIPROC_DIR is set (or not) before the import.
_INSTRUMENTATION = r'''
import io, json, logging, os, sys, time
from amq import metrics
from amq.logs import JsonFormatter, TEXT_FORMAT, key_fingerprint, log_access
from amq.errors import RateLimited

handler = logging.StreamHandler(open(os.devnull, "w"))
handler.setFormatter(JsonFormatter() if sys.argv[2] == "json" else logging.Formatter(TEXT_FORMAT))
logging.getLogger().addHandler(handler)
logging.getLogger("amq").setLevel("INFO")
iterations = int(sys.argv[1])
batches = [[{"type": "content_block_delta"}]] * 8
chunks = [b"event: content_block_delta\ndata: {}\n\n"] * 8

def one_request():
    record = metrics.RequestRecord(
        request_id="req_0123456789abcdef0123456789abcdef", method="POST", path="/v1/messages",
        endpoint="/v1/messages", client="127.0.0.1", key_fingerprint=key_fingerprint("sk-bench"),
        started=time.monotonic())
    record.model = "claude-sonnet-4.5"
    metrics.count_attempt(None)
    record.usage_source = lambda: metrics.Usage(2400, 101, 0.0097)
    events = metrics.count_stream_errors(iter(batches))
    for _ in metrics.observe_stream(iter(chunks), record):
        next(events, None)
    record.status = 200
    metrics.finish_request(record)
    log_access(record)

for _ in range(200):
    one_request()
start = time.process_time()
for _ in range(iterations):
    one_request()
print(json.dumps({"us_per_request": (time.process_time() - start) / iterations * 1e6}))
'''


def instrumentation(iterations: int, multiprocess: bool, log_format: str) -> float:
    """CPU microseconds per request of the metrics and log calls (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="amq-bench-metrics-") as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        out = subprocess.run([sys.executable, "-c", _INSTRUMENTATION, str(iterations), log_format],
                             cwd=common.ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["us_per_request"]


def answer_cpu(fake: FastQProcess, answers: int, log_level: str) -> float:
    """Worker CPU milliseconds per small streamed answer, one keep-alive client."""
    amq = AmqProcess(fake, log_level=log_level)
    try:
        with requests.Session() as session:
            def ask():
                response = session.post(amq.url + "/v1/messages", json=SMALL_REQUEST,
                                        headers=HEADERS, timeout=30)
                assert response.status_code == 200 and b"message_stop" in response.content
            for _ in range(50):
                ask()  # warm-up: token, model list, first imports
            cpu0 = cpu_seconds(amq.worker_pid)
            for _ in range(answers):
                ask()
            return (cpu_seconds(amq.worker_pid) - cpu0) / answers * 1000
    finally:
        amq.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--answers", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"metrics_cost  {machine()['date']}  load {loadavg()}", flush=True)

    costs = {}
    for multiprocess in (True, False):
        for log_format in ("text", "json"):
            key = f"{'multiprocess' if multiprocess else 'one process'}, {log_format} line"
            costs[key] = statistics.median(instrumentation(args.iterations, multiprocess, log_format)
                                           for _ in range(args.rounds))
            print(f"  instrumentation per request ({key}): {costs[key]:.1f} us CPU", flush=True)

    per_level: dict[str, list[float]] = {"INFO": [], "WARNING": []}
    fake = FastQProcess()
    try:
        for _ in range(args.rounds):
            for level in per_level:
                per_level[level].append(answer_cpu(fake, args.answers, level))
    finally:
        fake.stop()
    answer = {level: statistics.median(values) for level, values in per_level.items()}
    print(f"  small answer, worker CPU: {answer['INFO']:.3f} ms with the access line (INFO), "
          f"{answer['WARNING']:.3f} ms without (WARNING); rounds {per_level}", flush=True)

    dearest = costs["multiprocess, json line"]
    share = dearest / 1000 / answer["INFO"]
    print(f"metrics + access line: {dearest:.1f} us of {answer['INFO'] * 1000:.0f} us per small answer "
          f"= {share:.1%} (target < {TARGET:.0%}): {verdict(share < TARGET)}  load {loadavg()}")
    save("metrics_cost", {"machine": machine(), "instrumentation_us": costs,
                          "answer_cpu_ms": answer, "answer_cpu_ms_rounds": per_level,
                          "share": share, "target": TARGET})
    return 0


if __name__ == "__main__":
    sys.exit(main())
