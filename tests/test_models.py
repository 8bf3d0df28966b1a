"""Model name mapping: family and version, the account's live list, overrides, default."""
import pytest

from amq.errors import UpstreamFailure
from amq.models import ModelCatalogue, QModel, claude_entry, q_model_candidate


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def live(ids, default="auto", **kwargs):
    calls = []

    def fetch():
        calls.append(1)
        return [QModel(i, 1_000_000 if i.endswith("-1m") else 200_000) for i in ids], default

    catalogue = ModelCatalogue("claude-sonnet-4.5", fetch=fetch, **kwargs)
    return catalogue, calls


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
def test_builtin_table_by_family_and_version(name, expected):
    assert ModelCatalogue("claude-sonnet-4.5").resolve(name) == expected


def test_default_is_configurable():
    assert ModelCatalogue("claude-haiku-4.5").resolve("claude-opus-5-5") == "claude-haiku-4.5"


def test_overrides_win_over_the_table():
    models = ModelCatalogue("claude-sonnet-4.5", {"claude-opus-5-5": "claude-opus-4.7",
                                                  "claude-sonnet-4-5-20250929": "auto"})
    assert models.resolve("claude-opus-5-5") == "claude-opus-4.7"
    assert models.resolve("claude-sonnet-4-5-20250929") == "auto"


def assert_asked_again_after(seconds: float, catalogue, calls, clock) -> None:
    """Two resolutions ask Q once; after `seconds` more, the next one asks again."""
    catalogue.resolve("claude-haiku-4-5")
    catalogue.resolve("claude-opus-4-5")
    assert len(calls) == 1
    clock.now += seconds + 1
    catalogue.resolve("claude-opus-4-5")
    assert len(calls) == 2


def test_live_list_is_asked_once_and_cached():
    clock = Clock()
    catalogue, calls = live(["claude-sonnet-4.5", "claude-haiku-4.5"], clock=clock)
    assert_asked_again_after(ModelCatalogue.TTL, catalogue, calls, clock)


def test_model_the_account_lacks_falls_back_to_the_best_of_its_family():
    catalogue, _ = live(["claude-opus-4.5", "claude-opus-4.6", "claude-sonnet-4.5", "claude-3.7-sonnet"])
    assert catalogue.resolve("claude-opus-4-7") == "claude-opus-4.6"
    assert catalogue.resolve("claude-opus-5-5") == "claude-opus-4.6"
    assert catalogue.resolve("claude-sonnet-4-6") == "claude-sonnet-4.5"  # 4.5 beats 3.7
    assert catalogue.resolve("claude-haiku-4-5") == "claude-sonnet-4.5"   # no haiku: the default


def test_unavailable_default_uses_the_accounts_default():
    catalogue, _ = live(["claude-opus-4.5", "auto"], default="auto")
    assert catalogue.resolve("gpt-5") == "auto"


def test_one_million_context_variant_is_used_when_offered():
    catalogue, _ = live(["claude-sonnet-4.5", "claude-sonnet-4.5-1m"])
    assert catalogue.resolve("claude-sonnet-4-5[1m]") == "claude-sonnet-4.5-1m"
    assert catalogue.context_window("claude-sonnet-4.5-1m") == 1_000_000


def test_failed_list_falls_back_to_the_table_and_retries_later():
    clock = Clock()
    calls = []

    def fetch():
        calls.append(1)
        raise UpstreamFailure("boom")

    catalogue = ModelCatalogue("claude-sonnet-4.5", fetch=fetch, clock=clock)
    assert catalogue.resolve("claude-opus-4-5") == "claude-opus-4.5"
    assert_asked_again_after(ModelCatalogue.RETRY_AFTER, catalogue, calls, clock)


def test_claude_models_lists_claude_ids_newest_first():
    catalogue, _ = live(["claude-sonnet-4.5", "claude-opus-4.7", "auto", "qwen3-coder-480b", "claude-sonnet-4.9"],
                        overrides={"my-alias": "claude-opus-4.7"})
    ids = [entry["id"] for entry in catalogue.claude_models()]
    assert ids[:2] == ["claude-opus-4-7", "my-alias"] or ids[:2] == ["my-alias", "claude-opus-4-7"]
    assert "claude-sonnet-4-5-20250929" in ids and "claude-sonnet-4-9" in ids
    assert not any("qwen" in i or i == "auto" for i in ids)
    for entry in catalogue.claude_models():
        assert set(entry) == {"type", "id", "display_name", "created_at"} and entry["type"] == "model"


def test_claude_entry_round_trips_through_the_mapping():
    for q_id in ["claude-sonnet-4.5", "claude-3.7-sonnet", "claude-opus-4.7", "claude-haiku-4.6"]:
        assert q_model_candidate(claude_entry(q_id)["id"]) == q_id


def test_candidate_of_unknown_version_keeps_the_shape():
    assert q_model_candidate("claude-opus-5-5") == "claude-opus-5.5"
    assert q_model_candidate("gpt-4") is None


def test_a_slow_refresh_does_not_hold_up_other_requests():
    import threading
    import time as real_time
    clock = Clock()
    release = threading.Event()
    calls = []

    def fetch():
        calls.append(1)
        if len(calls) > 1:
            release.wait(5)  # the hourly refresh hangs
        return [QModel("claude-sonnet-4.5"), QModel("claude-opus-4.6")], "auto"

    catalogue = ModelCatalogue("claude-sonnet-4.5", fetch=fetch, clock=clock)
    assert catalogue.resolve("claude-opus-4-6") == "claude-opus-4.6"  # the first load waits
    clock.now += ModelCatalogue.TTL + 1
    refresher = threading.Thread(target=catalogue.models)
    refresher.start()
    while len(calls) < 2:
        real_time.sleep(0.01)
    started = real_time.monotonic()
    assert catalogue.resolve("claude-opus-4-6") == "claude-opus-4.6"  # the old list, at once
    assert real_time.monotonic() - started < 0.5
    release.set()
    refresher.join()
