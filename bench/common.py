"""Shared plumbing for the bench scripts: processes, ports, RSS, load average, results.

Nothing here is measured; it only starts and watches the things that are.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

ANTHROPIC_HEADERS = {"Content-Type": "application/json", "x-api-key": "sk-bench",
                     "anthropic-version": "2023-06-01"}

# A small Claude Code-like turn. "tools" adds a system prompt and three tool definitions, so
# the conversion and the token count have something to chew on.
SMALL_REQUEST = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024, "stream": True,
                 "messages": [{"role": "user", "content": "Explain how the pieces fit together, "
                               "then show a short Python example."}]}
_TOOL = {"name": "Bash", "description": "Run a shell command and return its output. " * 8,
         "input_schema": {"type": "object", "properties": {
             "command": {"type": "string", "description": "the command"},
             "timeout": {"type": "integer", "description": "milliseconds"}},
             "required": ["command"]}}
TOOLS_REQUEST = dict(SMALL_REQUEST,
                     system="You are a careful coding assistant. " * 60,
                     tools=[dict(_TOOL, name=name) for name in ("Bash", "Read", "Edit")],
                     messages=[{"role": "user", "content": "List the files."},
                               {"role": "assistant", "content": [
                                   {"type": "text", "text": "Let me look."},
                                   {"type": "tool_use", "id": "toolu_01", "name": "Bash",
                                    "input": {"command": "ls"}}]},
                               {"role": "user", "content": [
                                   {"type": "tool_result", "tool_use_id": "toolu_01",
                                    "content": "README.md\namq\ntests\n" * 20}]}])
REQUESTS = {"small": SMALL_REQUEST, "tools": TOOLS_REQUEST}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit(wanted: int = 16384) -> None:
    """Children inherit it: 1000 streams need ~2000 descriptors in amq alone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """Terminate one process we started (by its pid), then kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class FastQProcess:
    """A fake Q in its own process; `settings` holds its URL and credentials.

    kind "fastq" is bench/fastq.py (the fair, fast upstream); kind "fakeq" is the tests' strict
    `python -m tests.fakeq --fast --no-rotate` (threads, 1-400 byte chunks), kept for comparison.
    `cpus` pins the process (taskset -c) when given.
    """

    def __init__(self, *, delay: float = 0.0, reply: str = "typical", kind: str = "fastq",
                 cpus: str | None = None, jitter: float = 0.0):
        self.port = free_port()
        self.kind = kind
        self.log = tempfile.NamedTemporaryFile(prefix=f"{kind}-", suffix=".log", delete=False)  # noqa: SIM115 - the process's log, read after it exits
        if kind == "fastq":
            cmd = [sys.executable, str(BENCH / "fastq.py"), "--port", str(self.port),
                   "--delay", str(delay), "--reply", reply, "--jitter", str(jitter)]
        else:
            cmd = [sys.executable, "-m", "tests.fakeq", "--port", str(self.port), "--fast",
                   "--no-rotate", "--delay", str(delay)]
        if cpus:
            cmd = ["taskset", "-c", cpus, *cmd]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True)
        try:
            self.settings = self._read_settings()
            wait_port(self.port, self.proc)
        except Exception:
            stop(self.proc)
            raise RuntimeError(f"{kind} did not start:\n" + Path(self.log.name).read_text()) from None
        self.url = self.settings["url"]

    def _read_settings(self) -> dict:
        if self.kind == "fastq":
            return json.loads(self.proc.stdout.readline())
        printed = {}
        for _ in range(6):  # tests.fakeq prints six "name: value" / NAME=value lines
            line = self.proc.stdout.readline()
            key, _, value = line.partition("=") if "=" in line.split(":")[0] else line.partition(":")
            printed[key.strip()] = value.strip()
        return {"url": printed["AMAZONQ_API_ENDPOINT"].rstrip("/"), "client_id": printed["client id"],
                "client_secret": printed["client secret"], "refresh_token": printed["refresh token"],
                "access_token": printed["access token"]}

    @property
    def pid(self) -> int:
        """The server's own pid (under taskset, exec keeps the pid)."""
        return self.proc.pid

    def stop(self) -> None:
        stop(self.proc)
        self.proc.stdout.close()


class AmqProcess:
    """amq under `python -m gunicorn -k gevent` (one worker), pointed at a fake Q.

    LOG_LEVEL=WARNING keeps gunicorn's and amq's per-request log lines out of the measurement.
    `app_dir` serves another checkout (a changed copy of amq, to compare) instead of this one.
    """

    def __init__(self, fake: FastQProcess, *, workers: int = 1, log_level: str = "WARNING",
                 extra_env: dict | None = None, extra_args: list[str] | None = None,
                 cpus: str | None = None, app_dir: str | Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tempfile.mkdtemp(prefix="amq-bench-")
        self.log_path = Path(self.tmp) / "gunicorn.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AMAZONQ_", "UPSTREAM_"))}
        s = fake.settings
        env.update({"AMAZONQ_REFRESH_TOKEN": s["refresh_token"], "AMAZONQ_CLIENT_ID": s["client_id"],
                    "AMAZONQ_CLIENT_SECRET": s["client_secret"], "AMAZONQ_API_ENDPOINT": s["url"] + "/",
                    "AMAZONQ_TOKEN_ENDPOINT": s["url"] + "/token",
                    "AMAZONQ_TOKEN_CACHE": str(Path(self.tmp) / "token.json"),
                    "LOG_LEVEL": log_level, "PORT": str(self.port), "WEB_CONCURRENCY": str(workers)})
        env.update(extra_env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the server's whole life
        taskset = ["taskset", "-c", cpus] if cpus else []
        self.proc = subprocess.Popen(
            [*taskset, sys.executable, "-m", "gunicorn", "-k", "gevent", "-c", "gunicorn.conf.py",
             "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}", *(extra_args or []),
             "wsgi:app"],
            cwd=app_dir or ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc)
            self.worker_pid = self._wait_worker()
        except Exception:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError("amq did not start:\n" + tail) from None

    def _wait_worker(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.05)
        raise RuntimeError("no gunicorn worker appeared")

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def warnings(self) -> list[str]:
        if not self._log.closed:
            self._log.flush()
        return [line for line in self.log_path.read_text(errors="replace").splitlines()
                if " WARNING " in line or " ERROR " in line or "Traceback" in line]

    def stop(self, keep_log: str | None = None) -> None:
        """Stop gunicorn; `keep_log` copies its log to bench/results/KEEP_LOG.log first."""
        stop(self.proc, 15)
        self._log.close()
        if keep_log:
            RESULTS.mkdir(exist_ok=True)
            shutil.copy(self.log_path, RESULTS / f"{keep_log}.log")
        shutil.rmtree(self.tmp, ignore_errors=True)


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def rss_kib(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak since start) of one process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds of one process so far."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(parts[11]) / tick, int(parts[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + kernel CPU seconds of one process so far."""
    return sum(cpu_split(pid))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def need_tool(name: str, package: str | None = None) -> str:
    """The path of a load generator, installing its Debian package first if we may (root)."""
    path = shutil.which(name)
    if path:
        return path
    package = package or name
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"[bench] {name} not found: apt-get install -y {package}", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        quiet = {"stdout": subprocess.DEVNULL, "env": env}
        if subprocess.call(["apt-get", "install", "-y", "-q", package], **quiet) != 0:
            subprocess.call(["apt-get", "update", "-q"], **quiet)
            subprocess.call(["apt-get", "install", "-y", "-q", package], **quiet)
        path = shutil.which(name)
    if not path:
        sys.exit(f"bench: {name} is needed: install Debian's package '{package}' (apt-get install {package})")
    return path


def amq_version() -> str:
    """The commit measured, with '+changes' when amq's files differ from it."""
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "amq", "app.py", "wsgi.py", "gunicorn.conf.py")
    return commit + ("+changes" if dirty else "")


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_start": loadavg(),
            "kernel": platform.release(), "amq": amq_version(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def save(name: str, data: dict) -> Path:
    """bench/results/NAME.json (gitignored): the figures of the last run."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation): p50 of [1, 2, 3, 4] is 2."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]
