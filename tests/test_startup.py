"""Start-up: a missing setting is one clear line, never a traceback; the factory serves."""
import os
import subprocess
import sys

import pytest

from app import create_app
from tests.support import ROOT


def run_without(setting, command, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMAZONQ_")}
    env.update({"HOME": str(tmp_path), "AMAZONQ_REFRESH_TOKEN": "r", "AMAZONQ_CLIENT_ID": "c",
                "AMAZONQ_CLIENT_SECRET": "s", "AMAZONQ_TOKEN_CACHE": str(tmp_path / "t.json")})
    del env[setting]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("setting", ["AMAZONQ_REFRESH_TOKEN", "AMAZONQ_CLIENT_ID", "AMAZONQ_CLIENT_SECRET"])
def test_gunicorn_refuses_to_start_naming_the_missing_setting(setting, tmp_path):
    result = run_without(setting, [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "wsgi:app"],
                         tmp_path)
    assert result.returncode != 0
    assert f"amq: configuration error: {setting} is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_flask_run_refuses_to_start_naming_the_missing_setting(tmp_path):
    result = run_without("AMAZONQ_CLIENT_SECRET",
                         [sys.executable, "-m", "flask", "--app", "app", "run", "--port", "0"], tmp_path)
    assert result.returncode != 0
    assert "AMAZONQ_CLIENT_SECRET is not set" in result.stderr and "Traceback" not in result.stderr


def test_malformed_setting_is_named(tmp_path):
    with pytest.raises(SystemExit) as info:
        create_app({"AMAZONQ_REFRESH_TOKEN": "r", "AMAZONQ_CLIENT_ID": "c", "AMAZONQ_CLIENT_SECRET": "s",
                    "AMAZONQ_TOKEN_CACHE": str(tmp_path / "t.json"), "UPSTREAM_READ_TIMEOUT": "soon"})
    assert "UPSTREAM_READ_TIMEOUT" in str(info.value)


def test_factory_builds_an_app_that_answers_health(tmp_path):
    app = create_app({"AMAZONQ_REFRESH_TOKEN": "r", "AMAZONQ_CLIENT_ID": "c", "AMAZONQ_CLIENT_SECRET": "s",
                      "AMAZONQ_TOKEN_CACHE": str(tmp_path / "t.json")})
    response = app.test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "has_token": False, "token_expired": False}
    assert response.headers["request-id"].startswith("req_")


def test_gunicorn_names_a_metrics_directory_it_cannot_create(tmp_path):
    (tmp_path / "a-file").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMAZONQ_")}
    env.update({"HOME": str(tmp_path), "AMAZONQ_REFRESH_TOKEN": "r", "AMAZONQ_CLIENT_ID": "c",
                "AMAZONQ_CLIENT_SECRET": "s", "AMAZONQ_TOKEN_CACHE": str(tmp_path / "t.json"),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "a-file" / "metrics")})
    result = subprocess.run([sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "wsgi:app"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        "amq: configuration error: PROMETHEUS_MULTIPROC_DIR cannot be created")
    assert "Traceback" not in result.stderr
