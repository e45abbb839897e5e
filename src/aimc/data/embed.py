"""Goal embeddings for every episode of a store (``aimc data embed``).

Each frame t >= 15 gets the MineCLIP embedding of frames t-15..t (the 16-frame window ending at
t), through the fast path :func:`aimc.models.mineclip.embed_episode` (each frame's ViT runs once).
Long episodes are embedded in segments that overlap by 15 frames, so memory stays bounded and
the result is the same as one pass. Episodes that already have embeddings are skipped (resume).
Episodes whose embeddings are the goals their player acted on (``aimc online``'s labelled play,
``relabel.has_acted_goals``) are never embedded, even with ``force``: those goals are their data.

Note: the store holds the 128x128 agent frames; they are resized to MineCLIP's 160x256 here.
The original embedded the full-resolution recordings, so embeddings recomputed from a store are
close to, not identical with, STEVE-1's ``embeds_attn.pkl`` (converting those keeps them as they are).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np

from aimc.data.relabel import NONE_EMBED_OFFSET, has_acted_goals
from aimc.data.store import EpisodeStore
from aimc.errors import UserError

SEGMENT_FRAMES = 1024


def embed_frames(model, frames_rgb: np.ndarray, batch_size: int = 64, device=None, amp_dtype=None, segment: int = SEGMENT_FRAMES):
    """(N, H, W, 3) uint8 -> (emb float32 (N, D), valid bool (N,)), in overlapping segments."""
    from aimc.models.mineclip import embed_episode, preprocess_frames

    n = len(frames_rgb)
    res = tuple(model.cfg.resolution)
    emb = np.zeros((n, model.cfg.embed_dim), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    for s in range(0, n, segment):
        lo = max(0, s - NONE_EMBED_OFFSET)  # the 15 frames before s complete s's window
        e = min(n, s + segment)
        x = preprocess_frames(frames_rgb[lo:e], res)  # (m, 3, h, w)
        part, ok = embed_episode(model, x, batch_size=batch_size, device=device, amp_dtype=amp_dtype)
        emb[s:e] = part[s - lo :]
        valid[s:e] = ok[s - lo :]
    return emb, valid


def model_fingerprint(model) -> str:
    """sha256 over a model's parameters and buffers (names, shapes, dtypes, bytes): the same
    weights give the same fingerprint wherever they were loaded from."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def embed_store(
    store: EpisodeStore,
    model,
    episode_ids: Sequence[str] | None = None,
    batch_size: int = 64,
    device=None,
    amp_dtype=None,
    force: bool = False,
    info: dict | None = None,
    progress: bool = True,
) -> dict:
    """Embed every (not yet embedded) episode; returns counts {embedded, skipped, frames, seconds}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    store.require_exists()
    ids = list(store.episode_ids() if episode_ids is None else episode_ids)
    fingerprint = model_fingerprint(model)
    todo, other = [], []
    for e in ids:
        ep = store.open(e)
        if has_acted_goals(ep.meta):
            continue  # its embeddings are the goals acted on, not frame embeddings: never replaced
        if force or not ep.has_embeddings:
            todo.append(e)
        elif ep.meta["embeddings"].get("model_sha256", fingerprint) != fingerprint:
            other.append(e)
    if other:
        raise UserError(
            f"{store.root}: {len(other)} of {len(ids)} episodes (e.g. {other[0]}) already have goal embeddings made "
            "with another MineCLIP; goals from two embedders cannot be mixed. Re-embed them all with "
            "--force (aimc data embed), or pass the MineCLIP they were made with"
        )
    t0 = time.time()
    frames_done = 0
    base_info = {"model": "mineclip", "window": NONE_EMBED_OFFSET + 1, "from": "store frames",
                 "model_sha256": fingerprint, **(info or {})}
    cols = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, disable=not progress) as bar:
        task = bar.add_task("embed", total=len(todo))
        for eid in todo:
            ep = store.open(eid)
            emb, valid = embed_frames(model, ep.frames(), batch_size=batch_size, device=device, amp_dtype=amp_dtype)
            store.set_embeddings(eid, emb, valid, base_info)
            frames_done += ep.num_frames
            bar.advance(task)
    return {"embedded": len(todo), "skipped": len(ids) - len(todo), "frames": frames_done, "seconds": time.time() - t0}
