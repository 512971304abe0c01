"""Answer questions about images from a bundle: onnxruntime + numpy + tokenizers + pillow.

Example:
    >>> from edgevqa.runtime import VQAPipeline
    >>> vqa = VQAPipeline.from_bundle("bundle")                    # doctest: +SKIP
    >>> vqa.ask("chest.png", "is there a nodule?").text            # doctest: +SKIP
    'yes'
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.bundle import TOKENIZER, Manifest, load_manifest
from edgevqa.errors import BundleError, InputError
from edgevqa.runtime.decoding import DecodingOptions, greedy
from edgevqa.runtime.images import load_image
from edgevqa.runtime.preprocess import preprocess
from edgevqa.runtime.session import make_session
from edgevqa.runtime.tokenizer import QuestionTokenizer

SUPPORTED_FAMILIES = ("blip-vqa",)
GRAPHS = ("vision_encoder", "question_encoder", "decoder_step")
MAX_QUESTION_CHARS = 2000


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    timings_ms: dict[str, float] = field(default_factory=dict)


class VQAPipeline:
    def __init__(
        self,
        bundle: Path,
        manifest: Manifest,
        precision: str,
        sessions: dict[str, Any],
        tokenizer: QuestionTokenizer,
    ):
        self.bundle, self.manifest, self.precision = bundle, manifest, precision
        self.sessions, self.tokenizer = sessions, tokenizer
        t = manifest.text
        self.options = DecodingOptions(
            bos_id=t.bos_id, eos_id=t.sep_id, pad_id=t.pad_id, max_new_tokens=t.max_answer_tokens
        )

    @classmethod
    def from_bundle(
        cls, bundle: str | Path, precision: str | None = None, threads: int = 0, verify: bool = True
    ) -> VQAPipeline:
        """Load and verify a bundle.

        Args:
            bundle: bundle directory written by ``edgevqa export``.
            precision: which shipped precision to run (default: the bundle's default).
            threads: intra-op threads (0: all cores).
            verify: check every file against its sha256 in the manifest first.

        Raises:
            BundleError: missing, tampered, another family or schema.
        """
        bundle = Path(bundle)
        m = load_manifest(bundle, precision=precision, verify=verify)
        precision = precision or m.default_precision
        if m.family not in SUPPORTED_FAMILIES:
            raise BundleError(
                f"bundle family {m.family!r} is not supported by this runtime ({SUPPORTED_FAMILIES})"
            )
        sessions = {}
        for name in GRAPHS:
            try:
                sess = make_session(m.graph_path(bundle, precision, name), threads)
            except KeyError:
                raise BundleError(f"bundle has no {name} graph for precision {precision}") from None
            except Exception as e:  # onnxruntime raises its own types for unreadable graphs
                raise BundleError(f"cannot load {name} ({precision}): {str(e).splitlines()[0]}") from None
            expected = m.graphs[name]
            got = tuple(i.name for i in sess.get_inputs())
            if set(got) != set(expected.inputs):
                raise BundleError(f"{name} graph inputs {got} do not match the manifest {expected.inputs}")
            sessions[name] = sess
        return cls(bundle, m, precision, sessions, QuestionTokenizer(bundle / TOKENIZER))

    # ------------------------------------------------------------------------------------------

    def encode_image(self, image: Any) -> np.ndarray:
        """image_embeds [1, N, D] for a path, bytes or PIL image."""
        img = image if hasattr(image, "mode") else load_image(image)
        pixels = preprocess(img, self.manifest.image)
        return self.sessions["vision_encoder"].run(None, {"pixel_values": pixels})[0]

    def question_ids(self, question: str) -> np.ndarray:
        if len(question) > MAX_QUESTION_CHARS:
            raise InputError(
                f"the question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}"
            )
        return self.tokenizer.encode(question, self.manifest.text.max_question_tokens)[None, :]

    def answer_from_embeds(
        self, image_embeds: np.ndarray, question: str
    ) -> tuple[list[int], dict[str, float]]:
        """Answer token ids (no bos; [SEP] kept when produced) and per-stage timings."""
        return self._decode(image_embeds, self.question_ids(question))

    def _decode(
        self,
        image_embeds: np.ndarray,
        ids: np.ndarray,
        options: DecodingOptions | None = None,
    ) -> tuple[list[int], dict[str, float]]:
        t0 = time.perf_counter()
        cross_k, cross_v = self.sessions["question_encoder"].run(
            None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "image_embeds": image_embeds}
        )
        t1 = time.perf_counter()
        dec = self.sessions["decoder_step"]

        def step(input_ids: np.ndarray, past_k: np.ndarray, past_v: np.ndarray):
            return dec.run(
                None,
                {
                    "input_ids": input_ids,
                    "past_key": past_k,
                    "past_value": past_v,
                    "cross_key": cross_k,
                    "cross_value": cross_v,
                },
            )

        empty = np.zeros((*cross_k.shape[:3], 0, cross_k.shape[4]), dtype=cross_k.dtype)
        out = greedy(step, empty, batch=1, opts=options or self.options)[0]
        t2 = time.perf_counter()
        return out, {"question_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1)}

    def ask(self, image: Any, question: str, options: DecodingOptions | None = None) -> Answer:
        """Answer ``question`` about ``image`` (path, bytes or PIL image) greedily.

        Args:
            image: a path, the file's bytes, or a PIL image.
            question: the question; empty or whitespace-only raises InputError.
            options: decoding limits (default: the bundle's max answer length).
        """
        t0 = time.perf_counter()
        ids = self.question_ids(question)  # fail on a bad question before decoding the image
        img = image if hasattr(image, "mode") else load_image(image)
        pixels = preprocess(img, self.manifest.image)
        t1 = time.perf_counter()
        embeds = self.sessions["vision_encoder"].run(None, {"pixel_values": pixels})[0]
        t2 = time.perf_counter()
        out, timings = self._decode(embeds, ids, options)
        text = self.tokenizer.decode(out, self.manifest.text.clean_up_tokenization_spaces)
        timings = {
            "preprocess_ms": 1e3 * (t1 - t0),
            "vision_ms": 1e3 * (t2 - t1),
            **timings,
            "total_ms": 1e3 * (time.perf_counter() - t0),
        }
        return Answer(text, out, {k: round(v, 3) for k, v in timings.items()})
