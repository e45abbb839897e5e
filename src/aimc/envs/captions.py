"""Time-stamped text captions of what happens in a Crafter episode, in English and Chinese.

The built-in world's stand-in for the text that STEVE-1 pairs with Minecraft gameplay: each
event (an achievement counter going up: wood collected, a table placed, a cow eaten, ...)
becomes an annotation over the frames that show it, phrased in one of several ways so that
the embedder and the prior learn the meaning rather than one sentence.

    events = [(12, "collect_wood"), (40, "place_table")]        # (frame index, event)
    anns = caption_events(events, num_frames=300, rng=np.random.default_rng(0))
    # [{"start": 0, "end": 13, "text": "chop a tree", "lang": "en", "event": "collect_wood"},
    #  {"start": 0, "end": 13, "text": "砍树", "lang": "zh", "event": "collect_wood"}, ...]

A caption covers the ``window`` frames that end at the event's frame (``end`` is exclusive),
the same 16-frame span that a goal embedding summarises.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

# Several phrasings per event; the first English one is the canonical instruction.
EVENT_CAPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "collect_wood": {
        "en": ("collect wood", "chop a tree", "get some wood", "cut down a tree", "gather logs"),
        "zh": ("收集木头", "砍树", "获取木材", "去砍一棵树"),
    },
    "collect_sapling": {
        "en": ("collect a sapling", "pick up a sapling", "gather a sapling from the grass", "find a sapling"),
        "zh": ("收集树苗", "捡一棵树苗", "从草地里找树苗"),
    },
    "place_plant": {
        "en": ("place a plant", "plant a sapling", "put a sapling in the ground", "grow a plant"),
        "zh": ("种下植物", "种一棵树苗", "把树苗种在草地上"),
    },
    "collect_drink": {
        "en": ("drink water", "drink from the lake", "have a drink of water", "go drink some water"),
        "zh": ("喝水", "去湖边喝水", "喝点水"),
    },
    "eat_cow": {
        "en": ("eat a cow", "hunt a cow", "kill a cow for food", "eat some beef"),
        "zh": ("吃牛", "猎杀一头牛", "杀牛吃肉"),
    },
    "place_table": {
        "en": ("place a table", "build a crafting table", "put down a workbench", "make a table"),
        "zh": ("放置工作台", "造一个工作台", "放下一张桌子"),
    },
    "make_wood_pickaxe": {
        "en": ("make a wood pickaxe", "craft a wooden pickaxe", "build a pickaxe from wood"),
        "zh": ("制作木镐", "合成一把木镐", "做一把木头镐子"),
    },
    "collect_stone": {
        "en": ("collect stone", "mine stone", "dig some stone", "get a stone block"),
        "zh": ("收集石头", "挖石头", "开采石块"),
    },
    "place_stone": {
        "en": ("place stone", "put down a stone block", "build with stone", "place a stone"),
        "zh": ("放置石头", "放下一块石头", "用石头建造"),
    },
    "defeat_zombie": {
        "en": ("defeat a zombie", "kill the zombie", "fight a zombie", "slay a zombie"),
        "zh": ("打败僵尸", "杀死僵尸", "和僵尸战斗"),
    },
    "make_wood_sword": {
        "en": ("make a wood sword", "craft a wooden sword"),
        "zh": ("制作木剑", "合成一把木剑"),
    },
    "wake_up": {
        "en": ("wake up", "wake up after sleeping"),
        "zh": ("醒来", "睡醒"),
    },
    "eat_plant": {
        "en": ("eat a plant", "eat a ripe plant"),
        "zh": ("吃植物", "吃成熟的植物"),
    },
    "defeat_skeleton": {
        "en": ("defeat a skeleton", "kill a skeleton"),
        "zh": ("打败骷髅", "杀死骷髅"),
    },
    "collect_coal": {"en": ("collect coal", "mine coal"), "zh": ("收集煤炭", "挖煤")},
    "place_furnace": {"en": ("place a furnace", "build a furnace"), "zh": ("放置熔炉", "造一个熔炉")},
    "make_stone_pickaxe": {"en": ("make a stone pickaxe",), "zh": ("制作石镐",)},
    "make_stone_sword": {"en": ("make a stone sword",), "zh": ("制作石剑",)},
    "collect_iron": {"en": ("collect iron", "mine iron"), "zh": ("收集铁矿", "挖铁")},
    "make_iron_pickaxe": {"en": ("make an iron pickaxe",), "zh": ("制作铁镐",)},
    "make_iron_sword": {"en": ("make an iron sword",), "zh": ("制作铁剑",)},
    "collect_diamond": {"en": ("collect a diamond", "mine a diamond"), "zh": ("收集钻石", "挖钻石")},
}

LANGS: tuple[str, ...] = ("en", "zh")


def instruction(event: str, lang: str = "en") -> str:
    """The canonical instruction for an event (the first phrasing), e.g. ``"collect wood"``."""
    return phrasings(event, lang)[0]


def phrasings(event: str, lang: str = "en") -> tuple[str, ...]:
    """Every phrasing of ``event`` in ``lang``."""
    if event not in EVENT_CAPTIONS:
        raise KeyError(f"no captions for event {event!r}; known events: {sorted(EVENT_CAPTIONS)}")
    if lang not in EVENT_CAPTIONS[event]:
        raise KeyError(f"no {lang!r} captions for {event!r}; languages: {list(LANGS)}")
    return EVENT_CAPTIONS[event][lang]


def caption_events(
    events: Iterable[tuple[int, str]],
    num_frames: int,
    rng: np.random.Generator,
    langs: Sequence[str] = LANGS,
    window: int = 16,
) -> list[dict]:
    """Annotations for ``(frame, event)`` pairs: one randomly phrased caption per language.

    Each annotation spans ``[max(0, frame - window + 1), frame + 1)``, clipped to the episode.
    Events without captions (none today) are skipped.
    """
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    out: list[dict] = []
    for frame, event in events:
        if event not in EVENT_CAPTIONS or not 0 <= frame < num_frames:
            continue
        start, end = max(0, int(frame) - window + 1), int(frame) + 1
        for lang in langs:
            options = phrasings(event, lang)
            text = options[int(rng.integers(0, len(options)))]
            out.append({"start": start, "end": end, "text": text, "lang": lang, "event": event})
    return out


def events_from_unlocked(unlocked_per_step: Sequence[Sequence[str]], frame_offset: int = 1) -> list[tuple[int, str]]:
    """``info["unlocked"]`` of each step -> ``(frame, event)`` pairs.

    An event caused by the action at step ``i`` is first visible in frame ``i + frame_offset``
    (frame 0 is the observation before the first action).
    """
    return [(i + frame_offset, e) for i, names in enumerate(unlocked_per_step) for e in names]
