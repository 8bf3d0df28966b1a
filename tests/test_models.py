"""Model name mapping: Claude names by family and version, overrides, default."""
import pytest

from amq.models import ModelMap, q_model_candidate


@pytest.mark.parametrize("name,expected", [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4.5"),
    ("claude-sonnet-4-5", "claude-sonnet-4.5"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4.5"),
    ("claude-opus-4-5-20251101", "claude-opus-4.5"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-sonnet-4-6", "claude-sonnet-4.6"),
    ("claude-opus-4-7", "claude-opus-4.7"),
    ("claude-3-7-sonnet-20250219", "claude-3.7-sonnet"),
    ("claude-sonnet-4.5", "claude-sonnet-4.5"),       # already a Q id
    ("claude-sonnet-4-5-20250929[1m]", "claude-sonnet-4.5"),
    ("claude-opus-5-5", "claude-sonnet-4.5"),          # Claude Code's default: unknown to Q
    ("claude-3-5-haiku-20241022", "claude-sonnet-4.5"),
    ("my-local-model", "claude-sonnet-4.5"),
    ("", "claude-sonnet-4.5"),
])
def test_resolve_by_family_and_version(name, expected):
    assert ModelMap("claude-sonnet-4.5").resolve(name) == expected


def test_default_is_configurable():
    assert ModelMap("claude-haiku-4.5").resolve("claude-opus-5-5") == "claude-haiku-4.5"


def test_overrides_win_over_the_table():
    models = ModelMap("claude-sonnet-4.5", {"claude-opus-5-5": "claude-opus-4.7",
                                            "claude-sonnet-4-5-20250929": "auto"})
    assert models.resolve("claude-opus-5-5") == "claude-opus-4.7"
    assert models.resolve("claude-sonnet-4-5-20250929") == "auto"


def test_one_million_context_variant_is_used_when_known():
    models = ModelMap("claude-sonnet-4.5", known=("claude-sonnet-4.5", "claude-sonnet-4.5-1m"))
    assert models.resolve("claude-sonnet-4-5[1m]") == "claude-sonnet-4.5-1m"


def test_candidate_of_unknown_version_keeps_the_shape():
    assert q_model_candidate("claude-opus-5-5") == "claude-opus-5.5"
    assert q_model_candidate("gpt-4") is None
