"""The real Claude Code CLI through amq: a prompt, a tool loop, the non-streaming fallback."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.eventstream_encode import encode_exception
from tests.fakeq import raw_reply, text_reply, tool_reply
from tests.support import USER_HOME

# 2.1.332 needs node >= 22 by its package metadata, but ships a native binary (npm's optional
# platform package), so it runs on any node; without the pin npm quietly picks an older one.
CLAUDE_CODE_VERSION = "2.1.332"
CACHE = Path(os.environ.get("AMQ_TEST_CACHE", USER_HOME / ".cache" / "amq-tests"))
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET",
                  "network request", "getaddrinfo")


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """Install Claude Code into a folder the tests own (once; reused across runs)."""
    prefix = CACHE / f"claude-code-{CLAUDE_CODE_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "claude"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed, so Claude Code cannot be installed")
    prefix.mkdir(parents=True, exist_ok=True)
    # npm reads its registry settings from the user's real home (the tests' HOME is empty).
    result = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                             f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
                            env=dict(os.environ, HOME=str(USER_HOME)), capture_output=True, text=True,
                            timeout=900)
    if result.returncode != 0:
        if any(marker in result.stderr for marker in NETWORK_ERRORS):
            pytest.skip(f"the npm registry cannot be reached: {result.stderr.strip()[-300:]}")
        pytest.fail(f"npm install of Claude Code failed:\n{result.stderr[-2000:]}")
    assert binary.exists(), "npm installed Claude Code but no claude executable appeared"
    return binary


def run_claude(claude_bin, amq_server, tmp_path, prompt, *extra_args):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": amq_server.url,
           "ANTHROPIC_API_KEY": "sk-ant-test", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           # Fail fast instead of Claude Code's own long retry loop when something is wrong.
           "CLAUDE_CODE_MAX_RETRIES": "0"}
    result = subprocess.run([str(claude_bin), "-p", prompt, "--output-format", "json", *extra_args],
                            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, f"claude failed: {result.stdout}\n{result.stderr}\n{amq_server.log()[-3000:]}"
    return json.loads(result.stdout)


def test_plain_prompt(claude_bin, amq_server, fake_q, tmp_path):
    fake_q.enqueue(text_reply("Hello from amq and fake Q."))
    output = run_claude(claude_bin, amq_server, tmp_path, "say hello")
    assert output["result"] == "Hello from amq and fake Q."
    assert output["is_error"] is False
    assert fake_q.rejections == []  # Claude Code's real request passed the strict fake
    body = fake_q.requests[-1]["body"]
    assert body["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]["tools"]


def test_tool_loop(claude_bin, amq_server, fake_q, tmp_path):
    fake_q.enqueue(tool_reply("Bash", {"command": "echo amq-tool-ok", "description": "Print a marker"},
                              text="I'll run it."),
                   text_reply("The command printed amq-tool-ok."))
    output = run_claude(claude_bin, amq_server, tmp_path, "run the marker command", "--allowedTools", "Bash")
    assert output["result"] == "The command printed amq-tool-ok."
    assert fake_q.rejections == []
    last = fake_q.requests[-1]["body"]["conversationState"]
    results = last["currentMessage"]["userInputMessage"]["userInputMessageContext"]["toolResults"]
    assert any("amq-tool-ok" in part.get("text", "") for result in results for part in result["content"])
    assert any(entry.get("assistantResponseMessage", {}).get("toolUses") for entry in last["history"])


def test_non_streaming_fallback(claude_bin, amq_server, fake_q, tmp_path):
    fake_q.enqueue(raw_reply([encode_exception("error", "Encountered an unexpected error")]),
                   text_reply("Answer after the fallback."))
    log_start = len(amq_server.log())
    output = run_claude(claude_bin, amq_server, tmp_path, "say something")
    assert output["result"] == "Answer after the fallback."
    log = amq_server.log()[log_start:]
    # the stream Q broke off, then the non-streaming retry
    assert re.search(r"POST /v1/messages 200 outcome=upstream_api_error model=\S+", log)
    assert re.search(r"POST /v1/messages 200 outcome=none model=\S+", log)  # the fallback
