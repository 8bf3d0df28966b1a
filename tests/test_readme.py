"""The README's module table names every module there is, and only those."""
import re

from tests.support import ROOT


def test_module_table_matches_the_files():
    text = (ROOT / "README.md").read_text()
    table = text.split("| module | job |", 1)[1].split("\n\n", 1)[0]
    listed = {path for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE)
              for path in re.findall(r"`([^`]+\.py)`", cell)}
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "amq").rglob("*.py")
               if path.name != "__init__.py"}
    assert modules - listed == set(), "modules the README's table does not list"
    assert {path for path in listed if not (ROOT / path).is_file()} == set(), "listed but missing"
