"""Teach an embedder a language it never saw, and measure what it learns and what it keeps.

The built-in world's captions are English and Chinese. This script copies a training and a
held-out store, adding French captions beside the English ones (same frames, spans and events),
fine-tunes an embedder on the French captions only (``aimc mineclip train --init``) once per
setting, and reports, on the held-out store, caption retrieval per language (the share of clips
whose best caption among all captions of that language names the right event; chance = 1 / events)
and how far the video embeddings moved (cosine to the init's, on the same clips).

    python scripts/mineclip_new_language.py --init runs/quickstart/mineclip/mineclip.safetensors \\
        --store runs/quickstart/store --val-store val_store --out runs/new-language \\
        --setting lr=2e-5 --setting lr=2e-4 --setting lr=2e-3 --setting lr=2e-4,freeze_video=false

Every setting also gets ``steps=40 batch_size=48 warmup_steps=5 device=cpu`` unless it says
otherwise. The table is printed as markdown and written to ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from aimc.checkpoints.mineclip import load_mineclip
from aimc.config import load_config
from aimc.data.store import EpisodeStore
from aimc.train.mineclip import ClipCaptionPairs, MineCLIPTrainConfig, text_retrieval_accuracy, train_mineclip

# Two French phrasings per Crafter event (one where a second would be forced).
FRENCH = {
    "collect_wood": ("ramasser du bois", "couper un arbre"),
    "collect_sapling": ("ramasser une pousse", "trouver une jeune pousse"),
    "place_plant": ("planter une pousse", "mettre une plante en terre"),
    "collect_drink": ("boire de l'eau", "aller boire au lac"),
    "eat_cow": ("manger une vache", "chasser une vache"),
    "place_table": ("poser un établi", "construire une table de travail"),
    "make_wood_pickaxe": ("fabriquer une pioche en bois", "faire une pioche de bois"),
    "collect_stone": ("ramasser de la pierre", "miner de la pierre"),
    "place_stone": ("poser une pierre", "construire avec de la pierre"),
    "defeat_zombie": ("vaincre un zombie", "tuer le zombie"),
    "make_wood_sword": ("fabriquer une épée en bois", "faire une épée de bois"),
    "wake_up": ("se réveiller", "se lever après le sommeil"),
    "eat_plant": ("manger une plante", "manger une plante mûre"),
    "defeat_skeleton": ("vaincre un squelette", "tuer un squelette"),
    "collect_coal": ("ramasser du charbon", "miner du charbon"),
    "place_furnace": ("poser un four", "construire un four"),
    "make_stone_pickaxe": ("fabriquer une pioche en pierre",),
    "make_stone_sword": ("fabriquer une épée en pierre",),
    "collect_iron": ("ramasser du fer", "miner du fer"),
    "make_iron_pickaxe": ("fabriquer une pioche en fer",),
    "make_iron_sword": ("fabriquer une épée en fer",),
    "collect_diamond": ("ramasser un diamant", "miner un diamant"),
}
DEFAULTS = ["steps=40", "batch_size=48", "warmup_steps=5", "device=cpu"]


def add_french(src: Path, dst: Path, seed: int = 0) -> Path:
    """A copy of store ``src`` at ``dst`` whose episodes also carry French captions (kept if there)."""
    source, target = EpisodeStore(src), EpisodeStore(dst)
    have = set(target.episode_ids()) if dst.exists() else set()
    rng = np.random.default_rng(seed)
    for eid in source.episode_ids():
        ep = source.open(eid)
        anns = ep.annotations()
        french = [{"start": a["start"], "end": a["end"], "text": str(rng.choice(FRENCH[a["event"]])), "lang": "fr",
                   "event": a["event"]} for a in anns if a.get("lang") == "en" and a.get("event") in FRENCH]
        if eid not in have:
            target.write_episode(eid, ep.frames(0, ep.num_frames), ep.actions(), {"fps": 10}, annotations=anns + french)
    return dst


@torch.no_grad()
def measure(path: Path, val: Path, video0: torch.Tensor | None, clips: torch.Tensor) -> tuple[dict, torch.Tensor]:
    model = load_mineclip(path)
    row: dict = {"model": str(path)}
    for lang in ("en", "zh", "fr"):
        pairs = ClipCaptionPairs(val, [lang])
        row[f"{lang}_retrieval"] = round(text_retrieval_accuracy(model, pairs, n=512), 3)
        row["events"] = len(set(pairs.groups))
    video = model.encode_video(clips)  # (N, D)
    if video0 is not None:
        row["video_cosine_mean"] = round(float(torch.nn.functional.cosine_similarity(video0, video, dim=1).mean()), 4)
    return row, video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", required=True, help="embedder to start from (mineclip.safetensors or attn.pth)")
    ap.add_argument("--store", required=True, help="annotated training store (built-in world)")
    ap.add_argument("--val-store", required=True, help="annotated held-out store (other world seeds)")
    ap.add_argument("--out", required=True, help="folder for the French stores, the runs and results.md")
    ap.add_argument("--setting", action="append", required=True,
                    help="comma-separated MineCLIPTrainConfig overrides for one run, e.g. lr=2e-4,freeze_video=false")
    args = ap.parse_args()
    out = Path(args.out)
    train = add_french(Path(args.store), out / "store_fr")
    val = add_french(Path(args.val_store), out / "val_fr")
    clips, _ = ClipCaptionPairs(val, ["en"]).batch(np.random.default_rng(7), 256, 0)
    clips = torch.from_numpy(clips)
    base, video0 = measure(Path(args.init), val, None, clips)
    rows = [{"setting": "init (no fine-tuning)", **base}]
    for i, setting in enumerate(args.setting):
        overrides = [*DEFAULTS, f"store={train}", f"init={args.init}", "langs=[fr]", *setting.split(",")]
        cfg = load_config(MineCLIPTrainConfig, None, overrides)
        path = train_mineclip(cfg, out / f"run{i}", on_note=lambda _t: None)
        summary = json.loads((out / f"run{i}" / "summary.json").read_text())
        row, _ = measure(path, val, video0, clips)
        rows.append({"setting": setting, **row, "steps": summary["steps"], "seconds": summary["seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| setting | en | zh | fr | video cosine to init | steps | seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['en_retrieval']:.3f} | {r['zh_retrieval']:.3f} | {r['fr_retrieval']:.3f} | "
                     f"{r.get('video_cosine_mean', 1.0):.4f} | {r.get('steps', '')} | {r.get('seconds', '')} |")
    lines.append(f"\nretrieval among the captions of one language, {rows[0]['events']} events (chance {1 / rows[0]['events']:.3f})")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
