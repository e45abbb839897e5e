"""Fine-tuning an embedder (``aimc mineclip train --init``) and the languages embedders record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aimc.checkpoints.mineclip import (
    OFFICIAL_LANGS,
    config_from_state_dict,
    guess_lang,
    language_warning,
    load_mineclip,
    read_mineclip_file,
    save_mineclip,
)
from aimc.cli import main
from aimc.data.store import EpisodeStore
from aimc.errors import ConfigError, UserError
from aimc.models.mineclip import MineCLIP, MineCLIPConfig
from aimc.models.tokenizer import ClipTokenizer
from aimc.train import mineclip as tm
from aimc.train.mineclip import ClipCaptionPairs, MineCLIPTrainConfig, build_model, contrastive_loss, resolved_lr, train_mineclip

OFFICIAL_FORMAT = Path(__file__).parent / "fixtures" / "conformance" / "mineclip" / "tiny_attn.pth"
# what an official-format file cannot say about itself: the fixture's frame size and text heads
OFFICIAL_FORMAT_MODEL = {"resolution": [32, 48], "text_heads": 2}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
CAPTIONS = {"en": {c: f"{c} screen" for c in COLOURS}, "zh": {"red": "屏幕变红", "green": "屏幕变绿", "blue": "屏幕变蓝"}}
SMALL = {"resolution": (32, 48), "base_image_resolution": 32, "vision_width": 32, "vision_layers": 1, "vision_heads": 2,
         "text_width": 32, "text_layers": 1, "text_heads": 2, "pool_heads": 1, "pool_dim_head": 16}


def colour_store(root: Path, size=(32, 48), langs=("en", "zh"), episodes: int = 2) -> Path:
    """Episodes of 16-frame coloured blocks, each captioned with its colour in ``langs``."""
    store = EpisodeStore(root)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        frames, anns = [], []
        for k, name in enumerate(rng.permutation(list(COLOURS) * 2)):
            block = np.empty((16, *size, 3), np.uint8)
            block[:] = COLOURS[name]
            block += rng.integers(0, 20, block.shape, dtype=np.uint8)
            frames.append(block)
            for lang in langs:
                anns.append({"start": 16 * k, "end": 16 * (k + 1), "text": CAPTIONS[lang][name], "lang": lang, "event": name})
        frames = np.concatenate(frames)
        store.write_episode(f"c-{e}", frames, {"action": np.zeros(len(frames), np.int64)}, {"fps": 10}, annotations=anns)
    return root


def finetune_cfg(store: Path, init: Path, **kw) -> MineCLIPTrainConfig:
    fields = dict(store=str(store), init=str(init), steps=12, batch_size=8, warmup_steps=2, jitter=0, log_every=1, device="cpu")
    if init.suffix == ".pth":
        fields["model"] = dict(OFFICIAL_FORMAT_MODEL)
    fields.update(kw)
    return MineCLIPTrainConfig(**fields)


def file_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_mineclip_file(path).state_dict


def fixed_batch_loss(model: MineCLIP, pairs: ClipCaptionPairs) -> float:
    """The contrastive loss on one fixed batch (same clips and captions for every model)."""
    clips, idx = pairs.batch(np.random.default_rng(123), 24, 0)
    tokens = ClipTokenizer().tokenize(pairs.texts)
    with torch.no_grad():
        return float(contrastive_loss(model.eval(), torch.from_numpy(clips), tokens[idx], torch.from_numpy(pairs.text_group)[idx]))


@pytest.fixture(scope="module")
def small_embedder(tmp_path_factory) -> Path:
    """An embedder written by aimc mineclip train, on English captions only."""
    root = tmp_path_factory.mktemp("small")
    colour_store(root / "store", langs=("en",))
    cfg = MineCLIPTrainConfig(store=str(root / "store"), model=dict(SMALL), embed_dim=16, steps=25, batch_size=8,
                              lr=3e-3, warmup_steps=2, jitter=0, log_every=5, device="cpu")
    return train_mineclip(cfg, root / "run", on_note=lambda _t: None)


# ------------------------------------------------------------------ starting from the file


@pytest.mark.parametrize("kind", ["official-format", "aimc"])
def test_training_starts_from_the_init_weights_exactly(kind, small_embedder, tmp_path, monkeypatch):
    init = OFFICIAL_FORMAT if kind == "official-format" else small_embedder
    colour_store(tmp_path / "store", langs=("zh",))
    before: dict[str, torch.Tensor] = {}
    real_build = tm.build_model

    def spy(cfg):
        start = real_build(cfg)
        before.update({k: v.detach().clone() for k, v in start.model.state_dict().items()})
        return start

    monkeypatch.setattr(tm, "build_model", spy)
    path = train_mineclip(finetune_cfg(tmp_path / "store", init, steps=4), tmp_path / "run", on_note=lambda _t: None)
    expected = file_tensors(init)
    assert set(expected) <= set(before)
    for k, v in expected.items():  # before the first step the model is the file, bit for bit
        assert torch.equal(before[k], v), k
    after = load_mineclip(path)
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before[k])}
    video = {id(p) for p in after.video_parameters()}
    video_keys = {k for k, v in after.state_dict(keep_vars=True).items() if id(v) in video}
    assert any(k.startswith("image_encoder.") for k in video_keys) and any(k.startswith("temporal_encoder.") for k in video_keys)
    assert changed and not changed & video_keys  # the text side learned; the video side is the file's
    assert any("text_model" in k for k in changed)
    assert after.cfg == build_model(finetune_cfg(tmp_path / "store", init)).model.cfg


def test_a_few_steps_on_new_captions_lower_the_contrastive_loss(small_embedder, tmp_path):
    colour_store(tmp_path / "store", langs=("zh",))
    pairs = ClipCaptionPairs(tmp_path / "store")
    start = fixed_batch_loss(load_mineclip(small_embedder), pairs)
    path = train_mineclip(finetune_cfg(tmp_path / "store", small_embedder, steps=15, lr=3e-3), tmp_path / "run",
                          on_note=lambda _t: None)
    end = fixed_batch_loss(load_mineclip(path), pairs)
    assert end < start - 0.3, (start, end)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["init"]["path"] == str(small_embedder.resolve()) and summary["freeze_video"] is True
    assert summary["langs"] == ["en", "zh"]


def test_full_fine_tuning_moves_the_video_side_too(small_embedder, tmp_path):
    colour_store(tmp_path / "store", langs=("en",))
    path = train_mineclip(finetune_cfg(tmp_path / "store", small_embedder, steps=3, freeze_video=False), tmp_path / "run",
                          on_note=lambda _t: None)
    before, after = load_mineclip(small_embedder), load_mineclip(path)
    assert not torch.equal(before.image_encoder.conv1.weight, after.image_encoder.conv1.weight)


# ------------------------------------------------------------------ errors


def test_wrong_init_files_are_clear_errors(tmp_path):
    colour_store(tmp_path / "store")
    from aimc.checkpoints.prior import save_prior
    from aimc.models.prior import PriorConfig, PriorCVAE

    prior_pt = save_prior(PriorCVAE(PriorConfig(input_dim=16, hidden_dim=32, latent_dim=8)), tmp_path / "prior.pt")
    prior_st = save_prior(PriorCVAE(PriorConfig(input_dim=16, hidden_dim=32, latent_dim=8)), tmp_path / "prior.safetensors")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    cases = {
        tmp_path / "missing.pth": "embedder to fine-tune .* not found",
        prior_pt: "model.",  # a prior's keys: no 'model.' prefix, not a MineCLIP attn.pth
        prior_st: "not a MineCLIP checkpoint",
        tmp_path / "notes.pth": "notes.pth",
    }
    for path, message in cases.items():
        with pytest.raises((UserError, FileNotFoundError), match=message) as info:
            build_model(finetune_cfg(tmp_path / "store", Path(path)))
        assert Path(path).name in str(info.value)


def test_frames_of_another_size_name_the_size_needed(small_embedder, tmp_path):
    colour_store(tmp_path / "store", size=(32, 32))
    with pytest.raises(UserError, match="frames are 32x32 .* takes 32x48 frames"):
        train_mineclip(finetune_cfg(tmp_path / "store", OFFICIAL_FORMAT), tmp_path / "a", on_note=lambda _t: None)
    with pytest.raises(UserError, match="takes 32x48 frames"):
        train_mineclip(finetune_cfg(tmp_path / "store", small_embedder), tmp_path / "b", on_note=lambda _t: None)


def test_settings_that_contradict_the_init_file_are_errors(small_embedder, tmp_path):
    store = colour_store(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"model.vision_width=64 \(the file has 32\)"):
        build_model(finetune_cfg(store, small_embedder, model={"vision_width": 64}))
    with pytest.raises(ConfigError, match=r"embed_dim=64 \(the file has 16\)"):
        build_model(finetune_cfg(store, small_embedder, embed_dim=64))
    with pytest.raises(ConfigError, match=r"embed_dim=64 \(the file has 32\)"):
        build_model(finetune_cfg(store, OFFICIAL_FORMAT, embed_dim=64))
    # settings that agree with the file are fine
    assert build_model(finetune_cfg(store, small_embedder, embed_dim=16, model={"vision_layers": 1})).model.cfg.embed_dim == 16
    # an official-format file does not store its frame size: without model.resolution, say what fits
    with pytest.raises(ConfigError, match=r"24 patches of 8x8 .* model.resolution"):
        build_model(finetune_cfg(store, OFFICIAL_FORMAT, model={}))
    with pytest.raises(ConfigError, match="does not fit"):
        build_model(finetune_cfg(store, OFFICIAL_FORMAT, model={"resolution": [32, 32]}))
    with pytest.raises(ConfigError, match="freeze_video"):
        MineCLIPTrainConfig(freeze_video=True)


def test_official_layout_architecture_is_read_from_the_shapes():
    with torch.device("meta"):
        official = MineCLIP(MineCLIPConfig.official())
    assert config_from_state_dict(official.state_dict(), "attn.pth") == MineCLIPConfig.official()
    fixture = json.loads((OFFICIAL_FORMAT.parent / "tiny_config.json").read_text())
    expected = MineCLIPConfig.from_original(fixture["mineclip_constructor_kwargs"], fixture["clip_config"], fixture["video_seq_len"])
    got = config_from_state_dict(file_tensors(OFFICIAL_FORMAT), "tiny", OFFICIAL_FORMAT_MODEL)
    differ = {k for k in expected.__dict__ if getattr(got, k) != getattr(expected, k)}
    assert differ <= {"base_image_resolution"}  # only the grid a new model starts from, which loading overwrites


def test_default_learning_rates():
    assert resolved_lr(MineCLIPTrainConfig(), MineCLIP(MineCLIPTrainConfig().model_config())) == 2e-3
    small = MineCLIP(MineCLIPTrainConfig().model_config())
    assert resolved_lr(MineCLIPTrainConfig(init="x.safetensors"), small) == 2e-4
    with torch.device("meta"):
        official = MineCLIP(MineCLIPConfig.official())
    assert resolved_lr(MineCLIPTrainConfig(init="attn.pth"), official) == 1e-5
    assert resolved_lr(MineCLIPTrainConfig(init="attn.pth", lr=3e-5), official) == 3e-5


# ------------------------------------------------------------------ languages


def test_training_records_the_languages_it_saw(tmp_path):
    both = colour_store(tmp_path / "both")
    base = dict(model=dict(SMALL), embed_dim=16, steps=2, batch_size=4, warmup_steps=1, jitter=0, device="cpu")
    p = train_mineclip(MineCLIPTrainConfig(store=str(both), **base), tmp_path / "r1", on_note=lambda _t: None)
    assert load_mineclip(p).langs == ("en", "zh")
    p = train_mineclip(MineCLIPTrainConfig(store=str(both), langs=["zh"], **base), tmp_path / "r2", on_note=lambda _t: None)
    assert load_mineclip(p).langs == ("zh",)


def test_fine_tuning_records_the_union_with_the_init(tmp_path):
    zh = colour_store(tmp_path / "zh", langs=("zh",))
    notes: list[str] = []
    path = train_mineclip(finetune_cfg(zh, OFFICIAL_FORMAT, steps=1), tmp_path / "run", on_note=notes.append)
    assert load_mineclip(path).langs == ("en", "zh")  # the official file knows English; the captions add Chinese
    assert any("English only" in n for n in notes) and any("add zh" in n for n in notes)
    assert read_mineclip_file(path).extra["init"]["langs"] == ["en"]


def test_official_files_are_english_only_and_aimc_files_keep_their_record(tmp_path):
    f = read_mineclip_file(OFFICIAL_FORMAT)
    assert f.langs == OFFICIAL_LANGS == ("en",) and f.langs_source == "official"
    model = load_mineclip(OFFICIAL_FORMAT, config_from_state_dict(f.state_dict, "tiny", OFFICIAL_FORMAT_MODEL))
    assert model.langs == ("en",)
    model.langs = ("en", "zh")
    for name in ("m.safetensors", "m.pth"):  # both formats keep languages and architecture
        again = load_mineclip(save_mineclip(model, tmp_path / name))
        assert again.langs == ("en", "zh") and again.cfg == model.cfg
        assert read_mineclip_file(tmp_path / name).langs_source == "recorded"
    model.langs = None  # e.g. a file written before aimc recorded languages
    assert load_mineclip(save_mineclip(model, tmp_path / "old.safetensors")).langs is None


def test_inspect_and_convert_show_the_languages(small_embedder, tmp_path, capsys):
    assert main(["mineclip", "inspect", str(OFFICIAL_FORMAT)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["languages"] == ["en"] and "English only" in info["languages_source"]
    assert main(["mineclip", "inspect", str(small_embedder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["languages"] == ["en"] and "recorded" in info["languages_source"]
    # an aimc embedder as an official-layout .pth: {"state_dict": {"model." + key: tensor}} plus aimc's record
    assert main(["mineclip", "convert", str(small_embedder), str(tmp_path / "attn_small.pth")]) == 0
    assert "languages: English (en)" in capsys.readouterr().out
    from aimc.checkpoints.safe_load import load_torch_file

    ckpt = load_torch_file(tmp_path / "attn_small.pth")
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    again = load_mineclip(tmp_path / "attn_small.pth")
    for k, v in load_mineclip(small_embedder).state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert main(["mineclip", "convert", str(small_embedder), str(small_embedder)]) == 2


def test_language_helpers():
    assert guess_lang("chop a tree") == "en" and guess_lang("砍树") == "zh" and guess_lang("挖 dirt") == "zh"
    assert language_warning(["en"], ("en",)) is None
    assert language_warning(["zh"], None) is None  # unknown languages: nothing to warn about
    warning = language_warning(["en", "zh"], ("en",))
    assert "English (en) text only" in warning and "Chinese (zh)" in warning and "--init" in warning


def test_cli_fine_tunes_from_init(small_embedder, tmp_path, capsys):
    store = colour_store(tmp_path / "store", langs=("zh",))
    rc = main(["mineclip", "train", "--init", str(small_embedder), "--store", str(store), "--out", str(tmp_path / "run"),
               "steps=2", "batch_size=4", "warmup_steps=1", "device=cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "languages: English (en) and Chinese (zh)" in out
    ran = (tmp_path / "run" / "config.yaml").read_text()
    assert "lr: 0.0002" in ran and "freeze_video: true" in ran and "embed_dim: 16" in ran  # resolved, as run
    shutil.copy(small_embedder, tmp_path / "copy.safetensors")
    rc = main(["mineclip", "train", "--init", str(tmp_path / "copy.safetensors"), "--store", str(store), "--out",
               str(tmp_path / "bad"), "model.vision_width=8"])
    assert rc == 2 and "model.vision_width=8 (the file has 32)" in capsys.readouterr().err
