"""gunicorn.conf.py's worker hooks."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import ROOT, clean_environ

SCRIPT = textwrap.dedent("""
    import gc, runpy
    hooks = runpy.run_path("gunicorn.conf.py")
    before = gc.get_freeze_count()
    hooks["post_worker_init"](None)
    print(before, gc.get_freeze_count())
""")


def test_a_worker_freezes_what_it_loaded_out_of_the_collector(tmp_path):
    """A full collection would walk the loaded app (tens of ms, a stall for every stream)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=clean_environ({"PATH": ""}, tmp_path),
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    before, after = map(int, out)
    assert before == 0 and after > 10_000  # the app, Flask, gevent...: all frozen at once
