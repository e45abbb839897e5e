"""Frame resizing exactly as the original agents see frames.

Both resizes are ``cv2.resize(..., INTER_LINEAR)`` per frame: OpenCV's bilinear uint8
path uses fixed-point arithmetic, so a numpy/torch re-implementation would differ by one
grey level in places. OpenCV 4.14 (the fixtures) and 5.0 give identical bytes here
(checked by tests/test_conformance_actions.py).
"""

from __future__ import annotations

import cv2
import numpy as np

from aimc.errors import UserError

AGENT_RESOLUTION = 128
MINECLIP_RESOLUTION = (160, 256)  # (height, width)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W, 3) or (H, W, 3) uint8 -> (N, height, width, 3) uint8, ``cv2.resize`` INTER_LINEAR per frame."""
    arr = np.asarray(frames)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise UserError(f"frames must be uint8 (N, H, W, 3) or (H, W, 3), got {arr.dtype} {np.shape(frames)}")
    if arr.shape[1:3] == (height, width):
        out = arr.copy()  # the original skips the resize when the size already matches
    else:
        out = np.empty((arr.shape[0], height, width, 3), dtype=np.uint8)
        for i, frame in enumerate(arr):
            out[i] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
    return out[0] if single else out


def resize_to_agent(frames_rgb: np.ndarray, size: int = AGENT_RESOLUTION) -> np.ndarray:
    """(N, H, W, 3) or (H, W, 3) uint8 -> (N, size, size, 3) uint8, as VPT's ``resize_image``."""
    return resize_frames(frames_rgb, size, size)


def resize_for_mineclip(frames_rgb: np.ndarray, size: tuple[int, int] = MINECLIP_RESOLUTION) -> np.ndarray:
    """(N, H, W, 3) or (H, W, 3) uint8 -> (N, h, w, 3) uint8 with ``size=(h, w)``, still HWC.

    As STEVE-1's ``process_frame_mineclip`` before its HWC -> CHW move
    (``frames.transpose(0, 3, 1, 2)`` gives the original's (N, 3, 160, 256)).
    """
    return resize_frames(frames_rgb, int(size[0]), int(size[1]))


_resize_frames = resize_frames  # older name, kept for callers that use it
