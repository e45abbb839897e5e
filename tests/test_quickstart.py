"""``aimc quickstart --fast``: every stage of the recipe runs and leaves its artifacts."""

from __future__ import annotations

import json

from aimc.cli import main
from aimc.data.store import EpisodeStore


def test_fast_quickstart_end_to_end(tmp_path, capsys):
    run = tmp_path / "qs"
    assert main(["quickstart", "--fast", "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| instruction | when instructed | unconditioned | lift |" in out
    state = json.loads((run / "quickstart.json").read_text())
    assert list(state["results"]) == ["generate", "embedder", "embed", "policy", "prior", "eval"]

    # 1. demonstrations with captions
    store = EpisodeStore(run / "store")
    ids = store.episode_ids()
    assert len(ids) == 4
    ep = store.open(ids[0])
    assert ep.frames(0, 2).shape == (2, 64, 64, 3)
    assert any(a["lang"] == "zh" for e in ids for a in store.open(e).annotations())
    # 2. embedder, 3. embeddings of every frame + split
    assert (run / "mineclip" / "mineclip.safetensors").is_file()
    emb, valid = ep.embeddings()
    assert emb.shape == (ep.num_frames, 64) and valid[15:].all() and not valid[:15].any()
    assert (run / "store" / "splits.yaml").is_file()
    # 4. policy, 5. prior
    assert (run / "policy" / "final.safetensors").is_file()
    assert (run / "policy" / "metrics.jsonl").read_text().strip()
    assert state["results"]["prior"]["pairs"] > 0
    assert (run / "prior" / "checkpoints").is_dir()
    # 6. evaluation ran: every planned episode has a result line, a summary and a video
    results = [json.loads(x) for x in (run / "eval" / "results.jsonl").read_text().splitlines() if x.strip()]
    assert len(results) == state["results"]["eval"]["episodes"] > 0
    assert (run / "eval" / "summary.md").is_file()
    assert list((run / "eval").glob("videos/*.mp4"))
    assert "collect_wood" in (run / "summary.md").read_text()

    # a second call finds every stage done; --finetune then records the weakest skill,
    # fine-tunes from the quickstart's policy and compares before/after
    assert main(["quickstart", "--fast", "--finetune", "--out", str(run), "--quiet"]) == 0
    state2 = json.loads((run / "quickstart.json").read_text())
    assert state2["results"]["generate"] == state["results"]["generate"]
    ft = state2["finetune"]
    assert ft["skill"] in ("make_wood_pickaxe", "place_table", "collect_stone", "place_plant", "eat_cow", "collect_drink")
    assert EpisodeStore(run / "finetune" / "store").episode_ids()
    assert (run / "finetune" / "policy" / "final.safetensors").is_file()
    assert (run / "finetune" / "compare" / "report.html").is_file()
    assert (run / "finetune" / "eval_before" / "results.jsonl").is_file()
    assert (run / "finetune" / "eval_after" / "results.jsonl").is_file()
    assert "fine-tuned on" in capsys.readouterr().out
