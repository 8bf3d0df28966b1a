"""What one frame of a real-pace stream costs a gevent worker with nothing of amq in it.

    python bench/stream_floor.py [--streams 100] [--seconds 20] [--rounds 2]

bench/large_requests.py measures amq's worker CPU per frame delivered (N streams, a frame every
20-50 ms from bench/fastq.py). This runs the same clients against the same fake through two
stand-ins, to show how much of that figure amq can act on:

- **bare relay**: a gevent process that reads each upstream socket and sends what it read to
  its client (one recv, one send per frame; no HTTP after the connection opens);
- **design card**: gunicorn -k gevent, one worker, serving bench/floor/wsgi.py: a Flask view
  that POSTs to the fake with requests and yields one SSE event per `iter_content` chunk;
- **amq**: this checkout, as bench/large_requests.py part 3 runs it in its quiet phase,
  without the loop probe.

Each prints the worker's CPU per frame the clients received. The two stand-ins send one event
per upstream read, so they count all of an answer's frames (53 with fastq's typical answer;
the bare relay 54, as fastq's response head comes in a read of its own); amq counts its text
deltas (50 of them), so its figure reads about 5% high beside theirs. CPU time, from
/proc; rounds alternate the three so a shared machine's load weighs on each alike.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import common  # noqa: E402,F401  (puts the repo root on sys.path)
import gevent  # noqa: E402
from common import AmqProcess, FastQProcess, cpu_seconds, loadavg, machine, save, stop, wait_port  # noqa: E402
from large_requests import Streams  # noqa: E402

HERE = Path(__file__).resolve().parent
RELAY = '''
from gevent import monkey; monkey.patch_all()
import socket, sys, gevent
upstream = ("127.0.0.1", int(sys.argv[1]))
request = open(sys.argv[2], "rb").read()
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0)); server.listen(1024); print(server.getsockname()[1], flush=True)
def serve(client):
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        client.recv(65536)  # the client's request; every answer is the same
        up = socket.create_connection(upstream); up.sendall(request)
        client.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/event-stream\\r\\nConnection: close\\r\\n\\r\\n")
        while True:  # the fake closes after the answer (Connection: close)
            data = up.recv(65536)
            if not data: break
            if len(data) > 7:  # not just the terminating chunk
                client.sendall(b"event: content_block_delta\\ndata: {}\\n\\n")
        client.sendall(b"event: message_stop\\ndata: {}\\n\\n")
    except OSError:
        pass
    finally:
        client.close()
while True:
    conn, _ = server.accept(); gevent.spawn(serve, conn)
'''


def measure(port: int, pid: int, streams: int, seconds: float) -> dict:
    clients = Streams(port, streams)
    gevent.sleep(4)  # every stream under way
    clients.phase = "measured"
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    gevent.sleep(seconds)
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    clients.phase = "after"
    frames, answers = clients.frames.get("measured", 0), clients.answers.get("measured", 0)
    clients.stop()
    return {"cpu_s": cpu, "wall_s": wall, "frames": frames, "answers": answers, "errors": len(clients.errors)}


class BareRelay:
    def __init__(self, fake: FastQProcess, tmp: Path):
        s = fake.settings
        body = (b'{"conversationState":{"chatTriggerType":"MANUAL","currentMessage":{"userInputMessage":'
                b'{"content":"hello","modelId":"claude-sonnet-4"}}}}')
        request = (f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.0\r\n"
                   f"X-Amz-Target: AmazonCodeWhispererStreamingService.GenerateAssistantResponse\r\n"
                   f"Authorization: Bearer {s['access_token']}\r\nContent-Length: {len(body)}\r\n"
                   f"Connection: close\r\n\r\n").encode() + body
        (tmp / "request").write_bytes(request)
        self.proc = subprocess.Popen([sys.executable, "-c", RELAY, str(fake.port), str(tmp / "request")],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        wait_port(self.port, self.proc)
        self.worker_pid = self.proc.pid

    def stop(self) -> None:
        stop(self.proc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--jitter", type=float, default=0.03)
    args = parser.parse_args(argv)
    common.raise_fd_limit()
    info = machine()
    print(f"stream floor bench  {info['date']}  amq {info['amq']}  python {info['python']}"
          f"  load {info['loadavg_start']}", flush=True)
    fake = FastQProcess(delay=args.delay, jitter=args.jitter)
    totals: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="amq-floor-"))
    try:
        for _ in range(args.rounds):
            for name in ("bare relay", "design card", "amq"):
                if name == "bare relay":
                    server = BareRelay(fake, tmp)
                elif name == "design card":
                    server = AmqProcess(fake, app_dir=HERE / "floor",
                                        extra_env={"BENCH_ACCESS_TOKEN": fake.settings["access_token"]})
                else:
                    server = AmqProcess(fake)
                try:
                    run = measure(server.port, server.worker_pid, args.streams, args.seconds)
                finally:
                    server.stop()
                total = totals.setdefault(name, {"cpu_s": 0.0, "wall_s": 0.0, "frames": 0, "answers": 0,
                                                 "errors": 0, "loadavg": []})
                for key in ("cpu_s", "wall_s", "frames", "answers", "errors"):
                    total[key] += run[key]
                total["loadavg"].append(loadavg())
                print(f"   {name:12} {run['frames'] / run['wall_s']:6.0f} frames/s, worker busy"
                      f" {run['cpu_s'] / run['wall_s'] * 100:3.0f}%, {run['cpu_s'] / max(1, run['frames']) * 1e6:5.0f}"
                      f" us per frame, errors {run['errors']}", flush=True)
    finally:
        fake.stop()
    print(f"\n{args.streams} streams, a frame every {args.delay * 1000:.0f}-{(args.delay + args.jitter) * 1000:.0f} ms,"
          f" {args.rounds} x {args.seconds:.0f} s each:")
    for name, t in totals.items():
        t["cpu_per_frame_us"] = t["cpu_s"] / max(1, t["frames"]) * 1e6
        t["frames_per_answer"] = t["frames"] / max(1, t["answers"])
        print(f"   {name:12} {t['cpu_per_frame_us']:5.0f} us per frame ({t['frames_per_answer']:.0f} frames per"
              f" answer, {t['errors']} errors; load {', '.join(t['loadavg'])})")
    path = save("stream_floor", {"machine": info, "args": vars(args), "results": totals})
    print(f"\nresults: {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
