"""amq.jsonio reads and writes the same JSON values as the stdlib did, orjson or not; the
upstream session reads the environment once per origin and still honours NO_PROXY per host."""
from __future__ import annotations

import json
import math
import random

import pytest
import requests

from amq.jsonio import Checked, OrjsonProvider, dumps, loads
from amq.upstream import EnvironmentOnceSession, new_session

SAME_AS_STDLIB = [
    b'{"a": "\\ud800", "b": "cut \\ud83d"}',  # lone surrogates: orjson refuses them
    b'{"a": NaN, "b": -Infinity, "c": 1e400}',  # no JSON numbers; orjson refuses them
    b'{"big": 123456789012345678901234567890, "neg": -98765432109876543210}',  # orjson: floats
    b'\xef\xbb\xbf{"bom": 1}',
    '{"utf16": "é"}'.encode("utf-16"),
    b'{"raw surrogate": "\xed\xa0\x80"}',
    b'{"a": 1, "a": 2, "f": 0.1, "e": 1E+2, "z": -0, "zf": -0.0, "s": "\\u2028\\u0000"}',
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"t": "ns=1733140000000000000", "u": "id 98765432109876543210"}',  # long runs in text
    b'{"t": "elapsed 1733140000000000000", "big": [1, -12345678901234567890]}',  # ... and a real one
    b'{"a":\n\t -12345678901234567890123, "f": 1.12345678901234567890123}',
    b"12345678901234567890123",
]


@pytest.mark.parametrize("raw", SAME_AS_STDLIB)
def test_loads_reads_what_the_stdlib_reads(raw):
    got, expected = loads(raw), json.loads(raw)
    assert repr(got) == repr(expected)  # repr: NaN != NaN, and int vs float shows
    assert type(got) in (Checked, type(expected))


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": 1,}', b"[1] x", b'{"a": "\x01"}', b"\xff\xfe\x00"])
def test_loads_refuses_what_the_stdlib_refuses_with_its_message(raw):
    with pytest.raises((ValueError, UnicodeDecodeError)) as ours:
        loads(raw)
    with pytest.raises((ValueError, UnicodeDecodeError)) as stdlib:
        json.loads(raw)
    assert str(ours.value) == str(stdlib.value)


def test_only_orjson_read_objects_are_marked_checked():
    assert type(loads(b'{"a": [1, "x", {"b": 2.5}]}')) is Checked
    for raw in (b'{"a": "\\udc80"}', b'{"a": NaN}', b'{"a": 12345678901234567890123}'):
        assert type(loads(raw)) is dict, raw


def test_long_digit_runs_in_text_keep_the_fast_parser():
    """A nanosecond timestamp in one tool output must not send every later turn of the
    conversation to the stdlib (about three times slower on a 550 KB request)."""
    for text in ("ns=1733140000000000000", "x 1733140000000000000 y", "0b" + "01" * 20, "v1.12345678901234567890"):
        got = loads(json.dumps({"messages": [{"content": text}], "n": 12}).encode())
        assert type(got) is Checked and got["messages"][0]["content"] == text, text


def test_the_digit_run_check_gives_up_on_bodies_crafted_to_make_it_slow():
    """Each run in text costs the check a few microseconds of Python: past a budget (64 runs
    plus one per 16 KiB) the body goes to the stdlib, whose cost is bounded, instead."""
    few = json.dumps({"log": " ".join(f"ts={1733140000000000000 + i}" for i in range(60))}).encode()
    many = json.dumps({"log": " ".join(f"ts={1733140000000000000 + i}" for i in range(200))}).encode()
    blanks = b'{"a":' + b" " * 100 + b'"x", "t": "' + b" " * 100 + b'1733140000000000000"}'
    assert type(loads(few)) is Checked
    assert type(loads(many)) is dict and loads(many) == json.loads(many)
    assert type(loads(blanks)) is dict and loads(blanks) == json.loads(blanks)


def test_integers_stay_exact_wherever_long_digit_runs_are():
    """Random documents mixing long integers (any sign, any JSON blanks around them, at the top
    level too) with strings full of long digit runs after every kind of character: always the
    stdlib's values."""
    rng = random.Random(20261202)
    lead = ["", " ", "-", ",", ", ", ":", "[", "=", "a", "\n", "\r", ".", "e", '"', "\\", "x,\r\n -"]

    def number() -> str:
        digits = str(rng.randrange(1, 10)) + "".join(rng.choice("0123456789") for _ in range(rng.randrange(0, 30)))
        return rng.choice(["", "-"]) + digits + rng.choice(["", "", ".5", "e3"])

    def value(depth: int) -> str:
        kind = rng.randrange(4 if depth < 3 else 2)
        if kind == 0:
            return number()
        if kind == 1:
            return json.dumps(rng.choice(lead) + number() + rng.choice(["", " ", ",", "]"]))
        blank = rng.choice(["", " ", "\n\t ", "\r", "\r\n  "])
        items = [blank + value(depth + 1) + blank for _ in range(rng.randrange(1, 4))]
        if kind == 2:
            return "[" + ",".join(items) + "]"
        return "{" + ",".join(f'"k{i}":{item}' for i, item in enumerate(items)) + "}"

    for _ in range(3000):
        raw = (rng.choice(["", " ", "\r\n"]) + value(0)).encode()
        assert repr(loads(raw)) == repr(json.loads(raw)), raw


def test_dumps_parses_back_to_the_value_whatever_orjson_cannot_write():
    for value in ({"a": "é😀\u2028", "n": [1, 2.5, None, True]}, {"big": 2 ** 80}, {1: "int key"},
                  {"deep": json.loads("[" * 300 + "]" * 300)}):
        assert json.loads(dumps(value)) == json.loads(json.dumps(value))


def test_flask_responses_are_the_same_json_values(tmp_path):
    from flask import Flask

    app = Flask(__name__)
    stdlib = app.json
    app.json = OrjsonProvider(app)
    values = [{"b": 1, "a": ["é", 2.5, None]}, {"message": "echoed \ud800 text"}, {"n": 2 ** 70}]
    with app.app_context():
        for value in values:
            ours, theirs = app.json.response(value), stdlib.response(value)
            assert ours.mimetype == theirs.mimetype == "application/json"
            assert json.loads(ours.get_data()) == json.loads(theirs.get_data())
            assert ours.get_data().endswith(b"\n")
        assert app.json.response({"b": 1, "a": 2}).get_data() == b'{"a":2,"b":1}\n'  # sorted, as Flask


def test_nan_is_never_written_as_null_for_a_request():
    """dumps is for converted bodies, which hold no NaN: the converter refuses it first."""
    from amq.convert import convert_request
    from amq.errors import InvalidRequest

    request = {"model": "m", "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"x": math.nan}}]}]}
    with pytest.raises(InvalidRequest):
        convert_request(request, origin="CLI").for_model("m")


# -- the upstream session ----------------------------------------------------------------------

class _Recorder(requests.adapters.HTTPAdapter):
    def __init__(self):
        super().__init__()
        self.sent = []

    def send(self, request, **kwargs):
        self.sent.append((request, kwargs))
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        return response


def _session_with_recorder():
    session = new_session(4)
    assert isinstance(session, EnvironmentOnceSession)
    recorder = _Recorder()
    session.mount("http://", recorder)
    return session, recorder


def test_proxies_come_from_the_environment_and_no_proxy_is_honoured_per_host(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "q.internal")
    session, recorder = _session_with_recorder()
    session.post("http://q.internal/x", data=b"{}")
    session.post("http://q.example/x", data=b"{}")
    proxies = [kwargs["proxies"] for _, kwargs in recorder.sent]
    assert proxies[0].get("http") is None
    assert proxies[1]["http"] == "http://proxy.example:3128"


def test_the_environment_is_read_once_per_origin(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session, recorder = _session_with_recorder()
    lookups = []
    real = requests.sessions.get_environ_proxies
    monkeypatch.setattr(requests.sessions, "get_environ_proxies",
                        lambda *a, **k: lookups.append(a) or real(*a, **k))
    for _ in range(3):
        session.post("http://q.example/x", data=b"{}")
    session.post("http://other.example/x", data=b"{}")
    assert len(lookups) == 2  # one per origin, not one per call
    assert all(kwargs["proxies"]["http"] == "http://proxy.example:3128" for _, kwargs in recorder.sent)
    recorder.sent[0][1]["proxies"]["http"] = "changed"  # a caller's copy, not the cached one
    session.post("http://q.example/x", data=b"{}")
    assert recorder.sent[-1][1]["proxies"]["http"] == "http://proxy.example:3128"


def test_netrc_is_read_once_and_still_applies(monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine q.example login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    session, recorder = _session_with_recorder()
    session.post("http://q.example/x", data=b"{}")
    netrc.write_text("machine q.example login other password changed\n")
    session.post("http://q.example/x", data=b"{}")
    session.post("http://nothing.example/x", data=b"{}")
    auth = [request.headers.get("Authorization") for request, _ in recorder.sent]
    assert auth[0] == auth[1] == requests.auth._basic_auth_str("user", "secret")
    assert auth[2] is None
    session.post("http://q.example/x", data=b"{}", headers={"Authorization": "Bearer t"}, auth=lambda r: r)
    assert recorder.sent[-1][0].headers["Authorization"] == "Bearer t"
