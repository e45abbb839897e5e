"""Which phrasings a run plays: the embedder's languages, ``aimc eval --lang``, and warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from aimc.checkpoints.mineclip import load_mineclip, save_mineclip
from aimc.cli import main
from aimc.errors import UserError
from aimc.eval.runner import plan_jobs, read_results
from aimc.eval.suite import SuiteError, choose_phrasings, load_suite, parse_suite

from test_agent import make_bundle


def langs_of(suite) -> set[str]:
    return {i.lang for t in suite.tasks for i in t.instructions}


def test_an_english_only_embedder_plays_the_english_phrasings_of_steve1_early_game():
    suite = load_suite("steve1-early-game")
    assert langs_of(suite) == {"en", "zh"}
    chosen, notes = choose_phrasings(suite, "auto", ("en",))
    assert langs_of(chosen) == {"en"} and [t.id for t in chosen.tasks] == [t.id for t in suite.tasks]
    for before, after in zip(suite.tasks, chosen.tasks):
        assert after.instructions == tuple(i for i in before.instructions if i.lang == "en") and after.instructions
        assert (after.success, after.max_steps, after.env) == (before.success, before.max_steps, before.env)
    assert all(j.lang == "en" for j in plan_jobs(chosen, episodes=3))
    assert len(notes) == 1 and notes[0].startswith("note:") and "--lang" in notes[0]


def test_asking_chinese_phrasings_of_an_english_only_embedder_warns():
    suite = load_suite("steve1-early-game")
    chosen, notes = choose_phrasings(suite, "zh", ("en",))
    assert langs_of(chosen) == {"zh"}
    assert any(n.startswith("warning:") and "English (en) text only" in n for n in notes)
    chosen, notes = choose_phrasings(suite, "all", ("en",))
    assert langs_of(chosen) == {"en", "zh"} and any(n.startswith("warning:") for n in notes)
    # a bilingual embedder: every phrasing, nothing to say
    chosen, notes = choose_phrasings(suite, "auto", ("en", "zh"))
    assert chosen == suite and notes == []
    chosen, notes = choose_phrasings(suite, "zh", ("en", "zh"))
    assert langs_of(chosen) == {"zh"} and notes == []


def test_unknown_embedder_languages_play_every_phrasing():
    suite = load_suite("crafter-core")
    assert choose_phrasings(suite, "auto", None) == (suite, [])


def test_wrong_language_choices_are_clear_errors():
    suite = parse_suite({"name": "s", "env": {"name": "crafter"}, "tasks": [
        {"id": "wood", "instructions": ["collect wood", "砍树"], "success": {"achievement": "collect_wood"}},
        {"id": "table", "instructions": ["放置工作台"], "success": {"achievement": "place_table"}},
    ]}, "s.yaml")
    with pytest.raises(SuiteError, match=r"task 'table' has no en phrasing \(it has zh\)"):
        choose_phrasings(suite, "en", ("en", "zh"))
    with pytest.raises(SuiteError, match="has no fr phrasings; its phrasings are in en, zh"):
        choose_phrasings(suite, "fr", None)
    with pytest.raises(UserError, match="not a language code"):
        choose_phrasings(suite, "english!", None)
    # auto keeps a task that has nothing in the embedder's languages, and says so
    chosen, notes = choose_phrasings(suite, "auto", ("en",))
    assert [i.text for i in chosen.task("table").instructions] == ["放置工作台"]
    assert any("table" in n for n in notes) and any(n.startswith("warning:") for n in notes)


def test_a_phrasing_without_lang_is_chinese_when_it_reads_chinese():
    suite = parse_suite({"name": "s", "env": {"name": "crafter"}, "tasks": [
        {"id": "plant", "instructions": ["place a plant", {"text": "种一棵树苗"}, {"text": "plant", "lang": "en"}],
         "success": {"achievement": "place_plant"}}]}, "s.yaml")
    assert [i.lang for i in suite.task("plant").instructions] == ["en", "zh", "en"]
    with pytest.raises(SuiteError, match="language code"):
        parse_suite({"name": "s", "env": {"name": "crafter"}, "tasks": [
            {"id": "p", "instructions": [{"text": "x", "lang": "e n"}], "success": {"achievement": "place_plant"}}]}, "s.yaml")


@pytest.fixture(scope="module")
def english_only_weights(tmp_path_factory) -> Path:
    """A tiny agent whose embedder records English only (like the official MineCLIP)."""
    weights = make_bundle(tmp_path_factory.mktemp("en_bundle"))
    path = weights.parents[1] / "mineclip.safetensors"
    model = load_mineclip(path)
    model.langs = ("en",)
    save_mineclip(model, path)
    return weights


def test_eval_plays_the_embedders_languages_and_lang_chooses(english_only_weights, tmp_path, capsys):
    common = ["--suite", "crafter-core", "--tasks", "collect_wood", "--episodes", "3", "--max-steps", "4",
              "--num-envs", "3", "--quiet", "--device", "cpu", "--weights", str(english_only_weights)]
    assert main(["eval", "--out", str(tmp_path / "auto"), *common]) == 0
    err = capsys.readouterr().err
    rows = [r for r in read_results(tmp_path / "auto" / "results.jsonl") if r["instruction"]]
    # crafter-core's collect_wood has two English phrasings and one Chinese: 3 episodes, both English ones
    assert {r["lang"] for r in rows} == {"en"} and {r["instruction"] for r in rows} == {"collect wood", "cut down a tree"}
    assert "note: playing the en phrasings" in err and "warning" not in err
    assert main(["eval", "--out", str(tmp_path / "zh"), "--lang", "zh", *common]) == 0
    err = capsys.readouterr().err
    rows = [r for r in read_results(tmp_path / "zh" / "results.jsonl") if r["instruction"]]
    assert {r["instruction"] for r in rows} == {"砍树"} and "warning: the MineCLIP embedder was trained on English" in err
    # a wrong --lang fails before anything is played
    assert main(["eval", "--out", str(tmp_path / "fr"), "--lang", "fr", *common]) == 2
    assert "no fr phrasings" in capsys.readouterr().err and not (tmp_path / "fr" / "results.jsonl").exists()


def test_baselines_have_no_embedder_and_play_every_phrasing_unless_asked(tmp_path):
    common = ["--baseline", "random", "--suite", "crafter-core", "--tasks", "collect_wood", "--episodes", "3",
              "--max-steps", "2", "--num-envs", "3", "--quiet"]
    assert main(["eval", "--out", str(tmp_path / "all"), *common]) == 0
    assert {r["lang"] for r in read_results(tmp_path / "all" / "results.jsonl") if r["instruction"]} == {"en", "zh"}
    assert main(["eval", "--out", str(tmp_path / "zh"), "--lang", "zh", *common]) == 0
    assert {r["lang"] for r in read_results(tmp_path / "zh" / "results.jsonl") if r["instruction"]} == {"zh"}


def test_run_warns_about_a_chinese_prompt_for_an_english_only_embedder(english_only_weights, tmp_path, capsys):
    args = ["run", "--weights", str(english_only_weights), "--steps", "2", "--device", "cpu", "--scale", "1"]
    assert main([*args, "--prompt", "砍树", "--video", str(tmp_path / "zh.mp4")]) == 0
    assert "warning: the MineCLIP embedder was trained on English (en) text only" in capsys.readouterr().err
    assert main([*args, "--prompt", "collect wood", "--video", str(tmp_path / "en.mp4")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["mineclip", "embed-text", "--weights", str(english_only_weights.parents[1] / "mineclip.safetensors"), "砍树"]) == 0
    assert "Chinese (zh) prompts will be poorly understood" in capsys.readouterr().err
