"""A fresh install runs: a virtualenv built from requirements.txt alone serves the proxy.

The test suite's own requirements pull in more (pytest brings `packaging`, for one), so a green
suite says nothing about the product a PaaS or a new user installs. These tests build that second
virtualenv and boot amq from it exactly as the Procfile and the README say.
"""
from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, amq_env, clean_environ, free_port, sse_events

# Files that run in production; their imports must all come from requirements.txt.
RUNTIME_FILES = sorted([*ROOT.joinpath("amq").rglob("*.py"), ROOT / "app.py", ROOT / "wsgi.py",
                        ROOT / "gunicorn.conf.py"])
FIRST_PARTY = {"amq", "app", "wsgi"}
# Loaded by configuration, not by an import of ours: gunicorn.conf.py selects the gevent worker.
CONFIGURED_MODULES = ("gunicorn.workers.ggevent",)
EXPECTED_EVENTS = ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                   "message_delta", "message_stop"]


def runtime_imports() -> set[str]:
    """Top-level names of the third-party modules the runtime files import (anywhere in them)."""
    names = set()
    for path in RUNTIME_FILES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in FIRST_PARTY}


def requirement_names() -> set[str]:
    """Distribution names listed in requirements.txt, normalised as PEP 503 does."""
    names = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_normalise(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]))
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A virtualenv holding requirements.txt and nothing else."""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                             "-r", "requirements.txt"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"pip install -r requirements.txt failed:\n{result.stdout}{result.stderr}"
    return venv


def runtime_env(venv: Path, home: Path, **settings: str) -> dict:
    """The environment of a shell whose virtualenv is `venv`: no amq setting, Python or Flask
    variable from the outside, only `settings`."""
    env = {k: v for k, v in clean_environ(os.environ, home).items()
           if not k.startswith(("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "FLASK_"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    env.update(settings)
    return env


class Booted:
    """A shell command serving amq, started in its own process group so the group is stopped."""

    def __init__(self, command: str, env: dict, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode} before serving:\n{self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server did not answer /health within {seconds} s:\n{self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def procfile_web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("Procfile has no web: process")


def readme_run_command() -> str:
    """The one command in the README's "Run it" section's first sh block."""
    section = (ROOT / "README.md").read_text().split("\n## Run it", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0].strip()


def assert_streams_a_whole_answer(url: str) -> None:
    response = requests.post(url + "/v1/messages", timeout=30, json={
        "model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "Say hello."}]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert [n for i, n in enumerate(names) if n != "ping" and (i == 0 or names[i - 1] != n)] == EXPECTED_EVENTS
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "Hello from fake Q."


def test_requirements_install_consistently(runtime_venv):
    result = subprocess.run([str(runtime_venv / "bin" / "pip"), "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_runtime_import_is_a_pinned_requirement(runtime_venv):
    """Each module the runtime imports resolves, in the bare install, to a distribution that
    requirements.txt names itself (not one that happens to come along with another)."""
    probe = ("import importlib, json, sys, importlib.metadata as md\n"
             "missing, owners = {}, md.packages_distributions()\n"
             "for name in sys.argv[1:]:\n"
             "    try:\n"
             "        importlib.import_module(name)\n"
             "    except ImportError as exc:\n"
             "        missing[name] = str(exc)\n"
             "print(json.dumps({'missing': missing, 'owners': {n.split('.')[0]: owners.get(n.split('.')[0], [])"
             " for n in sys.argv[1:]}}))\n")
    modules = sorted(runtime_imports()) + list(CONFIGURED_MODULES)
    result = subprocess.run([str(runtime_venv / "bin" / "python"), "-c", probe, *modules],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["missing"] == {}, f"requirements.txt does not provide: {found['missing']}"
    listed = requirement_names()
    unlisted = {module: dists for module, dists in found["owners"].items()
                if not {_normalise(d) for d in dists} & listed}
    assert unlisted == {}, f"imported at run time but not pinned in requirements.txt: {unlisted}"


def test_the_import_check_sees_gunicorns_packaging_import():
    """The check above would have caught the missing `packaging`: the gevent worker needs it."""
    import gunicorn.workers.ggevent as ggevent

    source = ast.parse(Path(ggevent.__file__).read_text())
    imported = {node.module.split(".")[0] for node in ast.walk(source)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert "packaging" in imported and "packaging" in requirement_names()


@pytest.mark.parametrize("how", ["procfile", "readme", "flask-run"])
def test_bare_install_serves_a_streaming_answer(how, runtime_venv, fake_q, tmp_path):
    port = free_port()
    command = {"procfile": procfile_web_command(), "readme": readme_run_command(),
               "flask-run": "flask --app app run"}[how]
    env = runtime_env(runtime_venv, tmp_path, PORT=str(port), FLASK_RUN_PORT=str(port),
                      **amq_env(fake_q, tmp_path / "token.json", LOG_LEVEL="INFO"))
    server = Booted(command, env, port, tmp_path / "server.log")
    try:
        server.wait_healthy()
        assert_streams_a_whole_answer(server.url)
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def test_bare_install_without_a_login_says_what_is_missing(runtime_venv, tmp_path):
    port = free_port()
    env = runtime_env(runtime_venv, tmp_path, PORT=str(port),
                      AMAZONQ_TOKEN_CACHE=str(tmp_path / "empty" / "token.json"))
    server = Booted(procfile_web_command(), env, port, tmp_path / "server.log")
    try:
        returncode = server.process.wait(60)
    finally:
        server.stop()  # the whole process group, should it have started after all
    output = server.output().strip()
    assert returncode != 0
    assert "Traceback" not in output
    assert output.splitlines()[-1].startswith("amq: configuration error: AMAZONQ_REFRESH_TOKEN is not set"), output


def test_bare_install_imports_the_gevent_worker_and_the_app_without_a_login(runtime_venv, tmp_path):
    """Only starting a server needs a login (the test above): tools that import the WSGI app,
    or the gevent worker class, get them; the app then answers with a 401 naming the fix."""
    env = runtime_env(runtime_venv, tmp_path, AMAZONQ_TOKEN_CACHE=str(tmp_path / "empty" / "token.json"))
    script = ("import json, gunicorn.workers.ggevent, wsgi; client = wsgi.app.test_client();"
              "r = client.post('/v1/messages', json={'model': 'claude-sonnet-4-5', 'max_tokens': 5,"
              " 'messages': [{'role': 'user', 'content': 'hi'}]});"
              "print(json.dumps({'status': r.status_code, 'body': r.get_json()}))")
    result = subprocess.run([str(runtime_venv / "bin" / "python"), "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["status"] == 401
    assert answer["body"]["error"]["type"] == "authentication_error"
    assert "flask --app app login" in answer["body"]["error"]["message"]
