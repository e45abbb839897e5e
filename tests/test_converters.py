"""Converters on small synthetic inputs: contractor (folder + download from a local HTTP
server), STEVE-1 folders, custom data; a corrupt input among good ones is reported, the rest
converts; resume skips what is done."""

from __future__ import annotations

import functools
import http.server
import json
import pickle
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from aimc.actions.minecraft import ENV_BUTTONS, env_to_policy
from aimc.cli import main as cli_main
from aimc.data.converters.base import QUARANTINE_FILE, run_jobs
from aimc.data.converters.contractor import convert_recording, download_recordings, find_recordings
from aimc.data.converters.custom import convert_custom_episode, find_custom_episodes
from aimc.data.converters.steve1 import convert_episode_folder, find_episodes
from aimc.data.store import EpisodeStore


def write_video(path: Path, frames: np.ndarray, codec: str = "mpeg4") -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=20)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def frames_of(n: int, h: int = 72, w: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.repeat(np.repeat(rng.integers(0, 255, (n, h // 8, w // 8, 3), dtype=np.uint8), 8, 1), 8, 2)
    return base


def line(keys=(), dx=0.0, dy=0.0, buttons=(), hotbar=0, gui=False) -> str:
    return json.dumps({
        "mouse": {"x": 640.0, "y": 360.0, "dx": dx, "dy": dy, "buttons": list(buttons), "newButtons": []},
        "keyboard": {"keys": [f"key.keyboard.{k}" for k in keys]},
        "isGuiOpen": gui, "hotbar": hotbar,
    })


def contractor_lines(n: int) -> list[str]:
    out = []
    for i in range(n):
        if i % 4 == 3:
            out.append(line())  # null line: dropped
        else:
            out.append(line(keys=("w",) if i % 2 else ("a", "space"), dx=float(10 * (i % 3)), buttons=(0,) if i % 5 == 0 else ()))
    return out


def make_recording(folder: Path, name: str, n: int = 12, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / f"{name}.mp4", frames_of(n, seed=seed))
    (folder / f"{name}.jsonl").write_text("\n".join(contractor_lines(n)) + "\n")


def test_contractor_folder_with_corrupt_files(tmp_path):
    src = tmp_path / "rec"
    make_recording(src, "good-a", seed=1)
    make_recording(src / "sub", "good-b", n=16, seed=2)
    make_recording(src, "bad-video")
    (src / "bad-video.mp4").write_bytes(b"\x00\x00\x00 not a video at all" * 10)
    make_recording(src, "bad-jsonl")
    (src / "bad-jsonl.jsonl").write_text(contractor_lines(3)[0] + "\n{broken\n")
    make_recording(src, "short-video", n=12)
    write_video(src / "short-video.mp4", frames_of(6))  # 12 lines, 6 frames
    write_video(src / "lonely.mp4", frames_of(3))

    jobs, pre = find_recordings(src)
    assert [j.episode_id for j in jobs] == ["bad-jsonl", "bad-video", "good-a", "good-b", "short-video"]
    store = EpisodeStore(tmp_path / "store")
    summary = run_jobs(jobs, convert_recording, store, workers=2, progress=False, pre_failed=pre)
    assert summary.converted == 2 and store.episode_ids() == ["good-a", "good-b"]
    reasons = {r.episode_id: r.reason for r in summary.failed}
    assert set(reasons) == {"bad-video", "bad-jsonl", "short-video", "lonely"}
    assert "not valid JSON" in reasons["bad-jsonl"] and "count mismatch" in reasons["short-video"]
    assert "missing file" in reasons["lonely"]
    quarantine = json.loads((store.root / QUARANTINE_FILE).read_text())
    assert {q["episode_id"] for q in quarantine} == set(reasons)

    ep = store.open("good-a")
    kept = [i for i in range(12) if i % 4 != 3]
    assert ep.num_frames == len(kept) and ep.frame_shape == (128, 128, 3)
    acts = ep.actions()
    np.testing.assert_array_equal(acts["env_line_index"], kept)
    expected = env_to_policy(acts["env_buttons"].astype(np.int64), acts["env_camera"])
    np.testing.assert_array_equal(acts["buttons"], expected["buttons"])
    np.testing.assert_array_equal(acts["camera"], expected["camera"])
    assert acts["env_buttons"][0, ENV_BUTTONS.index("left")] == 1 and acts["env_buttons"][1, ENV_BUTTONS.index("forward")] == 1
    assert ep.meta["converter"] == "contractor" and ep.meta["policy_heads"] == ["buttons", "camera"]

    # resume: nothing converted again; a fixed file converts and leaves the quarantine list
    make_recording(src, "bad-jsonl")
    again = run_jobs(find_recordings(src)[0], convert_recording, store, workers=1, progress=False)
    assert again.skipped == 2 and again.converted == 1
    assert "bad-jsonl" not in {q["episode_id"] for q in json.loads((store.root / QUARANTINE_FILE).read_text())}


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


def test_contractor_download_from_index(http_root, tmp_path, capsys):
    root, url = http_root
    make_recording(root / "data" / "6.13", "cheeky-a", seed=3)
    make_recording(root / "data" / "6.13", "cheeky-b", seed=4)
    (root / "data" / "6.13" / "gone.jsonl").write_text(line(keys=("w",)) + "\n")  # its mp4 is missing on the server
    index = {"basedir": url, "relpaths": ["data/6.13/cheeky-a.mp4", "data/6.13/gone.mp4", "data/6.13/cheeky-b.mp4"]}
    (root / "index.json").write_text(json.dumps(index))

    jobs, failed = download_recordings(url + "index.json", tmp_path / "dl", limit=2)
    assert [j.episode_id for j in jobs] == ["cheeky-a"] and failed[0].episode_id == "gone"
    assert "download failed" in failed[0].reason and (tmp_path / "dl" / "cheeky-a.jsonl").is_file()

    rc = cli_main(["data", "convert", "contractor", "--index", url + "index.json", str(tmp_path / "store"),
                   "--download-dir", str(tmp_path / "dl"), "--workers", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 converted" in out and "1 failed" in out
    assert EpisodeStore(tmp_path / "store").episode_ids() == ["cheeky-a", "cheeky-b"]


def make_steve1_episode(d: Path, n: int = 20, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, list, list]:
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    write_video(d / "frames.mp4", frames_of(n, 128, 128, seed))
    actions = []
    for i in range(n):
        a = {k: np.array(int(rng.random() < 0.2)) for k in ENV_BUTTONS}
        a["camera"] = np.array([float(rng.integers(-10, 11)), float(rng.normal() * 3)])
        actions.append(a)
    embeds = [None] * 15 + [rng.normal(size=(1, dim)).astype(np.float32) for _ in range(n - 15)]
    (d / "actions.pkl").write_bytes(pickle.dumps(actions))
    (d / "embeds_attn.pkl").write_bytes(pickle.dumps(embeds))
    (d / "len.txt").write_text(str(n))
    (d / "metadata.json").write_text(json.dumps({"agent": "test"}))
    return frames_of(n, 128, 128, seed), actions, embeds


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_steve1_folders(tmp_path):
    src = tmp_path / "steve1"
    frames, actions, embeds = make_steve1_episode(src / "ep_good", seed=1)
    make_steve1_episode(src / "ep_evil", seed=2)
    (src / "ep_evil" / "actions.pkl").write_bytes(pickle.dumps([_Evil()]))
    make_steve1_episode(src / "ep_missing", seed=3)
    (src / "ep_missing" / "embeds_attn.pkl").unlink()
    make_steve1_episode(src / "ep_short", seed=4)
    (src / "ep_short" / "len.txt").write_text("25")

    jobs, pre = find_episodes(src)
    store = EpisodeStore(tmp_path / "store")
    summary = run_jobs(jobs, convert_episode_folder, store, workers=1, progress=False, pre_failed=pre)
    assert store.episode_ids() == ["ep_good"]
    reasons = {r.episode_id: r.reason for r in summary.failed}
    assert "refused" in reasons["ep_evil"] and "missing file" in reasons["ep_missing"] and "mismatch" in reasons["ep_short"]

    ep = store.open("ep_good")
    assert ep.num_frames == 20 and ep.meta["source"]["metadata"] == {"agent": "test"}
    emb, valid = ep.embeddings()
    assert not valid[:15].any() and valid[15:].all() and emb.shape == (20, 8)
    np.testing.assert_allclose(np.asarray(emb[15:], np.float32), np.concatenate(embeds[15:]), atol=2e-3)
    buttons = np.array([[int(a[k]) for k in ENV_BUTTONS] for a in actions])
    camera = np.array([a["camera"] for a in actions])
    expected = env_to_policy(buttons, camera)
    np.testing.assert_array_equal(ep.actions()["buttons"], expected["buttons"])
    np.testing.assert_array_equal(ep.actions()["camera"], expected["camera"])
    # frames: the mpeg4 source decoded, then stored near-losslessly
    mse = np.mean((ep.frames().astype(float) - decoded(src / "ep_good" / "frames.mp4")) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 40


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_custom_data(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "mine"
    # 1: frames folder + MineRL jsonl + annotations
    d = src / "chop_tree"
    (d / "frames").mkdir(parents=True)
    fr = frames_of(6, 96, 160, seed=5)
    for i, f in enumerate(fr):
        Image.fromarray(f).save(d / "frames" / f"{i:06d}.png")
    acts = [{"forward": 1, "camera": [0.0, 2.5]}, {"attack": 1}, {}, {"jump": 1, "forward": 1}, {"hotbar.3": 1}, {"camera": [-5, 0]}]
    (d / "actions.jsonl").write_text("\n".join(json.dumps(a) for a in acts) + "\n")
    (d / "annotations.json").write_text(json.dumps([{"start": 0, "end": 4, "text": "chop a tree"}]))
    # 2: video + discrete npz (the built-in world's form)
    d2 = src / "world_ep"
    d2.mkdir()
    write_video(d2 / "play.mp4", frames_of(5, 64, 64, seed=6))
    np.savez(d2 / "actions.npz", action=np.array([0, 3, 16, 2, 2]))
    # 3: broken jsonl, 4: count mismatch, 5: no actions
    d3 = src / "broken"
    (d3 / "frames").mkdir(parents=True)
    Image.fromarray(fr[0]).save(d3 / "frames" / "0.png")
    (d3 / "actions.jsonl").write_text("{oops\n")
    d4 = src / "mismatch"
    d4.mkdir()
    write_video(d4 / "v.mp4", frames_of(4, 64, 64))
    (d4 / "actions.jsonl").write_text(json.dumps({"forward": 1}) + "\n")
    d5 = src / "noactions"
    d5.mkdir()
    write_video(d5 / "v.mp4", frames_of(4, 64, 64))

    rc = cli_main(["data", "convert", "custom", str(src), str(tmp_path / "store"), "--workers", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 converted" in out and "3 failed" in out
    store = EpisodeStore(tmp_path / "store")
    assert store.episode_ids() == ["chop_tree", "world_ep"]
    ep = store.open("chop_tree")
    assert ep.frame_shape == (128, 128, 3) and ep.annotations()[0]["text"] == "chop a tree"
    env = ep.actions()["env_buttons"]
    assert env[0, ENV_BUTTONS.index("forward")] == 1 and env[4, ENV_BUTTONS.index("hotbar.3")] == 1
    np.testing.assert_allclose(ep.actions()["env_camera"][0], [0.0, 2.5])
    w = store.open("world_ep")
    assert w.frame_shape == (64, 64, 3) and w.meta["policy_heads"] == ["action"]
    np.testing.assert_array_equal(w.actions()["action"], [0, 3, 16, 2, 2])
    q = {x["episode_id"]: x["reason"] for x in json.loads((store.root / QUARANTINE_FILE).read_text())}
    assert "not valid JSON" in q["broken"] and "mismatch" in q["mismatch"] and "missing file actions" in q["noactions"]


def test_check_stats_split_commands(tmp_path, capsys):
    src = tmp_path / "rec"
    for i in range(4):
        make_recording(src, f"r{i}", n=12 + 4 * i, seed=i)
    store_dir = str(tmp_path / "store")
    assert cli_main(["data", "convert", "contractor", str(src), store_dir, "--workers", "1", "--quiet"]) == 0
    assert cli_main(["data", "check", store_dir, "--deep"]) == 0
    assert cli_main(["data", "split", store_dir, "--val-frames", "10", "--seed", "1"]) == 0
    assert cli_main(["data", "stats", store_dir, "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{"):])
    assert stats["episodes"] == 4 and stats["splits"]["val"]["frames"] >= 10
    assert stats["splits"]["train"]["episodes"] + stats["splits"]["val"]["episodes"] == 4
    chunk = next((Path(store_dir) / "r1" / "video").iterdir())
    chunk.write_bytes(chunk.read_bytes()[:50])
    assert cli_main(["data", "check", store_dir]) == 1
    assert "r1" in capsys.readouterr().out


def test_killed_conversion_leaves_whole_episodes_and_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "mine"
    rng = np.random.default_rng(0)
    for i in range(4):
        d = src / f"ep{i}"
        d.mkdir(parents=True)
        write_video(d / "v.mp4", rng.integers(0, 255, (600, 32, 32, 3), dtype=np.uint8))
        np.savez(d / "actions.npz", action=rng.integers(0, 17, 600))
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "aimc.cli", "data", "convert", "custom", str(src), str(out), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if any((out / f"ep{i}" / "meta.json").is_file() for i in range(4)) and list(out.glob(".tmp-*")):
                break  # one episode done, the next one half written
            time.sleep(0.003)
        assert proc.poll() is None, "the conversion finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = EpisodeStore(out)
    done = store.episode_ids()
    assert 1 <= len(done) < 4 and all(store.open(e).verify(deep=True) == [] for e in done)
    again = run_jobs(find_custom_episodes(src)[0], convert_custom_episode, store, workers=1, progress=False)
    assert again.skipped == len(done) and again.converted == 4 - len(done) and not again.failed
    assert store.episode_ids() == [f"ep{i}" for i in range(4)] and not list(out.glob(".tmp-*"))
