"""MP4 recording with the prompt and the step number drawn over each frame.

Frames are scaled up (nearest neighbour, so game pixels stay sharp) and a caption bar is drawn
on top with Pillow. Prompts may be Chinese: a CJK-capable font is used when one is installed
(Noto CJK, WenQuanYi, Droid Sans Fallback, ...); without one the text is still drawn with the
best available font (missing glyphs show as boxes) and recording never fails because of text.

    with VideoWriter("out.mp4", fps=20, scale=4) as video:
        video.add(frame, "chop a tree", step)
"""

from __future__ import annotations

import functools
import glob
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from aimc.utils.io import atomic_path

# Fonts tried in order; the first that exists is used. CJK-capable ones first.
_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
_CJK_GLOBS = ("/usr/share/fonts/**/*CJK*", "/usr/share/fonts/**/wqy*", "/usr/share/fonts/**/*Fallback*")


@functools.lru_cache(maxsize=8)
def find_font_path(cjk_only: bool = False) -> str | None:
    """Path of the best installed font (a CJK-capable one if any), or None."""
    for p in _FONT_CANDIDATES:
        if os.path.isfile(p) and (not cjk_only or "DejaVu" not in p):
            return p
    for pattern in _CJK_GLOBS:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return hits[0]
    return None


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    path = find_font_path()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    try:
        draw.text(xy, text, fill=(255, 255, 255), font=font)
    except UnicodeEncodeError:
        # bitmap fallback fonts only know latin-1: keep what they can show
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), fill=(255, 255, 255), font=font)


def overlay(frame: np.ndarray, prompt: str, step: int, scale: int = 4) -> np.ndarray:
    """Scale ``frame`` (H, W, 3) uint8 by ``scale`` and draw a caption bar with prompt and step.

    Returns (H*scale + bar, W*scale, 3) uint8, with both sides even (as H.264 requires).
    """
    frame = np.asarray(frame, dtype=np.uint8)
    big = frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame
    h, w = big.shape[:2]
    font_size = max(10, min(24, w // 22))
    bar = font_size * 2 + 8
    canvas = Image.new("RGB", (w + (w % 2), h + bar + ((h + bar) % 2)), (0, 0, 0))
    canvas.paste(Image.fromarray(big), (0, bar))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    _draw_text(draw, (4, 2), _fit(draw, prompt, font, w - 8), font)
    _draw_text(draw, (4, 4 + font_size), f"step {step}", font)
    return np.asarray(canvas)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    try:
        if draw.textlength(text, font=font) <= width:
            return text
        while text and draw.textlength(text + "...", font=font) > width:
            text = text[:-1]
        return text + "..."
    except UnicodeEncodeError:
        return text


class VideoWriter:
    """Writes an H.264 mp4 (PyAV) frame by frame; the file appears complete or not at all."""

    def __init__(self, path: str | Path, fps: int = 20, scale: int = 4, overlay_text: bool = True) -> None:
        self.path = Path(path)
        self.fps = fps
        self.scale = scale
        self.overlay_text = overlay_text
        self._ctx = atomic_path(self.path)
        self._tmp: Path | None = None
        self._container = None
        self._stream = None
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)

    def _open(self, width: int, height: int) -> None:
        import av

        self._tmp = self._ctx.__enter__()
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=self.fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": "23", "preset": "veryfast"}
        self.size = (width, height)

    def add(self, frame: np.ndarray, prompt: str = "", step: int = 0) -> None:
        """Append one RGB frame (H, W, 3) uint8, drawing ``prompt`` and ``step`` over it."""
        import av

        img = overlay(frame, prompt, step, self.scale) if self.overlay_text else np.asarray(frame, np.uint8)
        if self._container is None:
            self._open(img.shape[1], img.shape[0])
        packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        for packet in self._stream.encode(packet_frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush and move the file into place (no file if no frame was added)."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        self._ctx.__exit__(None, None, None)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._container is not None:
            self._container.close()
            self._container = None
            self._ctx.__exit__(exc_type, exc, tb)


def read_video(path: str | Path) -> np.ndarray:
    """Decode an mp4 into (N, H, W, 3) uint8 RGB frames; a file that is not a readable video
    (text, empty, cut short, no video stream) is a :class:`~aimc.errors.UserError` naming it."""
    import av

    from aimc.errors import UserError

    try:
        with av.open(str(path)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    except (av.error.FFmpegError, IndexError, ValueError) as e:  # IndexError: no video stream
        raise UserError(f"{path}: not a readable video ({type(e).__name__}: {e}); is it an mp4 clip, "
                        "completely copied?") from None
    if not frames:
        raise UserError(f"{path}: holds no video frames; is it an mp4 clip, completely copied?")
    return np.stack(frames)
