"""`aimc prior pairs` and `aimc prior train --data A B`: one pair per annotation, from exactly the
16-frame window that ends at the annotation's last frame; bad rows and wrong files are clear errors.

The store used here records, in its goal embedding of frame t, the number t (component 0), so a
test reads off which window a pair took.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aimc.checkpoints.mineclip import save_mineclip
from aimc.cli import main
from aimc.data.embed import model_fingerprint
from aimc.data.pairs import build_pairs, read_annotations, save_pairs, window_frames, window_row
from aimc.data.store import EpisodeStore, VideoSettings
from aimc.errors import UserError
from aimc.models.mineclip import MineCLIP, MineCLIPConfig

D = 16
LENGTHS = {"e0": 60, "e1": 50, "e2": 40}  # e2 is not embedded
INVALID_ROW = 30  # e1's row 30 is marked invalid


def tiny_mineclip(seed: int = 0, embed_dim: int = D) -> MineCLIP:
    cfg = MineCLIPConfig(resolution=(32, 48), patch_size=16, vision_width=32, vision_layers=1, vision_heads=2,
                         base_image_resolution=32, embed_dim=embed_dim, text_width=16, text_layers=1, text_heads=2,
                         vocab_size=49408, pool_depth=1, pool_heads=2, pool_dim_head=8, video_adapter_layers=1)
    torch.manual_seed(seed)
    return MineCLIP(cfg).eval()


def frame_coded_embeddings(n: int) -> np.ndarray:
    """(n, D): row t holds t in component 0 and 1 in component 1, so rows differ and are non-zero."""
    emb = np.zeros((n, D), np.float32)
    emb[:, 0] = np.arange(n)
    emb[:, 1] = 1.0
    return emb


def make_store(root: Path, model: MineCLIP | None, fingerprint: bool = True, embeddings=None) -> EpisodeStore:
    """Three episodes; e0 and e1 embedded with frame-coded embeddings (valid from row 15, e1's row
    30 invalid); e0 has two store annotations, one ending before frame 16."""
    store = EpisodeStore(root, video=VideoSettings(crf=0), embed_dtype="float32")
    rng = np.random.default_rng(0)
    info = {"model": "mineclip", "window": 16}
    if fingerprint and model is not None:
        info["model_sha256"] = model_fingerprint(model)
    for eid, n in LENGTHS.items():
        frames = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        anns = [{"start": 20, "end": 45, "text": "chop a tree"}, {"start": 0, "end": 10, "text": "early event"}] if eid == "e0" else None
        meta = {"embeddings_info": info}
        emb = valid = None
        if eid != "e2":
            emb = frame_coded_embeddings(n) if embeddings is None else embeddings(eid, n)
            valid = np.arange(n) >= 15
            if eid == "e1":
                valid[INVALID_ROW] = False
        store.write_episode(eid, frames, {"action": np.zeros(n, np.int64)}, meta, annotations=anns,
                            embeddings=emb, embed_valid=valid)
    return store


@pytest.fixture(scope="module")
def model() -> MineCLIP:
    return tiny_mineclip()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("pairs")
    store = make_store(root / "store", model)
    weights = save_mineclip(model, root / "mc.safetensors")
    return root, store, weights


ROWS = [("e0", 20, 40, "build a workbench"), ("e1", 0, 16, "build a workbench"), ("e0", 50, 60, "dig for gold")]


def write_csv(path: Path, rows=ROWS, header: str = "episode,start,end,text") -> Path:
    lines = [header] + [f"{e},{s},{t},{x}" for e, s, t, x in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps({"episode": e, "start": s, "end": t, "text": x}) + "\n" for e, s, t, x in rows),
                    encoding="utf-8")
    return path


def test_the_window_is_frames_end_minus_16_to_end_minus_1():
    assert window_row(52) == 51 and window_frames(52) == (36, 51)
    assert window_frames(16) == (0, 15)


def test_each_row_gives_one_pair_from_the_window_ending_at_its_last_frame(setup, model, tmp_path):
    root, store, _ = setup
    pairs = build_pairs(store, model, read_annotations(write_csv(tmp_path / "a.csv")), use_store_annotations=False)
    assert len(pairs) == 3 and pairs.sources == ["file"] * 3
    # the stored embedding of row t encodes t: each pair took row end-1
    np.testing.assert_array_equal(pairs.visual_embeddings[:, 0], [39, 15, 59])
    assert pairs.episodes == ["e0", "e1", "e0"] and pairs.end_frames.tolist() == [40, 16, 60]
    with torch.no_grad():
        want = model.encode_text(["build a workbench", "build a workbench", "dig for gold"]).numpy()
    np.testing.assert_allclose(pairs.text_embeddings, want, atol=1e-6)
    assert pairs.text_embeddings.dtype == np.float32 and pairs.visual_embeddings.shape == (3, D)


def test_csv_and_jsonl_give_the_same_pairs(setup, model, tmp_path):
    _, store, _ = setup
    a = build_pairs(store, model, read_annotations(write_csv(tmp_path / "a.csv")), use_store_annotations=False)
    b = build_pairs(store, model, read_annotations(write_jsonl(tmp_path / "a.jsonl")), use_store_annotations=False)
    for name in ("text_embeddings", "visual_embeddings", "end_frames"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.texts == b.texts and a.episodes == b.episodes


def test_csv_with_quotes_lang_bom_and_extra_columns(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('\ufeffepisode,start,end,text,lang,score\ne0,20,40,"chop, then carry",en,0.5\n\ne1,0,16,砍树,zh,0.4\n',
                 encoding="utf-8")
    rows = read_annotations(p)
    assert [(r.episode, r.start, r.end, r.text, r.lang) for r in rows] == [
        ("e0", 20, 40, "chop, then carry", "en"), ("e1", 0, 16, "砍树", "zh")]
    assert rows[1].where == f"{p}:4"  # the blank line counts


def test_store_annotations_are_included_or_left_out(setup, model, tmp_path):
    _, store, _ = setup
    rows = read_annotations(write_csv(tmp_path / "a.csv"))
    both = build_pairs(store, model, rows)
    # e0's store annotation [20, 45) gives row 44; the one ending at 10 has no window and is counted
    assert len(both) == 4 and both.sources.count("store") == 1
    assert both.visual_embeddings[both.sources.index("store"), 0] == 44
    assert both.skipped == {"window before frame 0 (event before frame 15)": 1}
    assert dict((t, (f, s)) for t, f, s in both.counts()) == {
        "build a workbench": (2, 0), "dig for gold": (1, 0), "chop a tree": (0, 1)}
    only_file = build_pairs(store, model, rows, use_store_annotations=False)
    assert len(only_file) == 3 and "chop a tree" not in only_file.texts
    only_store = build_pairs(store, model)
    assert only_store.texts == ["chop a tree"]


def test_cli_writes_an_npz_loadable_without_pickle(setup, tmp_path, capsys):
    root, store, weights = setup
    out = tmp_path / "p.npz"
    rc = main(["prior", "pairs", str(store.root), "--annotations", str(write_csv(tmp_path / "a.csv")),
               "--mineclip", str(weights), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "4 pairs (3 from the annotation file, 1 from the store)" in text
    assert "      2      2      0  build a workbench" in text  # the per-text summary
    assert "skipped 1 store annotation(s)" in text and "recorded in the store's metadata" in text
    with np.load(out, allow_pickle=False) as f:
        assert set(f.files) == {"text_embeddings", "visual_embeddings", "texts", "episodes", "end_frames", "embedder_sha256"}
        assert f["text_embeddings"].dtype == np.float32 and f["visual_embeddings"].shape == (4, D)
        assert f["texts"].dtype.kind == "U" and f["episodes"].dtype.kind == "U" and f["end_frames"].dtype == np.int64
        assert f["texts"].tolist()[:3] == ["build a workbench", "build a workbench", "dig for gold"]
        assert str(f["embedder_sha256"]) == model_fingerprint(tiny_mineclip())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


BAD_ROWS = {
    "unknown episode": ("e9,0,20,x", "no episode 'e9'"),
    "end beyond the episode": ("e1,0,51,x", "beyond episode e1, which has 50 frames"),
    "window before frame 0": ("e0,0,15,x", "would start at frame -1"),
    "invalid window": (f"e1,0,{INVALID_ROW + 1},x", "no valid goal embedding"),
    "episode not embedded": ("e2,0,20,x", "episode e2 has no goal embeddings; embed the store first"),
    "empty span": ("e0,20,20,x", "span [start=20, end=20) is empty"),
    "not a number": ("e0,a,20,x", "start must be a whole frame number"),
    "empty text": ("e0,0,20,", "empty text"),
    "missing field": ("e0,0,20", "3 field(s) where the header has 4"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_row_without_a_pair_is_an_error_naming_file_and_line(setup, tmp_path, capsys, case):
    root, store, weights = setup
    row, message = BAD_ROWS[case]
    p = tmp_path / "a.csv"
    p.write_text(f"episode,start,end,text\ne0,20,40,fine\n{row}\n", encoding="utf-8")
    rc = main(["prior", "pairs", str(store.root), "--annotations", str(p), "--mineclip", str(weights), "--out", str(tmp_path / "p.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {p}:3: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "p.npz").exists()


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"episode": "e0", "start": 0, "end": 20, "text": "x"}\n["e0", 0, 20]\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"{p}:2: a JSON list"):
        read_annotations(p)
    p.write_text('{"episode": "e0", "start": 0, "end": 20, "text": "x"}\n{"episode": "e0", "start": 0}\n')
    with pytest.raises(UserError, match=rf"{p}:2: missing key\(s\) end, text"):
        read_annotations(p)
    p.write_text('{"episode": "e0", "start": 0, "end": 20.5, "text": "x"}\n')
    with pytest.raises(UserError, match=rf"{p}:1: end must be a whole frame number"):
        read_annotations(p)


def test_an_embedder_that_did_not_embed_the_store_is_refused(setup, tmp_path, capsys):
    root, store, _ = setup
    rows = read_annotations(write_csv(tmp_path / "a.csv"))
    with pytest.raises(UserError, match="embedded with another MineCLIP"):
        build_pairs(store, tiny_mineclip(seed=1), rows)
    other_size = save_mineclip(tiny_mineclip(embed_dim=8), tmp_path / "small.safetensors")
    rc = main(["prior", "pairs", str(store.root), "--mineclip", str(other_size), "--out", str(tmp_path / "p.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and "goal embeddings have size 16" in err and "makes size 8" in err and str(other_size) in err


def test_a_store_without_a_recorded_embedder_checks_the_size_only(tmp_path, model):
    store = make_store(tmp_path / "store", model, fingerprint=False)
    pairs = build_pairs(store, tiny_mineclip(seed=1))  # another embedder of the same size: cannot be told apart
    assert "only the size D=16 was checked" in pairs.embedder_check


def test_no_pairs_at_all_is_an_error(tmp_path, model, capsys):
    store = EpisodeStore(tmp_path / "store", video=VideoSettings(crf=0))
    store.write_episode("x", np.zeros((20, 8, 8, 3), np.uint8), {"a": np.zeros(20)}, {},
                        annotations=[{"start": 0, "end": 18, "text": "t"}])
    with pytest.raises(UserError, match="none of the 1 annotations gives a pair .*1 episode not embedded"):
        build_pairs(store, model)
    weights = save_mineclip(model, tmp_path / "mc.safetensors")
    rc = main(["prior", "pairs", str(store.root), "--no-store-annotations", "--mineclip", str(weights), "--out", str(tmp_path / "p.npz")])
    assert rc == 2 and "--no-store-annotations leaves out" in capsys.readouterr().err


# --------------------------------------------------------------------------- prior train --data A B


def _pairs_file(path: Path, n: int, d: int = D, seed: int = 0) -> Path:
    r = np.random.default_rng(seed)
    t = r.normal(size=(n, d)).astype(np.float32)
    np.savez(path, text_embeddings=t, visual_embeddings=np.tanh(t))
    return path


def test_prior_train_concatenates_several_pair_files(setup, tmp_path, capsys):
    root, store, weights = setup
    new = tmp_path / "new.npz"
    assert main(["prior", "pairs", str(store.root), "--annotations", str(write_csv(tmp_path / "a.csv")),
                 "--no-store-annotations", "--mineclip", str(weights), "--out", str(new)]) == 0
    old = _pairs_file(tmp_path / "old.npz", 40)
    # an override right after the files goes to the config, not to --data
    rc = main(["prior", "train", "--data", str(old), str(new), "epochs=1", "--out", str(tmp_path / "run"), "--fast"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "43 pairs from 2 files" in out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["n_pairs"] == 43
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # epochs=1 applied
    assert (tmp_path / "run" / "prior.safetensors").is_file()


def test_prior_train_refuses_files_of_different_sizes_or_embedders(setup, model, tmp_path, capsys):
    a, b = _pairs_file(tmp_path / "a.npz", 10), _pairs_file(tmp_path / "b.npz", 10, d=8)
    rc = main(["prior", "train", "--data", str(a), str(b), "--out", str(tmp_path / "run"), "--fast"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {b}: embeddings of size D=8, but {a} has D=16"), err
    _, store, _ = setup
    p1 = save_pairs(build_pairs(store, model), tmp_path / "p1.npz")
    p2 = build_pairs(store, model)
    p2.embedder_sha256 = "f" * 64  # as if made with another embedder of the same size
    p2 = save_pairs(p2, tmp_path / "p2.npz")
    rc = main(["prior", "train", "--data", str(p1), str(a), str(p2), "--out", str(tmp_path / "run"), "--fast"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {p2}: made with another embedder") and str(p1) in err, err


# --------------------------------------------------------------------------- wrong files

from test_wrong_files import KINDS, _bad  # noqa: E402


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", ["annotations.csv", "annotations.jsonl", "pairs (second file)", "embedder"])
def test_wrong_file_is_one_clear_error(setup, tmp_path, capsys, what, kind):
    root, store, weights = setup
    good_csv = write_csv(tmp_path / "good.csv")
    if what.startswith("annotations"):
        bad = _bad(tmp_path, what, kind)
        if kind == "truncated":  # the first part of a real annotation file: the last row is cut
            good = write_csv(tmp_path / "g.csv") if what.endswith("csv") else write_jsonl(tmp_path / "g.jsonl")
            bad.write_bytes(good.read_bytes()[: good.stat().st_size - 17])
        argv = ["prior", "pairs", str(store.root), "--annotations", str(bad), "--mineclip", str(weights), "--out", str(tmp_path / "p.npz")]
    elif what == "embedder":
        bad = _bad(tmp_path, "mineclip.safetensors", kind)
        argv = ["prior", "pairs", str(store.root), "--annotations", str(good_csv), "--mineclip", str(bad), "--out", str(tmp_path / "p.npz")]
    else:
        bad = _bad(tmp_path, "pairs.npz", kind)
        argv = ["prior", "train", "--data", str(_pairs_file(tmp_path / "ok.npz", 8)), str(bad), "--out", str(tmp_path / "run")]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(bad) in err, err


def test_jsonl_text_may_hold_a_line_separator(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"episode": "e0", "start": 0, "end": 20, "text": "a\u2028b"}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    assert [r.text for r in read_annotations(p)] == ["a\u2028b"]


def test_out_must_be_an_npz_file_name(setup, tmp_path, capsys):
    _, store, weights = setup
    (tmp_path / "d.npz").mkdir()
    for out, message in ((tmp_path / "p.txt", "must end in .npz"), (tmp_path / "d.npz", "is a folder")):
        assert main(["prior", "pairs", str(store.root), "--mineclip", str(weights), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err


def test_gbk_files_and_other_suffixes_are_refused_with_the_fix(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes("episode,start,end,text\ne0,0,20,砍树\n".encode("gbk"))
    with pytest.raises(UserError, match=rf"{p}: not UTF-8 text .*CSV UTF-8"):
        read_annotations(p)
    q = tmp_path / "a.txt"
    q.write_text("episode,start,end,text\ne0,0,20,x\n")
    with pytest.raises(UserError, match=rf"{q}: annotation files are .csv .* or .jsonl"):
        read_annotations(q)
