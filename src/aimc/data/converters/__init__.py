"""Converters from the formats users have into the episode store (``aimc data convert ...``).

* :mod:`.contractor` - VPT contractor recordings (``.mp4`` + ``.jsonl``), local or downloaded.
* :mod:`.steve1`     - STEVE-1 episode folders (``frames.mp4``, ``actions.pkl``, ``embeds_attn.pkl``).
* :mod:`.custom`     - your own recordings: a video or a folder of frames + actions (+ annotations).

All of them run through :func:`aimc.data.converters.base.run_jobs`: parallel over episodes,
resumable, and a bad episode is reported (and listed in ``<store>/quarantine.json``) while the
rest converts.
"""
