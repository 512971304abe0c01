"""Question in, token ids out (and answer ids back to text), from a bundle's ``tokenizer.json``.

A thin wrapper over ``tokenizers.Tokenizer`` that reproduces what transformers does with the same
file, without importing transformers:

* :meth:`QuestionTokenizer.encode` == ``tokenizer(question, truncation=True, max_length=n).input_ids``
* :meth:`QuestionTokenizer.decode` == ``tokenizer.decode(ids, skip_special_tokens=True,
  clean_up_tokenization_spaces=...)``

Example:
    >>> tok = QuestionTokenizer("bundle/tokenizer.json")  # doctest: +SKIP
    >>> tok.encode("Is there a lesion?", max_tokens=32)              # doctest: +SKIP
    array([  2, 115, 118,   7, 116,  63,   3])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgevqa.errors import BundleError, InputError

# transformers' PreTrainedTokenizerBase.clean_up_tokenization (5.x), applied after the Rust decoder.
_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    """Remove the spaces a WordPiece decode leaves before punctuation and English contractions."""
    for old, new in _CLEANUP:
        text = text.replace(old, new)
    return text


def _load(path: Path) -> Tokenizer:
    if not path.is_file():
        raise BundleError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
        raise BundleError(f"{path} is not a valid tokenizer.json ({e})") from None


class QuestionTokenizer:
    """Encode questions and decode answers with a HF fast-tokenizer file (BERT-style WordPiece)."""

    def __init__(self, source: str | Path | Tokenizer) -> None:
        """Load ``source`` (a ``tokenizer.json`` path) or wrap an already built ``tokenizers.Tokenizer``.

        Raises:
            BundleError: the file is missing or is not a tokenizers file.
        """
        tok = source if isinstance(source, Tokenizer) else _load(Path(source))
        # A tokenizer.json saved with padding or truncation enabled would pad or cut every question
        # to the saved length; encode() applies the caller's max_tokens itself instead.
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        self._num_special = tok.num_special_tokens_to_add(is_pair=False)

    def encode(self, question: str, max_tokens: int) -> np.ndarray:
        """Tokenize a question as ``[CLS] ... [SEP]``, truncated to ``max_tokens`` ids in total.

        Args:
            question: the user's question; the tokenizer's normalizer lowercases it etc.
            max_tokens: the most ids to return, special tokens included (the final [SEP] is kept).

        Returns:
            int64 array of shape ``[n]``, ``n <= max_tokens``.

        Raises:
            InputError: the question is empty or has nothing the tokenizer can read.
            ValueError: ``max_tokens`` leaves no room for a question token.
        """
        if max_tokens <= self._num_special:
            raise ValueError(
                f"max_tokens must be > {self._num_special} (the special tokens), got {max_tokens}"
            )
        if not question.strip():
            raise InputError("the question is empty")
        enc = self._tok.encode(question, add_special_tokens=False)
        if not enc.ids:
            raise InputError(f"the question {question!r} has no text the tokenizer can read")
        # Same order as transformers: cut the question to leave room for the specials, then add them.
        enc.truncate(max_tokens - self._num_special)
        enc = self._tok.post_process(enc)
        return np.asarray(enc.ids, dtype=np.int64)

    def ids(self, text: str) -> list[int]:
        """``text`` tokenized whole, special-token strings in it (``<image>``, ``<bos>``) matched as
        tokens and nothing added: what a prefix LM's processor does with its prompt string."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def ids_with_specials(self, text: str) -> list[int]:
        """``text`` tokenized with the tokenizer's special tokens (bos ...), nothing cut: what
        ``tokenizer(text).input_ids`` gives (a BLIP-2 processor's prompt after the image tokens)."""
        return list(self._tok.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: Sequence[int], clean_up_tokenization_spaces: bool = True) -> str:
        """Turn ids back into text, skipping special tokens ([CLS], [SEP], [PAD], [DEC], ...).

        Args:
            ids: token ids, e.g. a generated answer (a numpy array works too).
            clean_up_tokenization_spaces: apply transformers' ``clean_up_tokenization`` afterwards;
                pass the tokenizer's own setting (``TextSpec.clean_up_tokenization_spaces``) to match HF.

        Returns:
            The text ``PreTrainedTokenizerFast.decode(ids, skip_special_tokens=True)`` gives.
        """
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=True)
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def token_id(self, token: str) -> int:
        """The id of ``token`` (e.g. ``"[SEP]"``).

        Raises:
            BundleError: the vocabulary has no such token.
        """
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise BundleError(f"the tokenizer has no token {token!r}")
        return tid

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)


def is_text(value: str) -> bool:
    """True when ``value`` is text UTF-8 can encode: JSON's ``"\\ud800"`` decodes to a lone surrogate,
    which the tokenizer, a file write and a JSON response all refuse."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
