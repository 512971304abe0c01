"""A small BERT-style uncased WordPiece tokenizer for BLIP models trained from scratch.

The vocabulary is laid out so that nothing becomes ``[UNK]`` for plain ASCII text:

* specials ``[PAD]``=0, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, ``[DEC]`` (BLIP's decoder start
  token, registered as ``bos_token``), ``[ENC]`` (BLIP's encoder token, an extra special token);
* every single character ``a-z``, ``0-9`` and ASCII punctuation;
* ``##a``..``##z``, ``##0``..``##9``, so an unseen word splits into known pieces. Punctuation gets no
  ``##`` form: BERT's pre-tokenizer always splits punctuation into words of its own, so a
  ``##,`` piece could never be used;
* the given words, normalized and pre-tokenized exactly as the tokenizer will do it (so ``"X-ray"``
  contributes ``x``, ``-`` and ``ray``), deduplicated and sorted so the ids are deterministic.

Example:
    >>> tok = build_wordpiece_tokenizer(["lesion", "x-ray"], Path("runs/tok"))  # doctest: +SKIP
    >>> tok.bos_token_id
    5
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import normalizers, pre_tokenizers

if TYPE_CHECKING:
    from transformers import BertTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")
ALNUM = string.ascii_lowercase + string.digits
PUNCTUATION = string.punctuation


def base_vocab() -> list[str]:
    """Specials, single characters and their ``##`` continuations, in id order."""
    return [*SPECIAL_TOKENS, *ALNUM, *PUNCTUATION, *(f"##{c}" for c in ALNUM)]


def word_pieces(words: Iterable[str]) -> set[str]:
    """The lowercased, accent-stripped, pre-tokenized pieces of ``words``: what BertTokenizer looks up."""
    # Same settings BertTokenizer(do_lower_case=True) builds, so a vocab entry is never unreachable.
    norm = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre = pre_tokenizers.BertPreTokenizer()
    return {piece for w in words for piece, _ in pre.pre_tokenize_str(norm.normalize_str(w))}


def build_wordpiece_tokenizer(words: Iterable[str], out_dir: Path) -> BertTokenizerFast:
    """Build, save and return an uncased WordPiece tokenizer over ``words``.

    Args:
        words: the words of the training corpus (questions and answers); any casing or punctuation.
        out_dir: where ``vocab.txt``, ``tokenizer.json`` and ``tokenizer_config.json`` are written.

    Returns:
        The tokenizer; ``bos_token_id`` is ``[DEC]``, ``pad_token_id`` is 0.
    """
    from transformers import BertTokenizerFast

    vocab = base_vocab()
    known = set(vocab)
    vocab += sorted(word_pieces(words) - known)
    tok = BertTokenizerFast(
        vocab={t: i for i, t in enumerate(vocab)},
        do_lower_case=True,
        bos_token="[DEC]",
        extra_special_tokens=["[ENC]"],
        # transformers 5 defaults this to False; BLIP's own tokenizer and TextSpec use True, so the
        # answers decoded here and in the runtime read the same ("it's", not "it ' s").
        clean_up_tokenization_spaces=True,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    # transformers 5 writes only tokenizer.json; vocab.txt is for humans and slow-tokenizer loaders.
    (out_dir / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8")
    return tok


def as_saved(tok: Any) -> Any:
    """``tok`` without the truncation and padding a call left on its fast backend, and so fit to save.

    A call such as ``tok(texts, truncation=True, max_length=9)`` sets the backend's truncation,
    and ``save_pretrained`` writes it into ``tokenizer.json``: whoever loads the saved model with
    plain ``tokenizers`` or transformers would cut every longer question at 9 tokens. Every place
    that saves a tokenizer goes through here.
    """
    backend = tok.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    return tok
