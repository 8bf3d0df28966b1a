"""The real Claude Code CLI's tool loop through a pool whose accounts fail one after the other."""
from __future__ import annotations

from amq.credentials.store import FileStore
from tests.fakeq import FakeQ, text_reply, tool_reply
from tests.support import AmqServer, amq_env
from tests.test_claude_code import claude_bin, run_claude  # noqa: F401 - claude_bin is a fixture


def test_claude_codes_tool_loop_completes_across_failovers(claude_bin, tmp_path):  # noqa: F811
    with FakeQ() as fake:
        store = FileStore(str(tmp_path / "token.json"))
        # a: throttled at the first turn; b: serves one call, then its monthly limit is reached.
        for name, behaviour in (("a", {"throttled": 1}), ("b", {"limit": 1}), ("c", {})):
            store.replace_login({"clientId": fake.client_id, "clientSecret": fake.client_secret,
                                 "refreshToken": fake.add_account(name, **behaviour),
                                 "tokenEndpoint": fake.token_url, "source": "login"}, name)
        fake.enqueue(tool_reply("Bash", {"command": "echo amq-pool-ok", "description": "Print a marker"}),
                     text_reply("The command printed amq-pool-ok."))
        env = amq_env(fake, tmp_path / "token.json", AMAZONQ_REFRESH_TOKEN="",
                      AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="a,b,c")
        server = AmqServer(env, tmp_path / "gunicorn.log")
        try:
            output = run_claude(claude_bin, server, tmp_path, "run the marker command", "--allowedTools", "Bash")
        finally:
            server.stop()
        assert output["result"] == "The command printed amq-pool-ok." and output["is_error"] is False
        assert fake.rejections == []
        served = [(r["account"], r["refused"]) for r in fake.requests]
        assert served[:2] == [("a", 429), ("b", None)]  # turn 1: a throttled, b answers with the tool call
        assert ("b", 400) in served and served[-1] == ("c", None)  # turn 2: b exhausted, c answers
        last = fake.requests[-1]["body"]["conversationState"]
        results = last["currentMessage"]["userInputMessage"]["userInputMessageContext"]["toolResults"]
        assert any("amq-pool-ok" in part.get("text", "") for result in results for part in result["content"])
