"""Decoder throughput: amq's EventStreamDecoder against botocore's EventStreamBuffer.

Both decoders get the same bytes cut into the same chunks, and a fresh decoder per stream
(as each Q answer is a new stream). A stream counts as decoded when every frame came out
with its headers parsed and its payload sliced.

    python bench/decoder.py [--seconds 1.0] [--repeat 5] [--profile]

Workloads:
  typical/frame     the ~50-frame typical Q answer (130-181 B frames), one HTTP chunk per frame
                    (what amq's iter_content(chunk_size=None) hands over from a real Q stream)
  typical/uneven    the same bytes in tests.fakeq's uneven chunks (1-400 B, frames straddle)
  typical/4k        the same bytes in 4 KiB reads (several frames per chunk)
  large/16k         4 frames of 64 KiB..1 MiB (a big tool input), in 16 KiB reads
Target: amq at least 2x botocore on the typical answer (frame and uneven chunks).
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import common  # noqa: F401  (puts the repo root on sys.path)
from botocore.eventstream import EventStreamBuffer
from common import machine, save, verdict

from amq.eventstream import EventStreamDecoder
from tests.eventstream_encode import encode_event
from tests.fakeq import chunk_size, typical_reply

TARGET_RATIO = 2.0


def typical_frames() -> list[bytes]:
    return typical_reply().frames("bench-conversation")


def large_frames() -> list[bytes]:
    out = []
    for size in (64 * 1024, 256 * 1024, 512 * 1024, 1024 * 1024):
        fragment = ("x" * 63 + "\n") * (size // 64)
        out.append(encode_event("toolUseEvent", {"toolUseId": "tooluse_bench", "name": "Write",
                                                 "input": fragment}))
    return out


def split_fixed(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def split_uneven(data: bytes, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        step = chunk_size(rng)
        out.append(data[pos:pos + step])
        pos += step
    return out


def run_amq(chunks: list[bytes]) -> int:
    decoder = EventStreamDecoder()
    count = 0
    for chunk in chunks:
        count += len(decoder.feed(chunk))
    decoder.finish()
    return count


def run_botocore(chunks: list[bytes]) -> int:
    buffer = EventStreamBuffer()
    count = 0
    for chunk in chunks:
        buffer.add_data(chunk)
        for _message in buffer:
            count += 1
    return count


def measure(fn, chunks: list[bytes], frames: int, seconds: float, repeat: int) -> float:
    """Best time of `repeat` rounds for one stream, each round running for about `seconds`."""
    assert fn(chunks) == frames, f"{fn.__name__} decoded a wrong number of frames"
    start = time.perf_counter()
    loops = 0
    while time.perf_counter() - start < seconds / 10:  # calibrate: loops in a tenth of a round
        fn(chunks)
        loops += 1
    loops *= 10
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn(chunks)
        best = min(best, (time.perf_counter() - t0) / loops)
    return best


def workloads() -> dict[str, tuple[list[bytes], int]]:
    typical = typical_frames()
    typical_bytes = b"".join(typical)
    large = b"".join(large_frames())
    return {
        "typical/frame": (list(typical), len(typical)),
        "typical/uneven": (split_uneven(typical_bytes), len(typical)),
        "typical/4k": (split_fixed(typical_bytes, 4096), len(typical)),
        "large/16k": (split_fixed(large, 16 * 1024), 4),
    }


def profile(chunks: list[bytes]) -> None:
    """Where amq's decoder spends its time on the typical answer (pyinstrument)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("--profile needs pyinstrument: pip install -r bench/requirements.txt")
    profiler = Profiler(interval=0.0001)
    profiler.start()
    deadline = time.perf_counter() + 2
    while time.perf_counter() < deadline:
        run_amq(chunks)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per round (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best counts (default 5)")
    parser.add_argument("--profile", action="store_true", help="also profile amq on typical/frame")
    args = parser.parse_args(argv)

    info = machine()
    print(f"decoder bench  {info['date']}  amq {info['amq']}  python {info['python']}  load {info['loadavg_start']}")
    header = f"{'workload':<16}{'chunks':>7}{'bytes':>9}  {'amq MB/s':>9}{'frames/s':>10}  " \
             f"{'boto MB/s':>9}{'frames/s':>10}  {'ratio':>6}"
    print(header)
    print("-" * len(header))
    rows = {}
    for name, (chunks, frames) in workloads().items():
        size = sum(map(len, chunks))
        t_amq = measure(run_amq, chunks, frames, args.seconds, args.repeat)
        t_boto = measure(run_botocore, chunks, frames, args.seconds, args.repeat)
        row = {"chunks": len(chunks), "bytes": size, "frames": frames,
               "amq_mb_s": size / t_amq / 1e6, "amq_frames_s": frames / t_amq,
               "botocore_mb_s": size / t_boto / 1e6, "botocore_frames_s": frames / t_boto,
               "ratio": t_boto / t_amq}
        rows[name] = row
        print(f"{name:<16}{len(chunks):>7}{size:>9}  {row['amq_mb_s']:>9.1f}{row['amq_frames_s']:>10,.0f}  "
              f"{row['botocore_mb_s']:>9.1f}{row['botocore_frames_s']:>10,.0f}  {row['ratio']:>5.2f}x",
              flush=True)
    typical_ratio = min(rows["typical/frame"]["ratio"], rows["typical/uneven"]["ratio"])
    ok = typical_ratio >= TARGET_RATIO
    print(f"\ntarget: amq >= {TARGET_RATIO:.0f}x botocore on the typical answer -> "
          f"{typical_ratio:.2f}x (worst of frame/uneven chunks)  {verdict(ok)}")
    info["loadavg_end"] = common.loadavg()
    path = save("decoder", {"machine": info, "args": vars(args), "workloads": rows,
                            "typical_ratio": typical_ratio, "target_ratio": TARGET_RATIO, "pass": ok})
    print(f"results: {path.relative_to(common.ROOT)}  (load at end {info['loadavg_end']})")
    if args.profile:
        profile(workloads()["typical/frame"][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
