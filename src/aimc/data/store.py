"""The on-disk episode store (format spec: docs/episode-format.md).

One directory per episode, written atomically::

    <root>/
      aimc_store.json              # {"format": "aimc-episode-store", "format_version": 1}
      <episode_id>/
        meta.json                  # lengths, resolution, fps, source, converter, checksums
        video/000000.mp4 ...       # H.264 (libx264rgb) chunks of `chunk_frames` frames,
                                   # each starting with a keyframe: a window decodes only its chunks
        actions/<head>.npy         # (N, ...) arrays, e.g. buttons/camera joint indices, env_* arrays
        embeddings.npy             # (N, D) goal embeddings (float16 by default), optional
        embed_valid.npy            # (N,) bool, False for the first 15 frames of a MineCLIP embedding
        annotations.json           # [{"start", "end", "text", "lang", ...}] text spans, optional

Reading is lock-free and opens files lazily, so any number of loader processes can read the
store while a converter adds episodes to it (a reader sees an episode only once it is complete).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from aimc.errors import ConfigError, UserError
from aimc.utils.io import atomic_dir, atomic_path, atomic_write_text, clean_tmp_dirs

FORMAT_NAME = "aimc-episode"
FORMAT_VERSION = 1
STORE_FILE = "aimc_store.json"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}$")


class StoreError(UserError):
    """An episode or store on disk is missing, incomplete or inconsistent."""


@dataclasses.dataclass
class VideoSettings:
    """How frames are compressed.

    Defaults give near-lossless frames (PSNR ~45-50 dB on Minecraft-like content) at fewer
    bytes than the original STEVE-1 mp4v files, and fast single-threaded decoding.
    """

    chunk_frames: int = 256  # frames per video file; each starts with a keyframe
    crf: int = 10  # x264 constant rate factor; 0 = mathematically lossless
    preset: str = "fast"  # x264 speed/size trade-off for encoding
    tune: str | None = "fastdecode"  # no CABAC/deblocking: ~1.5x faster decoding, ~5% more bytes
    codec: str = "libx264rgb"  # RGB H.264 (no chroma subsampling; yuv420 would cost ~20 dB PSNR)

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ConfigError(f"video.chunk_frames must be >= 1, got {self.chunk_frames}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"video.crf must be in 0..51, got {self.crf}")


def validate_episode_id(episode_id: str) -> str:
    if not isinstance(episode_id, str) or not _ID_RE.match(episode_id) or episode_id.endswith(".tmp"):
        raise UserError(
            f"invalid episode id {episode_id!r}: use letters, digits and . _ - + = @ (no '/', "
            "not starting with '.' or '-', at most 200 characters)"
        )
    return episode_id


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_record(path: Path, root: Path) -> tuple[str, dict]:
    return path.relative_to(root).as_posix(), {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def content_digest(
    frames: np.ndarray,
    actions: dict[str, np.ndarray],
    annotations: list[dict] | None,
    embeddings: np.ndarray | None,
    embed_valid: np.ndarray | None,
) -> str:
    """A digest of an episode's input data: writing the same data twice is a no-op."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((frames.shape, str(frames.dtype))).encode())
    h.update(np.ascontiguousarray(frames).data)
    for name in sorted(actions):
        a = np.ascontiguousarray(actions[name])
        h.update(repr((name, a.shape, str(a.dtype))).encode())
        h.update(a.data)
    h.update(json.dumps(annotations or [], sort_keys=True, default=str).encode())
    if embeddings is not None:
        h.update(np.ascontiguousarray(embeddings, dtype=np.float32).data)
        h.update(np.ascontiguousarray(embed_valid, dtype=bool).data)
    return h.hexdigest()


# --------------------------------------------------------------------------- video


def encode_video_chunk(path: Path, frames: np.ndarray, fps: float, video: VideoSettings) -> None:
    """Write frames (n,H,W,3) uint8 RGB as one H.264 file whose first frame is a keyframe."""
    import av

    n, h, w, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(video.codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "rgb24" if video.codec == "libx264rgb" else "yuv444p"
        opts = {"crf": str(video.crf), "preset": video.preset}
        if video.tune:
            opts["tune"] = video.tune
        # one keyframe per file, no scene-cut keyframes: the whole chunk is a single GOP
        opts["x264-params"] = f"keyint={max(n, 1)}:min-keyint={max(n, 1)}:scenecut=0"
        stream.options = opts
        stream.codec_context.gop_size = max(n, 1)
        stream.thread_type = "NONE"
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_video_chunk(path: Path, start: int, stop: int, out: np.ndarray) -> int:
    """Decode frames [start, stop) of one chunk file into ``out`` (stop-start,H,W,3).

    Decoding stops right after frame ``stop - 1``; returns the number of frames written.
    """
    import av
    import cv2

    i = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # one decoder thread per loader worker scales best
            for frame in container.decode(stream):
                if i >= start:
                    if frame.format.name == "gbrp":
                        # planes are G, B, R; cv2.merge interleaves them ~1.7x faster than to_ndarray()
                        h, w = frame.height, frame.width
                        g, b, r = (np.frombuffer(p, np.uint8).reshape(h, -1)[:, :w] for p in frame.planes)
                        cv2.merge([r, g, b], dst=out[i - start])
                    else:
                        out[i - start] = frame.to_ndarray(format="rgb24")
                i += 1
                if i >= stop:
                    break
    except av.error.FFmpegError as e:  # type: ignore[attr-defined]
        raise StoreError(f"{path}: cannot decode video chunk ({e}); run `aimc data check` on the store") from e
    return max(0, min(i, stop) - start)


# --------------------------------------------------------------------------- episode


class Episode:
    """Read access to one stored episode. Cheap to create; files are opened on first use."""

    def __init__(self, path: Path, meta: dict | None = None) -> None:
        self.path = Path(path)
        if meta is None:
            meta_path = self.path / "meta.json"
            if not meta_path.is_file():
                raise StoreError(f"{self.path}: not a complete episode (no meta.json)")
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_NAME or int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: episode format {meta.get('format')!r} v{meta.get('format_version')} is not "
                f"readable by this aimc (reads {FORMAT_NAME} v1..v{FORMAT_VERSION}); upgrade aimc"
            )
        self.meta: dict = meta
        self._actions: dict[str, np.ndarray] | None = None
        self._emb: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def episode_id(self) -> str:
        return self.meta["episode_id"]

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    def __len__(self) -> int:
        return self.num_frames

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (int(self.meta["height"]), int(self.meta["width"]), 3)

    @property
    def fps(self) -> float:
        return float(self.meta.get("fps", 20.0))

    def _chunk_path(self, k: int) -> Path:
        return self.path / "video" / f"{k * int(self.meta['video']['chunk_frames']):06d}.mp4"

    def frames(self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """RGB frames [start, stop) as uint8 (n, H, W, 3); decodes only the chunks they lie in.

        ``out``: an existing C-contiguous (n, H, W, 3) uint8 array to decode into.
        """
        n_total = self.num_frames
        stop = n_total if stop is None else stop
        if not 0 <= start <= stop <= n_total:
            raise IndexError(f"{self.path}: frames [{start}, {stop}) outside [0, {n_total})")
        shape = (stop - start, *self.frame_shape)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)  # (n, H, W, 3)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape}")
        c = int(self.meta["video"]["chunk_frames"])
        pos = start
        while pos < stop:
            k = pos // c
            end = min(stop, (k + 1) * c)
            got = decode_video_chunk(self._chunk_path(k), pos - k * c, end - k * c, out[pos - start : end - start])
            if got != end - pos:
                raise StoreError(
                    f"{self._chunk_path(k)}: holds fewer frames than meta.json says ({k * c + got} < {end}); "
                    "the episode is damaged: delete it and convert it again"
                )
            pos = end
        return out

    def actions(self) -> dict[str, np.ndarray]:
        """All action arrays {name: (N, ...)}, memory-mapped (read-only)."""
        if self._actions is None:
            self._actions = {
                name: np.load(self.path / "actions" / f"{name}.npy", mmap_mode="r") for name in self.meta["actions"]
            }
        return self._actions

    @property
    def has_embeddings(self) -> bool:
        return bool(self.meta.get("embeddings"))

    def embeddings(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(emb (N, D), valid (N,) bool), memory-mapped; None if not embedded yet.

        ``emb`` keeps its stored dtype (float16 by default); rows where ``valid`` is False are
        undefined (zeros) and must not be used as goals.
        """
        if not self.has_embeddings:
            return None
        if self._emb is None:
            emb = np.load(self.path / "embeddings.npy", mmap_mode="r")
            valid = np.load(self.path / "embed_valid.npy")
            self._emb = (emb, valid)
        return self._emb

    def embedding_rows(self, idx: np.ndarray) -> np.ndarray:
        """float32 (len(idx), D) embeddings at frame indices ``idx``."""
        e = self.embeddings()
        if e is None:
            raise StoreError(f"{self.path}: episode has no embeddings; run `aimc data embed` first")
        return np.asarray(e[0][np.asarray(idx)], dtype=np.float32)

    def annotations(self) -> list[dict]:
        p = self.path / "annotations.json"
        if not p.is_file():
            return []
        return json.loads(p.read_text(encoding="utf-8"))

    def verify(self, deep: bool = False) -> list[str]:
        """Problems found (empty = fine). ``deep`` also checks sha256 checksums and decodes the video."""
        problems: list[str] = []
        for rel, rec in self.meta.get("files", {}).items():
            p = self.path / rel
            if not p.is_file():
                problems.append(f"missing file {rel}")
            elif p.stat().st_size != rec["bytes"]:
                problems.append(f"{rel}: size {p.stat().st_size} != {rec['bytes']} in meta.json")
            elif deep and _sha256(p) != rec["sha256"]:
                problems.append(f"{rel}: checksum mismatch")
        if problems:
            return problems
        n = self.num_frames
        for name, arr in self.actions().items():
            if arr.shape[0] != n:
                problems.append(f"actions/{name}.npy has {arr.shape[0]} rows, episode has {n} frames")
        if self.has_embeddings:
            emb, valid = self.embeddings()  # type: ignore[misc]
            if emb.shape[0] != n or valid.shape[0] != n:
                problems.append(f"embeddings have {emb.shape[0]} rows, episode has {n} frames")
        if deep:
            try:
                self.frames(0, n)
            except StoreError as e:
                problems.append(str(e))
        return problems


# --------------------------------------------------------------------------- store


class EpisodeStore:
    """A folder of episodes. ``EpisodeStore(root)`` never touches the disk until used."""

    def __init__(self, root: str | Path, video: VideoSettings | None = None, embed_dtype: str = "float16") -> None:
        self.root = Path(root)
        self.video = video if video is not None else VideoSettings()
        if embed_dtype not in ("float16", "float32"):
            raise UserError(f"embed_dtype must be 'float16' or 'float32', got {embed_dtype!r}")
        self.embed_dtype = embed_dtype

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.root)!r})"

    # -- listing
    def episode_ids(self) -> list[str]:
        """Ids of complete episodes, sorted."""
        if not self.root.is_dir():
            return []
        out = []
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                if os.path.isfile(os.path.join(entry.path, "meta.json")):
                    out.append(entry.name)
        return sorted(out)

    def __contains__(self, episode_id: str) -> bool:
        return (self.root / episode_id / "meta.json").is_file()

    def __len__(self) -> int:
        return len(self.episode_ids())

    def episode_path(self, episode_id: str) -> Path:
        return self.root / validate_episode_id(episode_id)

    def require_exists(self) -> None:
        """A clear error unless ``root`` is an episode store: a folder with the store marker
        (``aimc_store.json``) or at least one episode."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: is a file, not an episode store folder (stores are folders written by "
                             "`aimc data convert ...` or `aimc data generate`)")
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: episode store not found (create one with `aimc data convert ...`)")
        if not (self.root / STORE_FILE).is_file() and not self.episode_ids():
            what = "an empty folder" if not any(self.root.iterdir()) else f"a folder without {STORE_FILE} or episodes"
            raise StoreError(f"{self.root}: not an episode store ({what}); create one with `aimc data convert ...` "
                             "or `aimc data generate`")

    def open(self, episode_id: str) -> Episode:
        p = self.episode_path(episode_id)
        if not (p / "meta.json").is_file():
            raise StoreError(f"{self.root}: no complete episode {episode_id!r}")
        return Episode(p)

    def has_episode(self, episode_id: str, verify: bool = True) -> bool:
        """True if the episode exists (and, with ``verify``, its files match meta.json)."""
        if episode_id not in self:
            return False
        if not verify:
            return True
        try:
            return not self.open(episode_id).verify(deep=False)
        except (StoreError, ValueError, OSError):
            return False

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted writes. Only call when no writer is running."""
        return clean_tmp_dirs(self.root)

    def create(self) -> None:
        """Create the store folder and its marker if missing (a clear error if the path is a file)."""
        self._ensure_root()

    def _ensure_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: is a file; an episode store is a folder: give a folder path (it is created)")
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / STORE_FILE
        if not marker.exists():
            atomic_write_text(marker, json.dumps({"format": "aimc-episode-store", "format_version": FORMAT_VERSION}) + "\n")

    # -- writing
    def write_episode(
        self,
        episode_id: str,
        frames: np.ndarray,
        actions: dict[str, np.ndarray],
        meta: dict,
        annotations: list[dict] | None = None,
        embeddings: np.ndarray | None = None,
        embed_valid: np.ndarray | None = None,
    ) -> Path:
        """Write one episode atomically and return its directory.

        frames: uint8 (N, H, W, 3) RGB; actions: {head name: (N, ...)} arrays; meta: free-form
        fields (``source``, ``converter``, ``converter_version``, ``fps``, ...), stored in meta.json;
        annotations: [{"start", "end", "text", "lang"?}] frame spans; embeddings (N, D) with
        embed_valid (N,) bool (default: all valid). Writing identical data again is a no-op;
        different data replaces the old episode (atomically).
        """
        validate_episode_id(episode_id)
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise UserError(f"episode {episode_id}: frames must be uint8 (N,H,W,3), got {frames.dtype} {frames.shape}")
        n = frames.shape[0]
        if n == 0:
            raise UserError(f"episode {episode_id}: has no frames")
        actions = {k: np.asarray(v) for k, v in actions.items()}
        for name, arr in actions.items():
            if not re.match(r"^[A-Za-z0-9_.-]+$", name):
                raise UserError(f"episode {episode_id}: invalid action name {name!r}")
            if arr.shape[0] != n:
                raise UserError(f"episode {episode_id}: actions[{name!r}] has {arr.shape[0]} rows for {n} frames")
            if arr.dtype == object:
                raise UserError(f"episode {episode_id}: actions[{name!r}] must be a numeric array")
        annotations = _check_annotations(annotations, n, episode_id)
        if embeddings is not None:
            embeddings, embed_valid = _check_embeddings(embeddings, embed_valid, n, episode_id)
        digest = content_digest(frames, actions, annotations, embeddings, embed_valid)
        path = self.episode_path(episode_id)
        if (path / "meta.json").is_file():
            try:
                old = self.open(episode_id)
                if old.meta.get("content_digest") == digest and not old.verify():
                    return path
            except (StoreError, ValueError, OSError):
                pass
        self._ensure_root()
        fps = float(meta.get("fps", 20.0))
        with atomic_dir(path) as tmp:
            (tmp / "video").mkdir()
            c = self.video.chunk_frames
            for k in range(0, n, c):
                encode_video_chunk(tmp / "video" / f"{k:06d}.mp4", frames[k : k + c], fps, self.video)
            (tmp / "actions").mkdir()
            for name, arr in actions.items():
                np.save(tmp / "actions" / f"{name}.npy", np.ascontiguousarray(arr))
            emb_info = None
            if embeddings is not None:
                emb_info = self._save_embeddings(tmp, embeddings, embed_valid, dict(meta.get("embeddings_info", {})))
            if annotations:
                (tmp / "annotations.json").write_text(json.dumps(annotations, indent=1, ensure_ascii=False) + "\n")
            full = {k: v for k, v in meta.items() if k != "embeddings_info"}
            full.update(
                format=FORMAT_NAME,
                format_version=FORMAT_VERSION,
                episode_id=episode_id,
                num_frames=n,
                height=int(frames.shape[1]),
                width=int(frames.shape[2]),
                fps=fps,
                video={**dataclasses.asdict(self.video), "num_chunks": (n + c - 1) // c, "pix_fmt": "gbrp"},
                actions={k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in actions.items()},
                embeddings=emb_info,
                num_annotations=len(annotations),
                content_digest=digest,
                written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            full["files"] = dict(_file_record(p, tmp) for p in sorted(tmp.rglob("*")) if p.is_file())
            (tmp / "meta.json").write_text(json.dumps(full, indent=1, sort_keys=True, default=_json_default) + "\n")
        return path

    def _save_embeddings(self, d: Path, emb: np.ndarray, valid: np.ndarray, info: dict) -> dict:
        emb = np.where(valid[:, None], emb, 0.0).astype(self.embed_dtype)
        with atomic_path(d / "embeddings.npy") as t:
            with open(t, "wb") as f:
                np.save(f, emb)
        with atomic_path(d / "embed_valid.npy") as t:
            with open(t, "wb") as f:
                np.save(f, np.asarray(valid, dtype=bool))
        return {**info, "dim": int(emb.shape[1]), "dtype": self.embed_dtype, "num_valid": int(valid.sum())}

    def set_embeddings(self, episode_id: str, emb: np.ndarray, valid: np.ndarray, info: dict) -> None:
        """Add or replace an episode's goal embeddings (N, D) + valid (N,); ``info`` goes to meta.json.

        The arrays are written first and meta.json last, so an interrupted call leaves the episode
        as it was (meta.json without the new embeddings), and `aimc data embed` redoes it.
        """
        ep = self.open(episode_id)
        emb, valid = _check_embeddings(emb, valid, ep.num_frames, episode_id)
        meta = dict(ep.meta)
        meta["embeddings"] = None
        meta["files"] = {k: v for k, v in meta.get("files", {}).items() if k not in ("embeddings.npy", "embed_valid.npy")}
        atomic_write_text(ep.path / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
        meta["embeddings"] = self._save_embeddings(ep.path, emb, valid, dict(info))
        files = dict(meta.get("files", {}))
        for name in ("embeddings.npy", "embed_valid.npy"):
            files.update([_file_record(ep.path / name, ep.path)])
        meta["files"] = files
        atomic_write_text(ep.path / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=_json_default) + "\n")

    def delete_episode(self, episode_id: str) -> None:
        p = self.episode_path(episode_id)
        if p.exists():
            trash = self.root / f".old-{episode_id}.{os.getpid()}"
            os.replace(p, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def total_frames(self) -> int:
        return sum(self.open(e).num_frames for e in self.episode_ids())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _check_annotations(annotations: list[dict] | None, n: int, episode_id: str) -> list[dict]:
    out = []
    for i, a in enumerate(annotations or []):
        if not isinstance(a, dict) or "text" not in a:
            raise UserError(f"episode {episode_id}: annotation {i} must be a dict with 'start', 'end', 'text'")
        start, end = int(a.get("start", 0)), int(a.get("end", n))
        if not 0 <= start <= end <= n:
            raise UserError(f"episode {episode_id}: annotation {i} span [{start}, {end}) outside [0, {n}]")
        out.append({**a, "start": start, "end": end, "text": str(a["text"]), "lang": str(a.get("lang", "en"))})
    return out


def _check_embeddings(emb: np.ndarray, valid: np.ndarray | None, n: int, episode_id: str) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise UserError(f"episode {episode_id}: embeddings must be (N={n}, D), got {emb.shape}")
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (n,):
        raise UserError(f"episode {episode_id}: embed_valid must be ({n},), got {valid.shape}")
    if not np.isfinite(emb[valid]).all():
        raise UserError(f"episode {episode_id}: embeddings contain NaN/inf in valid rows")
    return emb, valid
