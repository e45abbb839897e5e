"""Offline CLIP tokenizer: row layout, truncation, caching, shipped vocabulary, no network."""

from __future__ import annotations

import socket

import pytest
import torch

from aimc.models import tokenizer as tk


@pytest.fixture(scope="module")
def tok() -> tk.ClipTokenizer:
    return tk.ClipTokenizer()


def test_row_layout(tok):
    ids = tok.encode("open the inventory")
    row = tok.tokenize("open the inventory")
    assert row.shape == (1, 77) and row.dtype == torch.int64
    n = len(ids)
    assert row[0, 0] == tk.SOT_ID and row[0, n + 1] == tk.EOT_ID
    assert row[0, 1 : n + 1].tolist() == ids
    assert (row[0, n + 2 :] == tk.PAD_ID).all()  # padding is 0, not EOT


def test_truncation_keeps_eot(tok):
    long_text = " ".join(["wood"] * 200)
    row = tok.tokenize([long_text])[0]
    assert len(tok.encode(long_text)) > 75
    assert row[0] == tk.SOT_ID and row[76] == tk.EOT_ID and int(row.argmax()) == 76
    assert row[1:76].tolist() == tok.encode(long_text)[:75]


def test_empty_and_batch(tok):
    rows = tok.tokenize(["", "a b", "  "])
    assert rows.shape == (3, 77)
    assert rows[0, :3].tolist() == [tk.SOT_ID, tk.EOT_ID, 0]
    assert rows[2, :3].tolist() == [tk.SOT_ID, tk.EOT_ID, 0]


def test_case_and_whitespace_normalised(tok):
    assert tok.encode("Chop   The\tTREE") == tok.encode("chop the tree")


def test_decode_roundtrip(tok):
    assert tok.decode(tok.tokenize(["mine some stone"])[0].tolist()).startswith("mine some stone")


def test_vocabulary_shipped_and_checked():
    path = tk.bpe_file_path()
    assert path.is_file() and (path.parent / "CLIP_BPE_LICENSE.txt").is_file()
    vocab, merges = tk.load_vocab_and_merges()
    assert len(vocab) == tk.VOCAB_SIZE and len(merges) == tk.N_MERGES
    assert vocab["<|startoftext|>"] == tk.SOT_ID and vocab["<|endoftext|>"] == tk.EOT_ID
    assert vocab["!"] == 0


def test_damaged_vocabulary_is_refused(tmp_path):
    from aimc.errors import UserError

    bad = tmp_path / tk.BPE_FILE
    bad.write_bytes(b"not the file")
    with pytest.raises(UserError, match="sha256"):
        tk.load_vocab_and_merges(bad)


def test_built_once_per_process():
    assert tk.build_fast_tokenizer() is tk.build_fast_tokenizer()


def test_construction_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    tk.build_fast_tokenizer.cache_clear()
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    rows = tk.ClipTokenizer().tokenize(["go explore"])
    assert rows[0, :4].tolist() == [tk.SOT_ID, *tk.ClipTokenizer().encode("go explore"), tk.EOT_ID][:4]
