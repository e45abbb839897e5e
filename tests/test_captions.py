"""Time-stamped bilingual captions of events."""

from __future__ import annotations

import numpy as np
import pytest

from aimc.envs.captions import EVENT_CAPTIONS, caption_events, events_from_unlocked, instruction, phrasings
from aimc.envs.demonstrator import GOALS


def test_every_goal_has_several_phrasings_in_both_languages():
    for g in GOALS:
        assert len(phrasings(g, "en")) >= 3 and len(phrasings(g, "zh")) >= 3
        assert all(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in phrasings(g, "zh"))
    assert instruction("collect_wood") == "collect wood"
    with pytest.raises(KeyError):
        phrasings("fly")


def test_spans_languages_and_variety():
    events = events_from_unlocked([[], ["collect_wood"], [], ["place_table", "collect_sapling"]])
    assert events == [(2, "collect_wood"), (4, "place_table"), (4, "collect_sapling")]
    anns = caption_events(events, num_frames=100, rng=np.random.default_rng(0))
    assert len(anns) == 6
    wood = [a for a in anns if a["event"] == "collect_wood"]
    assert {a["lang"] for a in wood} == {"en", "zh"}
    assert all(a["start"] == 0 and a["end"] == 3 for a in wood)
    assert wood[0]["text"] in EVENT_CAPTIONS["collect_wood"]["en"]
    late = caption_events([(40, "eat_cow")], 100, np.random.default_rng(0), langs=("en",))
    assert late[0]["start"] == 25 and late[0]["end"] == 41
    texts = {caption_events([(20, "eat_cow")], 100, np.random.default_rng(s), langs=("en",))[0]["text"] for s in range(30)}
    assert len(texts) >= 3  # several phrasings are used
    assert caption_events([(100, "eat_cow")], 100, np.random.default_rng(0)) == []  # past the episode end
