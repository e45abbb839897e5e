"""Round trip of the recorded contractor sample: jsonl + a video of the case's frames -> store ->
loader -> the policy actions (and agent frames) the original code produced."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
from conftest import case_params, require_case

from aimc.data.converters.base import run_jobs
from aimc.data.converters.contractor import convert_recording, find_recordings
from aimc.data.loader import SequenceDataset, make_loader
from aimc.data.relabel import NONE_EMBED_OFFSET
from aimc.data.store import EpisodeStore, VideoSettings


def write_lossless_mp4(path, frames_bgr: np.ndarray) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=20)
        s.width, s.height = frames_bgr.shape[2], frames_bgr.shape[1]
        s.pix_fmt = "rgb24"
        s.options = {"crf": "0", "preset": "ultrafast"}
        for f in frames_bgr:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[..., ::-1]), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("case", case_params("tiny.model"))
def test_contractor_sample_round_trip(case, tmp_path):
    case = require_case(case, "tiny.model")
    ref = np.load(case / "actions.npz")
    src = tmp_path / "rec"
    src.mkdir()
    write_lossless_mp4(src / "sample.mp4", ref["contractor_video_bgr"])
    shutil.copy(case / "contractor_sample.jsonl", src / "sample.jsonl")

    store = EpisodeStore(tmp_path / "store", video=VideoSettings(crf=0))
    jobs, pre = find_recordings(src)
    summary = run_jobs(jobs, convert_recording, store, workers=1, progress=False, pre_failed=pre)
    assert summary.converted == 1 and not summary.failed, summary.failed

    ep = store.open("sample")
    n = len(ref["contractor_kept_line_index"])
    assert ep.num_frames == n
    acts = ep.actions()
    np.testing.assert_array_equal(acts["buttons"], ref["contractor_agent_joint_buttons"])
    np.testing.assert_array_equal(acts["camera"], ref["contractor_agent_joint_camera"])
    np.testing.assert_array_equal(acts["env_buttons"], ref["contractor_env_buttons"])
    np.testing.assert_array_equal(acts["env_camera"], ref["contractor_env_camera"])
    np.testing.assert_array_equal(acts["env_line_index"], ref["contractor_kept_line_index"])
    np.testing.assert_array_equal(ep.frames(), ref["contractor_frames_agent_rgb"])

    # the loader: the original's first window starts at frame 15 (no goal embedding before)
    T = n - NONE_EMBED_OFFSET
    ds = SequenceDataset([store.root], T=T, min_btwn_goals=NONE_EMBED_OFFSET, max_btwn_goals=NONE_EMBED_OFFSET + 1,
                         window="chunks", require_embeddings=False, num_items=2, min_episode_frames=n)
    batch = next(iter(make_loader(ds, batch_size=2)))
    for row in range(2):
        np.testing.assert_array_equal(batch["actions"]["buttons"][row].numpy(), ref["contractor_agent_joint_buttons"][NONE_EMBED_OFFSET:])
        np.testing.assert_array_equal(batch["actions"]["camera"][row].numpy(), ref["contractor_agent_joint_camera"][NONE_EMBED_OFFSET:])
        np.testing.assert_array_equal(batch["img"][row].numpy(), ref["contractor_frames_agent_rgb"][NONE_EMBED_OFFSET:])
    assert batch["first"][:, 0].all() and not batch["first"][:, 1:].any()
