"""A gunicorn worker's garbage collector is set for large short-lived requests (amq/collector.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import ROOT

SCRIPT = """
import gc, json, runpy
before = (gc.get_threshold(), gc.get_freeze_count())
hooks = runpy.run_path("gunicorn.conf.py")
hooks["post_worker_init"](None)
print(json.dumps({"before": before, "after": (gc.get_threshold(), gc.get_freeze_count())}))
"""


def test_the_worker_hook_freezes_the_loaded_app_and_spaces_out_young_collections(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}  # the cleaned test environment
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    (young, middle, old), frozen = seen["after"]
    assert seen["before"][0][0] < 50_000 and seen["before"][1] == 0  # CPython's own settings
    assert (young, middle, old) == (50_000, *seen["before"][0][1:])
    assert frozen > 10_000  # gunicorn.conf.py has imported gevent, amq.config, dotenv...
