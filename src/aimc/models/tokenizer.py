"""CLIP byte-pair tokenizer for MineCLIP, built offline from a shipped vocabulary file.

MineCLIP tokenizes text with the Hugging Face *fast* CLIP tokenizer of
``openai/clip-vit-base-patch16``, which it downloads from the hub at run time. aimc builds
the same tokenizer from OpenAI's BPE merges file (``aimc/assets/bpe_simple_vocab_16e6.txt.gz``,
MIT, see ``CLIP_BPE_LICENSE.txt``) with the ``tokenizers`` library, so no network is ever
needed. Pipeline (identical to the hub's ``tokenizer.json``):

* normalizer: NFC -> every whitespace run becomes one space -> lowercase
* pre-tokenizer: the CLIP regex split (contractions, letter runs, single digits, runs of
  other symbols; whitespace dropped) -> byte-level mapping (no prefix space)
* model: BPE with ``</w>`` marking the end of each word; unknown -> ``<|endoftext|>``
* added tokens: ``<|startoftext|>`` (49406, matched after normalisation, so any case) and
  ``<|endoftext|>`` (49407, matched literally)

Rows are built as MineCLIP builds them: ``[49406] + ids[:75] + [49407]`` then **0**-padding
to 77 (0 is the token ``!``, not the tokenizer's pad id). Unlike OpenAI's ``SimpleTokenizer``
this does not run ``ftfy``/``html.unescape``; that is MineCLIP's behaviour.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from importlib import resources
from pathlib import Path

import torch

SOT_ID = 49406  # <|startoftext|>
EOT_ID = 49407  # <|endoftext|>
PAD_ID = 0  # MineCLIP pads with 0 (the token "!"), not with EOT
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
# merges 1..48894 of the file: 49408 = 2*256 byte symbols + 48894 merges + 2 special tokens
N_MERGES = VOCAB_SIZE - 2 * 256 - 2

# CLIP's word splitter as the hub's tokenizer.json has it: OpenAI's ``SimpleTokenizer``
# pattern *without* its special-token alternatives, so a literal "<|ENDOFTEXT|>" (which
# the case-sensitive added token does not catch) becomes the words "<|", "endoftext", "|>".
# Matched pieces are kept, everything between them (whitespace) is dropped.
_CLIP_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table (256 entries, in CLIP's order).

    Printable latin-1 bytes map to themselves; the other 68 bytes map to chr(256 + k) in order.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # CLIP's vocabulary lists the printable bytes first, then the remapped ones.
    order = printable + [b for b in range(256) if b not in printable]
    return {b: table[b] for b in order}


def bpe_file_path() -> Path:
    return Path(str(resources.files("aimc") / "assets" / BPE_FILE))


def load_vocab_and_merges(path: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read the BPE merges file and build CLIP's vocabulary (token -> id) and merge list."""
    path = Path(path) if path is not None else bpe_file_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: CLIP BPE vocabulary missing; it ships with aimc as package data "
            "(reinstall aimc, e.g. `pip install -e .`)"
        )
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if path.name == BPE_FILE and digest != BPE_SHA256:
        from aimc.errors import UserError

        raise UserError(f"{path}: sha256 {digest} is not the CLIP vocabulary's {BPE_SHA256}; the file is damaged")
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]  # line 0 is a version header
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{path}: built {len(vocab)} vocabulary entries, expected {VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def build_fast_tokenizer():
    """The ``tokenizers.Tokenizer`` equal to the hub's CLIP ``tokenizer.json`` (cached per process)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab, merges = load_vocab_and_merges()
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token="<|endoftext|>",
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            AddedToken("<|startoftext|>", special=True, normalized=True),
            AddedToken("<|endoftext|>", special=True, normalized=False),
        ]
    )
    return tok


class ClipTokenizer:
    """Offline CLIP tokenizer producing MineCLIP's 77-token rows.

    >>> ClipTokenizer().tokenize(["chop down the tree"])[0, :6].tolist()
    [49406, 16663, 1136, 518, 2677, 49407]
    """

    context_length = CONTEXT_LENGTH

    def __init__(self) -> None:
        self._tok = build_fast_tokenizer()

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT (MineCLIP's ``add_special_tokens=False``)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize(self, texts: list[str] | str) -> torch.Tensor:
        """``texts`` -> int64 (B, 77): SOT, the first 75 BPE ids, EOT, then 0-padding."""
        if isinstance(texts, str):
            texts = [texts]
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        rows = torch.full((len(texts), CONTEXT_LENGTH), PAD_ID, dtype=torch.long)  # (B, 77)
        for i, enc in enumerate(encodings):
            ids = [SOT_ID] + enc.ids[: CONTEXT_LENGTH - 2] + [EOT_ID]
            rows[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return rows

    def decode(self, ids: list[int]) -> str:
        """Text of a row (or of bare BPE ids): drops SOT, stops at EOT (so padding is ignored)."""
        ids = list(ids)
        if ids and ids[0] == SOT_ID:
            ids = ids[1:]
        if EOT_ID in ids:
            ids = ids[: ids.index(EOT_ID)]
        return self._tok.decode(ids).replace("</w>", " ").strip()


def tokenize(texts: list[str] | str) -> torch.Tensor:
    """Shortcut for ``ClipTokenizer().tokenize(texts)`` -> int64 (B, 77)."""
    return ClipTokenizer().tokenize(texts)
