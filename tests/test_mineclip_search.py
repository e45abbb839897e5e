"""`aimc mineclip search`: ranks a store's 16-frame windows by cosine similarity to a text, keeps
hits distinct, writes a page, hits.json and an annotations.csv that `aimc prior pairs` reads."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from aimc.checkpoints.mineclip import save_mineclip
from aimc.cli import main
from aimc.data.pairs import embed_texts
from aimc.eval.search import nms_rows, search_store
from aimc.models.mineclip import MineCLIPConfig
from test_prior_pairs import D, INVALID_ROW, make_store, tiny_mineclip

QUERY = "find the red flower"
MATCH = ("e1", 40)  # (episode, row): stored embedding = the query's embedding
NEAR = ("e1", 45)  # close to the query too, but within 16 frames of MATCH
ANTI = ("e0", 50)  # minus the query's embedding: the worst window
GOAL = ("e0", 30)  # the tiny prior's mean goal for the query


@pytest.fixture(scope="module")
def model():
    return tiny_mineclip()


def tiny_prior():
    from aimc.models.prior import PriorConfig, PriorCVAE

    torch.manual_seed(5)
    return PriorCVAE(PriorConfig(input_dim=D, hidden_dim=32, latent_dim=8)).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("search")
    q = embed_texts(model, [QUERY])[0]
    with torch.no_grad():
        goal = tiny_prior()(torch.from_numpy(q[None]), deterministic=True)[0].numpy()
    rng = np.random.default_rng(1)

    def embeddings(eid: str, n: int) -> np.ndarray:
        emb = rng.normal(size=(n, D)).astype(np.float32)
        if eid == MATCH[0]:
            emb[MATCH[1]] = q
            emb[NEAR[1]] = q + 0.05 * np.linalg.norm(q) * rng.normal(size=D).astype(np.float32) / np.sqrt(D)
            emb[INVALID_ROW] = q  # marked invalid: never a hit
        if eid == ANTI[0]:
            emb[ANTI[1]] = -q
            emb[GOAL[1]] = goal
        return emb

    store = make_store(root / "store", model, embeddings=embeddings)
    return root, store, save_mineclip(model, root / "mc.safetensors")


def test_nms_keeps_the_best_and_drops_windows_closer_than_the_gap():
    rows = np.arange(100)
    scores = np.zeros(100, np.float32)
    scores[[10, 12, 65, 40, 45, 90]] = [0.9, 0.95, 0.5, 0.8, 0.85, 0.7]
    picked = rows[nms_rows(scores, rows, k=10, min_gap=16)]
    assert picked[:4].tolist() == [12, 45, 90, 65]  # 10 is within 16 of 12, 40 within 16 of 45
    assert all(abs(int(a) - int(b)) >= 16 for i, a in enumerate(picked) for b in picked[i + 1:])
    assert rows[nms_rows(scores, rows, k=2, min_gap=16)].tolist() == [12, 45]
    assert rows[nms_rows(scores, rows, k=3, min_gap=1)].tolist() == [12, 10, 45]


def test_the_matching_window_ranks_first_and_the_opposite_last(setup, model):
    _, store, _ = setup
    every = search_store(store, model, QUERY, top=1000, min_gap=1, progress=False)  # every window, ranked
    assert len(every.hits) == every.windows == (60 - 15) + (50 - 15 - 1) and every.unembedded == 1
    first, last = every.hits[0], every.hits[-1]
    assert (first.episode, first.end - 1) == MATCH and first.start == MATCH[1] - 15 and first.score == pytest.approx(1.0, abs=1e-5)
    assert (last.episode, last.end - 1) == ANTI and last.score == pytest.approx(-1.0, abs=1e-5)
    scored = {(h.episode, h.end - 1): h.score for h in every.hits}
    assert ("e1", INVALID_ROW) not in scored and ("e0", 14) not in scored  # invalid rows are no windows
    q = embed_texts(model, [QUERY])[0]
    e = np.asarray(store.open("e0").embeddings()[0][20], np.float32)
    assert scored[("e0", 20)] == pytest.approx(float(e @ q / np.linalg.norm(e) / np.linalg.norm(q)), abs=1e-5)

    res = search_store(store, model, QUERY, top=1000, progress=False)  # default gap: 16 frames
    assert (res.hits[0].episode, res.hits[0].end - 1) == MATCH
    assert [h.rank for h in res.hits] == list(range(1, len(res.hits) + 1))
    assert all(a.score >= b.score for a, b in zip(res.hits, res.hits[1:]))
    # NEAR scores almost 1 but lies within 16 frames of MATCH; the invalid row is never a window
    assert all(not (h.episode == "e1" and h.end - 1 in (NEAR[1], INVALID_ROW)) for h in res.hits)
    by_episode = {}
    for h in res.hits:
        by_episode.setdefault(h.episode, []).append(h.end)
    assert all(abs(a - b) >= 16 for ends in by_episode.values() for i, a in enumerate(ends) for b in ends[i + 1:])
    assert 0 < res.hits[0].top_percent < 5  # the best of 79 windows


def test_a_smaller_gap_lets_close_windows_through(setup, model):
    _, store, _ = setup
    res = search_store(store, model, QUERY, top=2, min_gap=4, progress=False)
    assert [(h.episode, h.end - 1) for h in res.hits] == [MATCH, NEAR]


def test_cli_page_hits_and_annotations_round_trip_into_prior_pairs(setup, model, tmp_path, capsys):
    _, store, weights = setup
    out = tmp_path / "hits"
    rc = main(["mineclip", "search", str(store.root), QUERY, "--mineclip", str(weights), "--top", "3",
               "--label", "pick the red flower", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"1. e1 frames {MATCH[1] - 15}..{MATCH[1]}  score 1.0000" in text
    hits = json.loads((out / "hits.json").read_text())
    assert hits["query"] == QUERY and hits["label"] == "pick the red flower" and len(hits["hits"]) == 3
    with open(out / "annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == ["pick the red flower"] * 3
    assert (rows[0]["episode"], int(rows[0]["start"]), int(rows[0]["end"])) == ("e1", MATCH[1] - 15, MATCH[1] + 1)
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<script" not in page and "pick the red flower" in page

    pairs = tmp_path / "p.npz"
    rc = main(["prior", "pairs", str(store.root), "--annotations", str(out / "annotations.csv"), "--no-store-annotations",
               "--mineclip", str(weights), "--out", str(pairs)])
    assert rc == 0, capsys.readouterr().err
    with np.load(pairs, allow_pickle=False) as f:
        assert f["texts"].tolist() == ["pick the red flower"] * 3
        assert f["end_frames"].tolist() == [h["end"] for h in hits["hits"]]
        emb = np.stack([np.asarray(store.open(h["episode"]).embeddings()[0][h["end"] - 1], np.float32) for h in hits["hits"]])
        np.testing.assert_array_equal(f["visual_embeddings"], emb)  # the hits' own windows
        with torch.no_grad():
            np.testing.assert_allclose(f["text_embeddings"][0], model.encode_text(["pick the red flower"])[0].numpy(), atol=1e-6)


def test_with_a_prior_the_windows_nearest_its_goal_rank_first(setup, tmp_path, capsys):
    from aimc.checkpoints.prior import save_prior
    from aimc.models.prior import PriorConfig, PriorCVAE

    _, store, weights = setup
    prior = save_prior(tiny_prior(), tmp_path / "prior.safetensors")
    assert main(["mineclip", "search", str(store.root), QUERY, "--mineclip", str(weights), "--prior", str(prior),
                 "--top", "3", "--out", str(tmp_path / "h"), "--quiet"]) == 0
    hits = json.loads((tmp_path / "h" / "hits.json").read_text())
    assert (hits["hits"][0]["episode"], hits["hits"][0]["end"] - 1) == GOAL and hits["hits"][0]["score"] == pytest.approx(1, abs=1e-5)
    assert "prior's mean goal" in hits["score"] and "prior's mean goal" in (tmp_path / "h" / "index.html").read_text()
    capsys.readouterr()
    other = save_prior(PriorCVAE(PriorConfig(input_dim=8, hidden_dim=16, latent_dim=4)), tmp_path / "p8.safetensors")
    assert main(["mineclip", "search", str(store.root), QUERY, "--mineclip", str(weights), "--prior", str(other),
                 "--out", str(tmp_path / "h2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {other}: a prior for embeddings of size 8") and "makes size 16" in err


def test_the_label_defaults_to_the_query(setup, tmp_path):
    _, store, weights = setup
    assert main(["mineclip", "search", str(store.root), QUERY, "--mineclip", str(weights), "--top", "1",
                 "--out", str(tmp_path / "h"), "--quiet"]) == 0
    assert (tmp_path / "h" / "annotations.csv").read_text().splitlines()[1].split(",")[3] == QUERY


def test_the_official_attn_pth_format_works_too(setup, model, tmp_path, monkeypatch):
    """An attn.pth (official layout) loads through the same loader; the official size is swapped
    for the tiny one here so the test stays small."""
    _, store, weights = setup
    tiny = model.cfg
    monkeypatch.setattr(MineCLIPConfig, "official", classmethod(lambda cls: tiny))
    pth = save_mineclip(model, tmp_path / "attn.pth")
    for w, out in ((pth, "a"), (weights, "b")):
        assert main(["mineclip", "search", str(store.root), QUERY, "--mineclip", str(w), "--top", "5",
                     "--out", str(tmp_path / out), "--quiet"]) == 0
    a, b = (json.loads((tmp_path / o / "hits.json").read_text())["hits"] for o in "ab")
    assert a == b
    assert main(["prior", "pairs", str(store.root), "--mineclip", str(pth), "--out", str(tmp_path / "p.npz")]) == 0


def test_another_embedder_and_an_unembedded_store_are_refused(setup, tmp_path, capsys):
    _, store, _ = setup
    other = save_mineclip(tiny_mineclip(seed=3), tmp_path / "other.safetensors")
    assert main(["mineclip", "search", str(store.root), QUERY, "--mineclip", str(other), "--out", str(tmp_path / "h")]) == 2
    assert "embedded with another MineCLIP" in capsys.readouterr().err
    from aimc.data.store import EpisodeStore, VideoSettings

    bare = EpisodeStore(tmp_path / "bare", video=VideoSettings(crf=0))
    bare.write_episode("x", np.zeros((20, 8, 8, 3), np.uint8), {"a": np.zeros(20)}, {})
    assert main(["mineclip", "search", str(bare.root), QUERY, "--mineclip", str(other), "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bare.root}: no episode has goal embeddings; embed the store first")
    assert main(["mineclip", "search", str(tmp_path / "nowhere"), QUERY, "--mineclip", str(other), "--out", str(tmp_path / "h")]) == 2
    assert "episode store not found" in capsys.readouterr().err


from test_wrong_files import KINDS, _bad  # noqa: E402


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flag", ["--mineclip", "--prior"])
def test_a_wrong_embedder_or_prior_file_is_one_clear_error(setup, tmp_path, capsys, kind, flag):
    _, store, weights = setup
    bad = _bad(tmp_path, "attn.pth" if flag == "--mineclip" else "prior.safetensors", kind)
    files = ["--mineclip", str(bad)] if flag == "--mineclip" else ["--mineclip", str(weights), "--prior", str(bad)]
    rc = main(["mineclip", "search", str(store.root), QUERY, *files, "--out", str(tmp_path / "h")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err and str(bad) in err, err
    assert len(err.strip().splitlines()) == 1


def test_the_page_renders_in_headless_chromium(setup, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it with `apt-get install -y chromium`)")
    _, store, weights = setup
    assert main(["mineclip", "search", str(store.root), QUERY, "--mineclip", str(weights), "--top", "4",
                 "--out", str(tmp_path / "h"), "--quiet"]) == 0
    page = tmp_path / "h" / "index.html"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}"]
    shot = tmp_path / "page.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1000,900", "--hide-scrollbars", page.as_uri()],
                   check=True, timeout=120, capture_output=True)
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], check=True, timeout=120, capture_output=True, text=True).stdout
    assert dom.count("<img") == 4 and "aimc mineclip search" in dom
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (900, 1000)
    # the strips are drawn: random-noise frames give many distinct colours (a blank page has a few)
    assert len(np.unique(img.reshape(-1, 3) @ np.array([65536, 256, 1]))) > 2000
