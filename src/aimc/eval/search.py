"""Find gameplay that matches a text: ``aimc mineclip search STORE "text" --mineclip EMBEDDER``.

Every valid stored goal embedding of the store is one candidate: row t of an episode's
``embeddings.npy`` is the 16-frame window of frames t-15..t. Candidates are ranked by the cosine
similarity of that goal embedding and the text's embedding (both from the same MineCLIP, the one the
store was embedded with: checked as ``aimc prior pairs`` checks it). Non-maximum suppression makes
the hits distinct: no two hits of one episode end fewer than ``min_gap`` frames apart (default 16,
so their windows never overlap).

With a prior (``--prior``), the text's embedding is first mapped through it (z = 0, the prior's
mean goal): the hits are then the gameplay closest to the goal an agent is given for that text,
which shows whether the prior has learned a phrase.

Writes into ``out``:

* ``index.html``: each hit's 16 frames as a thumbnail strip, its episode, frames and score, and
  the share of all the store's windows that score as high ("top %");
* ``annotations.csv``: one row per hit, ``episode,start,end,text,score,rank`` with
  ``[start, end)`` = the hit's 16 frames and ``text`` = ``label`` (or the query), the file
  ``aimc prior pairs --annotations`` reads (it ignores ``score`` and ``rank``): delete the rows
  whose frames do not show the behaviour, then build pairs from the rest;
* ``hits.json``: the query, the label, the settings and the hits.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aimc.data.pairs import check_embedder, embed_texts, window_frames
from aimc.data.store import EpisodeStore
from aimc.errors import UserError
from aimc.models.mineclip import WINDOW
from aimc.utils.io import atomic_write_text

HIST_BINS = 4000  # score histogram over [-1, 1] for the percentiles shown on the page


@dataclass(frozen=True)
class Hit:
    """One window: frames ``start .. end-1`` of ``episode`` (``[start, end)``, 16 frames)."""

    rank: int
    episode: str
    start: int
    end: int
    score: float
    top_percent: float  # share of all scored windows that score as high or higher, in percent


@dataclass
class SearchResult:
    query: str
    label: str
    hits: list[Hit]
    windows: int  # windows scored
    episodes: int  # episodes searched
    unembedded: int  # episodes without goal embeddings (not searched)
    embedder_check: str
    score_quantiles: dict[str, float]  # "50", "90", "99", "99.9" -> score
    via_prior: bool = False  # ranked against the prior's goal for the text, not the text embedding


def nms_rows(scores: np.ndarray, rows: np.ndarray, k: int, min_gap: int) -> list[int]:
    """Greedy non-maximum suppression in one episode: indices into ``rows`` of at most ``k`` best
    scores whose rows are pairwise at least ``min_gap`` apart."""
    if len(rows) == 0 or k < 1:
        return []
    order = np.argsort(-scores, kind="stable")
    span = int(rows.max()) + 1
    taken = np.zeros(span + 2 * min_gap, dtype=bool)  # offset by min_gap so slices never go negative
    out: list[int] = []
    for i in order:
        r = int(rows[i]) + min_gap
        if taken[r]:
            continue
        out.append(int(i))
        if len(out) == k:
            break
        taken[r - min_gap + 1 : r + min_gap] = True
    return out


def search_store(
    store: EpisodeStore | str | Path,
    mineclip,
    query: str,
    top: int = 20,
    min_gap: int = WINDOW,
    label: str | None = None,
    embedder_name: str = "the embedder",
    progress: bool = True,
    chunk: int = 65536,
    prior=None,
    prior_name: str = "the prior",
) -> SearchResult:
    """Rank every valid 16-frame window of ``store`` by cosine similarity to ``query`` (or, with
    ``prior``, to the prior's mean goal for ``query``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not query.strip():
        raise UserError("the search text is empty")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if min_gap < 1:
        raise UserError(f"--min-gap must be at least 1 frame, got {min_gap}")
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
    store.require_exists()
    ids = store.episode_ids()
    if not ids:
        raise UserError(f"{store.root}: no episodes in this folder; is it an episode store?")
    embedded = [e for e in ids if store.open(e).has_embeddings]
    if not embedded:
        raise UserError(f"{store.root}: no episode has goal embeddings; embed the store first: "
                        f"aimc data embed {store.root} --mineclip EMBEDDER")
    check, _ = check_embedder(store, embedded, mineclip, embedder_name)

    t = embed_texts(mineclip, [query])[0]  # (D,)
    if prior is not None:
        import torch

        if int(prior.cfg.input_dim) != len(t):
            raise UserError(f"{prior_name}: a prior for embeddings of size {prior.cfg.input_dim}, but {embedder_name} "
                            f"makes size {len(t)}; pass the prior trained on this embedder's pairs")
        with torch.no_grad():
            t = prior(torch.from_numpy(t[None]), deterministic=True)[0].float().numpy()  # (D,) the mean goal
    t = t / max(float(np.linalg.norm(t)), 1e-12)
    best: list[tuple[float, str, int]] = []  # min-heap of (score, episode, row), the global top k
    hist = np.zeros(HIST_BINS, np.int64)
    windows = 0
    cols = (TextColumn("searching"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, disable=not progress or len(embedded) < 20) as bar:
        task = bar.add_task("search", total=len(embedded))
        for eid in embedded:
            emb, valid = store.open(eid).embeddings()  # type: ignore[misc]
            rows = np.flatnonzero(valid)
            scores = np.empty(len(rows), np.float32)
            for s in range(0, len(rows), chunk):  # float16 memmap -> float32 in bounded pieces
                e = np.asarray(emb[rows[s : s + chunk]], np.float32)  # (n, D)
                scores[s : s + chunk] = (e @ t) / np.maximum(np.linalg.norm(e, axis=1), 1e-12)
            windows += len(rows)
            hist += np.histogram(scores, bins=HIST_BINS, range=(-1.0, 1.0))[0]
            for i in nms_rows(scores, rows, top, min_gap):
                item = (float(scores[i]), eid, int(rows[i]))
                if len(best) < top:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
            bar.advance(task)
    cum = np.cumsum(hist)

    def top_percent(score: float) -> float:  # to the histogram's resolution, 0.0005 in score
        b = min(max(int((score + 1.0) / 2.0 * HIST_BINS), 0), HIST_BINS - 1)
        return 100.0 * float(windows - (cum[b - 1] if b else 0)) / max(windows, 1)

    def quantile(q: float) -> float:
        b = int(np.searchsorted(cum, q * windows))
        return -1.0 + 2.0 * (min(b, HIST_BINS - 1) + 0.5) / HIST_BINS

    hits = [Hit(rank=i + 1, episode=eid, start=row + 1 - WINDOW, end=row + 1, score=round(score, 6),
                top_percent=float(f"{top_percent(score):.3g}"))
            for i, (score, eid, row) in enumerate(sorted(best, key=lambda x: (-x[0], x[1], x[2])))]
    return SearchResult(query=query, label=label if label else query, hits=hits, windows=windows,
                        episodes=len(embedded), unembedded=len(ids) - len(embedded), embedder_check=check,
                        score_quantiles={k: round(quantile(float(k) / 100), 4) for k in ("50", "90", "99", "99.9")},
                        via_prior=prior is not None)


# --------------------------------------------------------------------------- outputs


def annotations_csv(result: SearchResult) -> str:
    """The hits as rows ``aimc prior pairs --annotations`` reads."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["episode", "start", "end", "text", "score", "rank"])
    for h in result.hits:
        w.writerow([h.episode, h.start, h.end, result.label, f"{h.score:.4f}", h.rank])
    return buf.getvalue()


def window_strip(frames: np.ndarray, height: int = 96, per_row: int = 8) -> bytes:
    """(16, H, W, 3) uint8 -> PNG bytes: the frames in rows of ``per_row``, each ``height`` px high."""
    from PIL import Image

    n, H, W, _ = frames.shape
    w = max(1, round(W * height / H))
    rows = (n + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * w + (per_row - 1) * 2, rows * height + (rows - 1) * 2), (255, 255, 255))
    for i, f in enumerate(frames):
        img = Image.fromarray(f).resize((w, height), Image.NEAREST)
        sheet.paste(img, ((i % per_row) * (w + 2), (i // per_row) * (height + 2)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def search_page(result: SearchResult, store: EpisodeStore, store_name: str, embedder_name: str, min_gap: int) -> str:
    from html import escape

    from aimc.eval.report import html_page, png_data_uri

    q = result.score_quantiles
    parts = [
        f"<h1>aimc mineclip search: {escape(result.query)}</h1>",
        f"<p>Store <code>{escape(store_name)}</code> ({result.episodes:,} embedded episodes, {result.windows:,} windows"
        + (f"; {result.unembedded:,} episodes without goal embeddings not searched" if result.unembedded else "")
        + f"), embedder <code>{escape(embedder_name)}</code>. Score: cosine similarity of a window's goal embedding "
        f"(frames t-15..t) and {_target(result)}; hits of one episode are at least {min_gap} frames apart. "
        f"Scores over all windows: median {q['50']:.3f}, 90th percentile {q['90']:.3f}, 99th {q['99']:.3f}, "
        f"99.9th {q['99.9']:.3f}; \"top %\" is the share of all windows that score as high as a hit.</p>",
        f"<p>Label in <code>annotations.csv</code>: <b>{escape(result.label)}</b>. Look at each hit; delete the rows "
        "of hits that do not show it, then run <code>aimc prior pairs STORE --annotations annotations.csv "
        "--mineclip EMBEDDER --out new_pairs.npz</code>.</p>",
        "<table><tr><th>rank</th><th>episode</th><th>frames</th><th>score</th><th>top %</th><th>the 16 frames</th></tr>",
    ]
    for h in result.hits:
        frames = store.open(h.episode).frames(h.start, h.end)  # (16, H, W, 3)
        first, last = window_frames(h.end)
        parts.append(f"<tr><td>{h.rank}</td><td>{escape(h.episode)}</td><td>{first}..{last}</td>"
                     f"<td>{h.score:.4f}</td><td>{h.top_percent:.3g}</td>"
                     f"<td><img alt=\"frames {first}..{last} of {escape(h.episode)}\" src=\"{png_data_uri(window_strip(frames))}\"></td></tr>")
    parts.append("</table>")
    if not result.hits:
        parts.append("<p class=\"muted\">No hits.</p>")
    return html_page(f"aimc mineclip search: {result.query}", parts)


def _target(result: SearchResult) -> str:
    return "the prior's mean goal for the text (z = 0)" if result.via_prior else "the text's embedding"


def write_search(result: SearchResult, store: EpisodeStore | str | Path, out: str | Path, embedder_name: str,
                 min_gap: int) -> dict[str, Path]:
    """Write index.html, annotations.csv and hits.json into ``out`` (each atomically)."""
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "index.html", "csv": out / "annotations.csv", "json": out / "hits.json"}
    info = {"query": result.query, "label": result.label, "store": str(store.root), "embedder": embedder_name,
            "embedder_check": result.embedder_check,
            "score": f"cosine(goal embedding of frames end-16..end-1, {_target(result)})",
            "min_gap": min_gap, "windows": result.windows, "episodes": result.episodes,
            "score_quantiles": result.score_quantiles, "hits": [asdict(h) for h in result.hits]}
    atomic_write_text(paths["json"], json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(paths["csv"], annotations_csv(result))
    atomic_write_text(paths["html"], search_page(result, store, str(store.root), embedder_name, min_gap))
    return paths


__all__ = ["Hit", "SearchResult", "annotations_csv", "nms_rows", "search_store", "search_page", "window_strip", "write_search"]
