"""Defaults are written once (amq.config.DEFAULTS): gunicorn and the README follow them."""
import re

import pytest

from amq.config import DEFAULTS, ConfigError, load_server_settings, load_settings
from tests.support import ROOT

ROW = re.compile(r"^\| `([A-Z_]+)` \| ([^|]*) \|", re.MULTILINE)


def readme_settings() -> dict[str, str]:
    """name -> default cell of the README's settings table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return {name: cell.strip() for name, cell in ROW.findall(section)}


def test_readme_table_lists_every_setting_with_its_default():
    table = readme_settings()
    assert list(table) == list(DEFAULTS)
    for name, default in DEFAULTS.items():
        if default:
            assert table[name].startswith(f"`{default}`"), (name, table[name], default)
        else:  # computed or absent: said in words, never as a literal value
            assert not table[name].startswith("`"), (name, table[name])


def test_gunicorn_settings_come_from_the_same_defaults():
    server = load_server_settings({})
    assert (server.port, server.web_concurrency, server.worker_connections, server.log_level) == (
        int(DEFAULTS["PORT"]), int(DEFAULTS["WEB_CONCURRENCY"]), int(DEFAULTS["WORKER_CONNECTIONS"]),
        DEFAULTS["LOG_LEVEL"])
    assert load_server_settings({"PORT": "9000", "WEB_CONCURRENCY": "4"}).port == 9000
    conf = (ROOT / "gunicorn.conf.py").read_text()
    for name in ("PORT", "WEB_CONCURRENCY", "WORKER_CONNECTIONS", "LOG_LEVEL", "8080", "1000"):
        assert name not in conf, f"gunicorn.conf.py hard-codes {name}"


@pytest.mark.parametrize("name, value", [("WEB_CONCURRENCY", "two"), ("WORKER_CONNECTIONS", "0"),
                                         ("PORT", "-1")])
def test_malformed_server_setting_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        load_server_settings({name: value})


def test_overrides_win_over_the_environment():
    settings = load_settings({"AMAZONQ_ORIGIN": "CLI", "PING_INTERVAL": "3"}, overrides={"PING_INTERVAL": "7"})
    assert (settings.origin, settings.ping_interval) == ("CLI", 7.0)


def test_only_entry_points_load_dotenv():
    """The factory and the settings loader read the environment they are given: a developer's
    `.env` must not reach tests that build the app (wsgi.py and gunicorn.conf.py load it)."""
    loaders = {str(path.relative_to(ROOT)) for path in [ROOT / "app.py", *(ROOT / "amq").rglob("*.py")]
               if "load_dotenv" in path.read_text()}
    assert loaders == set()
    assert all("load_dotenv()" in (ROOT / name).read_text() for name in ("wsgi.py", "gunicorn.conf.py"))
