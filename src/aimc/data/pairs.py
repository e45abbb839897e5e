"""Training pairs for the prior: (text embedding, visual goal embedding), one per annotation.

**The window.** An annotation spans frames ``[start, end)`` (``end`` exclusive). Its pair's visual
side is the goal embedding of the 16-frame window that *ends at the annotation's last frame*:
frames ``end-16 .. end-1``, which the store keeps at row ``end-1`` of ``embeddings.npy`` (row t
embeds frames t-15..t, see :mod:`aimc.data.embed`). Example: ``start=40, end=52`` -> row 51 ->
frames 36..51. So ``end`` must be at least 16 (the window would start before frame 0) and at most
the episode's length. ``start`` only has to satisfy ``0 <= start < end``; it does not move the
window. The text side is the embedder's text embedding of the annotation's ``text``. Every row
gives exactly one pair (:func:`window_row` is the single definition, used by ``aimc prior pairs``,
the quickstart and ``aimc mineclip search``, whose hits are written as such rows).

**Where rows come from.** An annotation file (CSV with the header ``episode,start,end,text`` and an
optional ``lang`` column, or JSONL with the same keys; other columns are ignored) and the store's
own ``annotations.json`` of every episode. A row of the file that cannot give a pair (unknown
episode, ``end`` beyond the episode, a window starting before frame 0 or marked invalid, an
episode without goal embeddings) is an error naming ``FILE:LINE``. A store annotation that cannot
(its event came before frame 15, or its episode is not embedded) is skipped and counted: stores
record events from the first frame on, and those early captions have no window.

**The embedder** must be the one the store was embedded with. ``aimc data embed`` records a sha256
of the weights (``model_sha256`` in each episode's ``meta.json``); when it is there it must equal
the fingerprint of the given embedder. Stores converted from STEVE-1's ``embeds_attn.pkl`` or
embedded while converting contractor recordings record no fingerprint; for them only the
embedding size is checked.

**The file** (``save_pairs``): an ``.npz`` with ``text_embeddings`` and ``visual_embeddings``
(float32 (N, D)), ``texts`` and ``episodes`` (unicode (N,)), ``end_frames`` (int64 (N,), the
annotation's exclusive end; the window is frames end-16..end-1) and ``embedder_sha256`` (a
unicode scalar, the embedder's fingerprint), all loadable with ``allow_pickle=False``.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aimc.checkpoints.safe_load import check_readable_file
from aimc.data.store import EpisodeStore
from aimc.errors import UserError
from aimc.models.mineclip import WINDOW

REQUIRED_COLUMNS = ("episode", "start", "end", "text")
OPTIONAL_COLUMNS = ("lang",)
ANNOTATION_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def window_row(end: int) -> int:
    """The embeddings.npy row of the annotation ending (exclusively) at ``end``: ``end - 1``,
    the window of frames ``end-16 .. end-1``."""
    return int(end) - 1


def window_frames(end: int) -> tuple[int, int]:
    """``[first, last]`` frames (both inclusive) of the window of an annotation ending at ``end``."""
    return int(end) - WINDOW, int(end) - 1


@dataclass(frozen=True)
class Annotation:
    """One text span of an episode. ``where`` names it in messages (``FILE:LINE``)."""

    episode: str
    start: int
    end: int
    text: str
    lang: str = ""
    where: str = ""


# --------------------------------------------------------------------------- annotation files


def read_annotations(path: str | Path) -> list[Annotation]:
    """Rows of a CSV (header ``episode,start,end,text[,lang]``) or JSONL file (same keys).

    Raises UserError naming ``FILE:LINE`` for a malformed row; other columns are ignored.
    """
    path = check_readable_file(Path(path), "annotation file (.csv or .jsonl)")
    kind = ANNOTATION_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: annotation files are .csv (header episode,start,end,text[,lang]) or .jsonl "
                        f"(one JSON object per line with the same keys); rename it or convert it")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); is it the right file? Save it as "
                        "UTF-8 (in Excel: 'CSV UTF-8'; GBK-encoded files are not read)") from None
    if "\x00" in text:
        raise UserError(f"{path}: holds NUL bytes, so it is not a text file; is it the right file?")
    rows = _read_csv(path, text) if kind == "csv" else _read_jsonl(path, text)
    if not rows:
        raise UserError(f"{path}: no annotations in the file (only a header or blank lines)")
    return rows


def _read_csv(path: Path, text: str) -> list[Annotation]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: no annotations in the file")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            shown = ",".join(header)[:120]
            raise UserError(f"{path}:1: the header must name the columns episode,start,end,text (and optionally lang); "
                            f"missing {','.join(missing)} in {shown!r}. Is it the right file?")
        col = {name: header.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in header}
        out = []
        line = reader.line_num
        for fields in reader:
            where = f"{path}:{line + 1}"
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue  # blank line
            if len(fields) != len(header):
                raise UserError(f"{where}: {len(fields)} field(s) where the header has {len(header)} "
                                "(a cut-off file, or a text with a comma that is not in double quotes?)")
            out.append(_annotation({k: fields[i] for k, i in col.items()}, where))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: not readable as CSV ({e})") from None
    return out


def _read_jsonl(path: Path, text: str) -> list[Annotation]:
    out = []
    for i, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); each line must be one object "
                            '{"episode": ..., "start": ..., "end": ..., "text": ...}') from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}: a JSON {type(obj).__name__}, expected an object with episode, start, end, text")
        missing = [k for k in REQUIRED_COLUMNS if k not in obj]
        if missing:
            raise UserError(f"{where}: missing key(s) {', '.join(missing)} (each line needs episode, start, end, text)")
        out.append(_annotation(obj, where))
    return out


def _annotation(row: dict, where: str) -> Annotation:
    episode = str(row["episode"]).strip()
    if not episode:
        raise UserError(f"{where}: empty episode")
    start, end = _int(row["start"], "start", where), _int(row["end"], "end", where)
    if not isinstance(row["text"], str) or not row["text"].strip():
        raise UserError(f"{where}: empty text" if isinstance(row["text"], str) else f"{where}: text must be a string")
    if not 0 <= start < end:
        raise UserError(f"{where}: span [start={start}, end={end}) is empty or negative; spans are [start, end) "
                        "frame numbers with 0 <= start < end")
    lang = row.get("lang")
    return Annotation(episode, start, end, row["text"].strip(), "" if lang is None else str(lang).strip(), where)


def _int(value, name: str, where: str) -> int:
    if isinstance(value, bool):
        raise UserError(f"{where}: {name} must be a frame number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise UserError(f"{where}: {name} must be a whole frame number, got {value!r}")


def store_annotations(store: EpisodeStore, episode_ids: Sequence[str] | None = None) -> list[Annotation]:
    """The annotations.json rows of every episode (``where`` = ``.../annotations.json #i``)."""
    out = []
    for eid in store.episode_ids() if episode_ids is None else episode_ids:
        ep = store.open(eid)
        for i, a in enumerate(ep.annotations()):
            start, end = int(a.get("start", 0)), int(a.get("end", ep.num_frames))
            out.append(Annotation(eid, start, end, str(a["text"]), str(a.get("lang", "")),
                                  f"{ep.path / 'annotations.json'} #{i}"))
    return out


# --------------------------------------------------------------------------- the embedder


def check_embedder(store: EpisodeStore, episode_ids: Sequence[str], mineclip, name: str = "the embedder") -> tuple[str, str]:
    """Refuse an embedder that did not make the store's goal embeddings; returns (what was
    checked, the embedder's fingerprint).

    The size is always checked; the weights when the episodes record a fingerprint
    (``model_sha256``, written by ``aimc data embed``).
    """
    from aimc.data.embed import model_fingerprint

    D = int(mineclip.cfg.embed_dim)
    recorded: dict[str, str] = {}  # fingerprint -> an episode that records it
    unrecorded = 0
    for eid in episode_ids:
        info = store.open(eid).meta.get("embeddings") or {}
        if not info:
            continue
        if int(info.get("dim", D)) != D:
            raise UserError(f"{store.root}: episode {eid}'s goal embeddings have size {info.get('dim')}, but {name} "
                            f"makes size {D}: it is not the MineCLIP the store was embedded with"
                            f"{_recorded_weights(info)}. Pass that one, or re-embed the store with this one "
                            f"(aimc data embed {store.root} --mineclip ... --force)")
        if info.get("model_sha256"):
            recorded.setdefault(info["model_sha256"], eid)
        else:
            unrecorded += 1
    mine = model_fingerprint(mineclip)
    if not recorded:
        return (f"the store does not record which weights embedded it (e.g. converted from STEVE-1's embeds_attn.pkl, "
                f"made with the official attn.pth); only the size D={D} was checked", mine)
    for fp, eid in recorded.items():
        if fp != mine:
            info = store.open(eid).meta["embeddings"]
            raise UserError(f"{store.root}: episode {eid} was embedded with another MineCLIP{_recorded_weights(info)} "
                            f"(sha256 {fp[:12]}…), not {name} (sha256 {mine[:12]}…): its goals and this embedder's text "
                            f"embeddings would not match. Pass the MineCLIP the store was embedded with, or re-embed "
                            f"the store with this one (aimc data embed {store.root} --mineclip ... --force)")
    note = f"; {unrecorded} episode(s) record no fingerprint, only their size was checked" if unrecorded else ""
    return f"the embedder is the one recorded in the store's metadata (sha256 {mine[:12]}…){note}", mine


def _recorded_weights(info: dict) -> str:
    w = info.get("weights")
    return f" (recorded: {w})" if w else ""


def embed_texts(mineclip, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """float32 (len(texts), D) text embeddings, each distinct text encoded once."""
    import torch

    from aimc.models.tokenizer import ClipTokenizer

    uniq = sorted(set(texts))
    if not uniq:
        return np.zeros((0, int(mineclip.cfg.embed_dim)), np.float32)
    tok = ClipTokenizer()
    out = []
    with torch.no_grad():
        for i in range(0, len(uniq), batch_size):
            out.append(mineclip.encode_text(tok.tokenize(uniq[i : i + batch_size])).float().cpu().numpy())
    emb = np.concatenate(out)  # (U, D)
    row = {t: i for i, t in enumerate(uniq)}
    return emb[[row[t] for t in texts]]


# --------------------------------------------------------------------------- pairs


@dataclass
class PairSet:
    """Pairs and where they came from; row i of every array belongs to the same annotation."""

    text_embeddings: np.ndarray  # (N, D) float32
    visual_embeddings: np.ndarray  # (N, D) float32
    texts: list[str]
    episodes: list[str]
    end_frames: np.ndarray  # (N,) int64, exclusive end; the window is frames end-16 .. end-1
    sources: list[str]  # "file" or "store", per pair
    skipped: dict[str, int] = field(default_factory=dict)  # store annotations without a pair, by reason
    embedder_check: str = ""
    embedder_sha256: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> list[tuple[str, int, int]]:
        """(text, pairs from the annotation file, pairs from the store), most pairs first."""
        f = Counter(t for t, s in zip(self.texts, self.sources) if s == "file")
        s = Counter(t for t, src in zip(self.texts, self.sources) if src == "store")
        return sorted(((t, f[t], s[t]) for t in set(f) | set(s)), key=lambda r: (-(r[1] + r[2]), r[0]))


def build_pairs(
    store: EpisodeStore | str | Path,
    mineclip,
    annotations: Sequence[Annotation] = (),
    use_store_annotations: bool = True,
    embedder_name: str = "the embedder",
) -> PairSet:
    """One pair per annotation: ``annotations`` (from a file: every row must give a pair) and,
    with ``use_store_annotations``, the store's own (rows without a window are skipped, counted
    in ``PairSet.skipped``). ``mineclip`` must be the model the store was embedded with."""
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
    store.require_exists()
    ids = store.episode_ids()
    if not ids:
        raise UserError(f"{store.root}: no episodes in this folder; is it an episode store (aimc data convert/generate)?")
    known = set(ids)
    rows: list[tuple[Annotation, str]] = []
    for a in annotations:
        if a.episode not in known:
            raise UserError(f"{a.where}: no episode {a.episode!r} in {store.root} ({len(ids)} episodes, e.g. "
                            f"{ids[0]}); check the episode column")
        rows.append((a, "file"))
    if use_store_annotations:
        rows += [(a, "store") for a in store_annotations(store, ids)]
    if not rows:
        why = "its episodes have no annotations.json" if use_store_annotations else "the store's annotations were left out"
        raise UserError(f"{store.root}: no annotations to pair ({why}); give an annotation file (--annotations FILE)")

    used = sorted({a.episode for a, _ in rows})
    check, fingerprint = check_embedder(store, used, mineclip, embedder_name)

    D = int(mineclip.cfg.embed_dim)
    episodes = {eid: store.open(eid) for eid in used}
    skipped: Counter[str] = Counter()
    keep: list[tuple[Annotation, str]] = []
    visual: list[np.ndarray] = []
    for a, src in rows:
        ep = episodes[a.episode]
        problem = _window_problem(a, ep, store)
        if problem:
            if src == "file":
                raise UserError(f"{a.where}: {problem[1]}")
            skipped[problem[0]] += 1
            continue
        emb, _ = ep.embeddings()  # type: ignore[misc]
        if emb.shape[1] != D:
            raise UserError(f"{ep.path / 'embeddings.npy'}: goal embeddings of size {emb.shape[1]}, but {embedder_name} "
                            f"makes size {D}: pass the MineCLIP the store was embedded with")
        visual.append(np.asarray(emb[window_row(a.end)], np.float32))
        keep.append((a, src))
    if not keep:
        reasons = "; ".join(f"{n} {r}" for r, n in skipped.items())
        fix = (f"embed the store first (aimc data embed {store.root} --mineclip ...)" if "episode not embedded" in skipped
               else "give an annotation file with windows that end at frame 16 or later (--annotations FILE)")
        raise UserError(f"{store.root}: none of the {len(rows)} annotations gives a pair ({reasons}); {fix}")
    texts = [a.text for a, _ in keep]
    return PairSet(
        text_embeddings=embed_texts(mineclip, texts),
        visual_embeddings=np.stack(visual).reshape(-1, D),
        texts=texts,
        episodes=[a.episode for a, _ in keep],
        end_frames=np.array([a.end for a, _ in keep], np.int64),
        sources=[s for _, s in keep],
        skipped=dict(skipped),
        embedder_check=check,
        embedder_sha256=fingerprint,
    )


def _window_problem(a: Annotation, ep, store: EpisodeStore) -> tuple[str, str] | None:
    """(reason, message) when annotation ``a`` gives no pair, else None."""
    n = ep.num_frames
    if a.end > n:
        return ("end beyond the episode", f"end {a.end} is beyond episode {a.episode}, which has {n} frames "
                f"(spans are [start, end), so end is at most {n})")
    if a.end < WINDOW:
        return ("window before frame 0 (event before frame 15)",
                f"the 16-frame window that ends at frame {a.end - 1} would start at frame {a.end - WINDOW}, "
                f"before the episode's first frame; the earliest end is {WINDOW} (window of frames 0..{WINDOW - 1})")
    got = ep.embeddings()
    if got is None:
        return ("episode not embedded", f"episode {a.episode} has no goal embeddings; embed the store first: "
                f"aimc data embed {store.root} --mineclip EMBEDDER")
    if not bool(got[1][window_row(a.end)]):
        first, last = window_frames(a.end)
        return ("no valid embedding", f"the store marks the window of frames {first}..{last} (row "
                f"{window_row(a.end)}) of episode {a.episode} as having no valid goal embedding; choose another end")
    return None


def save_pairs(pairs: PairSet, path: str | Path) -> Path:
    """Write the pairs .npz atomically (see the module docstring for its arrays)."""
    from aimc.utils.io import atomic_path

    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"{path}: the pairs file must end in .npz")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name ending in .npz")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a temporary name
            np.savez(f, text_embeddings=pairs.text_embeddings.astype(np.float32),
                     visual_embeddings=pairs.visual_embeddings.astype(np.float32),
                     texts=np.array(pairs.texts, dtype=str), episodes=np.array(pairs.episodes, dtype=str),
                     end_frames=np.asarray(pairs.end_frames, np.int64),
                     embedder_sha256=np.array(pairs.embedder_sha256, dtype=str))
    return path


def summary_lines(pairs: PairSet, top: int = 40) -> list[str]:
    """The per-text count table printed by ``aimc prior pairs``."""
    rows = pairs.counts()
    n_file = sum(s == "file" for s in pairs.sources)
    lines = [f"{len(pairs):,} pairs ({n_file:,} from the annotation file, {len(pairs) - n_file:,} from the store), "
             f"{len(rows):,} distinct texts, D={pairs.text_embeddings.shape[1]}",
             f"{'pairs':>7} {'file':>6} {'store':>6}  text"]
    for text, f, s in rows[:top]:
        lines.append(f"{f + s:>7} {f:>6} {s:>6}  {text}")
    if len(rows) > top:
        lines.append(f"        ... and {len(rows) - top:,} more texts ({sum(f + s for _, f, s in rows[top:]):,} pairs)")
    for reason, n in sorted(pairs.skipped.items()):
        lines.append(f"skipped {n:,} store annotation(s): {reason}")
    return lines


__all__ = ["Annotation", "PairSet", "build_pairs", "check_embedder", "embed_texts", "read_annotations",
           "save_pairs", "store_annotations", "summary_lines", "window_frames", "window_row"]
