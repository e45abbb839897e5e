"""Contractor recording conversion: broken input, corrected mode, streaming, video decoding."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from aimc.actions import contractor as c
from aimc.actions.minecraft import ENV_BUTTONS
from aimc.errors import UserError


def line(keys=(), buttons=(), new_buttons=(), dx=0.0, dy=0.0, hotbar=0, gui=False, x=640.0, y=360.0) -> dict:
    return {
        "mouse": {"x": x, "y": y, "dx": dx, "dy": dy, "buttons": list(buttons), "newButtons": list(new_buttons)},
        "keyboard": {"keys": [f"key.keyboard.{k}" for k in keys], "newKeys": []},
        "isGuiOpen": gui,
        "hotbar": hotbar,
    }


def frames(n: int, h: int = 36, w: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_broken_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "ep.jsonl"
    path.write_text(json.dumps(line(keys=["w"])) + "\n" + '{"mouse": {"x": 1,' + "\n")
    with pytest.raises(c.ContractorDataError, match=r"ep\.jsonl:2: not valid JSON") as err:
        c.load_contractor_episode(frames(2), path)
    assert isinstance(err.value, UserError)


def test_missing_field_and_bad_values_name_the_line(tmp_path):
    path = tmp_path / "ep.jsonl"
    bad = line(keys=["w"])
    del bad["mouse"]["dx"]
    path.write_text("\n".join(json.dumps(r) for r in [line(keys=["w"]), bad]))
    with pytest.raises(c.ContractorDataError, match=r"ep\.jsonl:2: missing field 'dx'"):
        c.load_contractor_episode(frames(2), path)
    path.write_text(json.dumps(line(keys=["w"], hotbar=12)))
    with pytest.raises(c.ContractorDataError, match=r":1: 'hotbar' must be"):
        c.load_contractor_episode(frames(1), path)
    path.write_text("[1, 2]\n")
    with pytest.raises(c.ContractorDataError, match="expected a JSON object"):
        list(c.read_jsonl(path))
    with pytest.raises(c.ContractorDataError, match="no such jsonl"):
        list(c.read_jsonl(tmp_path / "missing.jsonl"))


def test_blank_lines_are_skipped_but_line_numbers_kept():
    text = ["", json.dumps(line(keys=["w"])), "   ", "{broken"]
    with pytest.raises(c.ContractorDataError, match=":4:"):
        list(c.read_jsonl(text))
    got = list(c.read_jsonl(text[:3]))
    assert [n for n, _ in got] == [2]


def test_quirks_and_fixed_mode():
    records = [
        line(keys=["w"], dx=12.0, dy=-4.0),  # 1.8 / -0.6 deg
        line(hotbar=3),  # scroll-wheel hotbar change only
        line(dx=2000.0),  # 300 deg glitch jump
    ]
    quirky = c.load_contractor_episode(frames(3), records)
    assert quirky.line_index.tolist() == [0, 2]  # the hotbar-only line is dropped
    assert quirky.env_actions["camera"].tolist() == [[0, 1], [0, 300]]
    fixed = c.load_contractor_episode(frames(3), records, fix_quirks=True)
    assert fixed.line_index.tolist() == [0, 1, 2]
    assert fixed.env_actions["hotbar.4"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(fixed.env_actions["camera"], [[-0.6, 1.8], [0.0, 0.0], [0.0, 0.0]])
    assert fixed.env_actions["camera"].dtype == np.float64
    # the policy actions follow the (fixed) env actions
    assert fixed.policy_actions["camera"][1] == 60 and fixed.policy_actions["buttons"][1] > 0


def test_stuck_attack_and_records_untouched():
    records = [
        line(buttons=[0], new_buttons=[0], keys=["w"]),  # attack down from the start: stuck
        line(buttons=[0]),  # still stuck -> null -> dropped
        line(buttons=[0], new_buttons=[0]),  # a fresh press: real attack
        line(buttons=[0]),
    ]
    before = json.dumps(records)
    ep = c.load_contractor_episode(frames(4), records)
    assert ep.line_index.tolist() == [0, 2, 3]
    assert ep.env_actions["attack"].tolist() == [0, 1, 1]
    assert json.dumps(records) == before  # the caller's records are not edited


def test_missing_frames_and_stats():
    records = [line(keys=["w"]) for _ in range(5)]
    stats: dict[str, int] = {}
    steps = list(c.iter_contractor_steps(iter(frames(3)), records, stats=stats))
    assert [s.line_index for s in steps] == [0, 1, 2]
    assert stats == {"lines": 5, "kept": 3, "null": 0, "missing_frames": 2}


def test_streaming_reads_frames_lazily():
    """The frame source is consumed one frame per line, never all at once."""
    consumed = []

    def source():
        for i, f in enumerate(frames(6)):
            consumed.append(i)
            yield f

    records = [line(keys=["w"]) for _ in range(6)]
    steps = c.iter_contractor_steps(source(), records)
    next(steps)
    assert consumed == [0]


def test_cursor_overlay_blend_and_edges():
    cursor = c.load_cursor()
    assert cursor.shape == (16, 16, 4) and cursor.dtype == np.uint8
    frame = np.full((40, 50, 3), 100, np.uint8)
    c.overlay_cursor(frame, 5, 7, cursor)
    a = cursor[:, :, 3:] / 255.0
    expected = (np.full((16, 16, 3), 100, np.uint8) * (1 - a) + cursor[:, :, :3] * a).astype(np.uint8)
    np.testing.assert_array_equal(frame[7:23, 5:21], expected)
    assert (frame[:7] == 100).all() and (frame[23:] == 100).all()
    # clipped at the edges (the visible part is drawn), nothing drawn when fully outside
    f = np.full((40, 50, 3), 100, np.uint8)
    c.overlay_cursor(f, -10, -3, cursor)
    np.testing.assert_array_equal(f[0:13, 0:6], expected[3:, 10:])
    f = np.full((40, 50, 3), 100, np.uint8)
    c.overlay_cursor(f, 45, 35, cursor)
    np.testing.assert_array_equal(f[35:, 45:], expected[:5, :5])
    for x, y in [(50, 0), (0, 40), (-16, 0), (0, -16)]:
        f = np.full((40, 50, 3), 100, np.uint8)
        c.overlay_cursor(f, x, y, cursor)
        assert (f == 100).all()


def test_gui_frame_gets_cursor_at_scaled_position():
    h, w = 72, 128  # scale 0.1 from the 720p recording
    bg = np.zeros((h, w, 3), np.uint8)
    ep = c.load_contractor_episode([bg], [line(keys=["e"], gui=True, x=305.0, y=209.0)], agent_size=h)
    assert ep.frames.shape == (1, h, h, 3)
    steps = list(c.iter_contractor_steps([bg], [line(keys=["e"], gui=True, x=305.0, y=209.0)]))
    expected = bg.copy()
    c.overlay_cursor(expected, 30, 20, c.load_cursor())  # int(305 * 72/720), int(209 * 72/720)
    np.testing.assert_array_equal(steps[0].frame_rgb, expected[:, :, ::-1])
    assert expected.any()
    # no cursor when the GUI is closed
    steps = list(c.iter_contractor_steps([bg], [line(keys=["e"], gui=False, x=305.0, y=209.0)]))
    assert not steps[0].frame_rgb.any()


def _write_mp4(path, video_bgr, codec):
    import av
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=20)
        stream.width, stream.height, stream.pix_fmt = video_bgr.shape[2], video_bgr.shape[1], "yuv420p"
        for f in video_bgr:
            for p in stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_pyav_decoding_matches_opencv_reader(tmp_path, codec):
    video = np.stack(frames(4, 72, 128))
    path = tmp_path / f"v_{codec}.mp4"
    _write_mp4(path, video, codec)
    ours = list(c.iter_video_frames_bgr(path))
    cap = cv2.VideoCapture(str(path))
    theirs = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        theirs.append(f)
    cap.release()
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_load_from_mp4_and_jsonl_paths(tmp_path):
    video = np.stack(frames(3, 72, 128))
    _write_mp4(tmp_path / "ep.mp4", video, "libx264")
    (tmp_path / "ep.jsonl").write_text("\n".join(json.dumps(line(keys=["w"], dx=7.0 * i)) for i in range(3)) + "\n")
    ep = c.load_contractor_episode(tmp_path / "ep.mp4", tmp_path / "ep.jsonl", mineclip_size=(16, 32))
    assert ep.frames.shape == (3, 128, 128, 3) and ep.frames_mineclip.shape == (3, 3, 16, 32)
    assert ep.env_actions["camera"][:, 1].tolist() == [0, 1, 2]
    assert set(ep.env_actions) == set(ENV_BUTTONS) | {"camera"}
    frames_out, env_actions, policy_actions, *_ = ep  # unpacks like a tuple
    assert policy_actions["buttons"].shape == (3,)


def test_corrupt_video_is_a_user_error(tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(b"not a video at all" * 10)
    with pytest.raises(c.ContractorDataError, match="bad.mp4"):
        c.load_contractor_episode(path, [line(keys=["w"])])
    with pytest.raises(c.ContractorDataError, match="no such video"):
        list(c.iter_video_frames_bgr(tmp_path / "none.mp4"))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r["keyboard"].__setitem__("keys", None),
        lambda r: r["mouse"].__setitem__("dx", "far"),
        lambda r: r["mouse"].__setitem__("buttons", 3),
        lambda r: r.__setitem__("mouse", [1, 2]),
        lambda r: r["mouse"].__setitem__("x", "left"),
        lambda r: r.__setitem__("hotbar", "3"),
    ],
)
def test_malformed_fields_are_contractor_errors(mutate):
    bad = line(keys=["e"], gui=True)
    mutate(bad)
    with pytest.raises(c.ContractorDataError, match=r"<jsonl>:2: "):
        c.load_contractor_episode(frames(2), [line(keys=["w"]), bad])


def test_non_utf8_jsonl(tmp_path):
    path = tmp_path / "ep.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(c.ContractorDataError, match="not UTF-8"):
        c.load_contractor_episode(frames(1), path)
