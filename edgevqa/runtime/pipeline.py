"""Answer questions about images from a bundle: onnxruntime + numpy + tokenizers + pillow.

Example:
    >>> from edgevqa.runtime import VQAPipeline
    >>> vqa = VQAPipeline.from_bundle("bundle")                    # doctest: +SKIP
    >>> vqa.ask("chest.png", "is there a nodule?").text            # doctest: +SKIP
    'yes'
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.bundle import TOKENIZER, Manifest, check_graph, load_manifest, verify_files
from edgevqa.config import OPENVINO_VISION
from edgevqa.errors import BundleError, InputError
from edgevqa.families import registry
from edgevqa.runtime import backends, optcache
from edgevqa.runtime.decoding import DecodingOptions, SamplingOptions, greedy, sample
from edgevqa.runtime.images import load_image, read_source
from edgevqa.runtime.preprocess import preprocess
from edgevqa.runtime.session import make_session
from edgevqa.runtime.tokenizer import QuestionTokenizer, is_text

MAX_QUESTION_CHARS = 2000
MAX_HASHED_FILE_BYTES = 64 * 1024 * 1024  # larger files are decoded from disk, not held to be hashed


@dataclass(frozen=True)
class ImageEncoding:
    """What the vision graph computes once per image, as the family's runtime returned it (BLIP: the
    image's cross-attention keys and values for every text layer; PaliGemma: the projected image
    tokens)."""

    arrays: tuple[np.ndarray, ...]


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    timings_ms: dict[str, float] = field(default_factory=dict)
    image_cached: bool = False  # the image's encoding was reused (cache or earlier question): no vision pass
    scores: dict[str, float] | None = None  # rank mode: total log-probability of each candidate

    def to_json(self) -> dict[str, Any]:
        """The answer as one JSON record (``ask --json``, ``ask --batch``)."""
        row = {
            "answer": self.text,
            "token_ids": self.token_ids,
            "image_cached": self.image_cached,
            "timings_ms": self.timings_ms,
        }
        return row if self.scores is None else {**row, "scores": self.scores}


class VQAPipeline:
    def __init__(
        self,
        bundle: Path,
        manifest: Manifest,
        precision: str,
        sessions: dict[str, Any],
        tokenizer: QuestionTokenizer,
        image_cache: int = 8,
        backend: str = "cpu",
    ):
        self.bundle, self.manifest, self.precision = bundle, manifest, precision
        self.sessions, self.tokenizer, self.backend = sessions, tokenizer, backend
        # the family's graphs behind encode_image / prompt_ids / start / step (runtime/families/)
        self.model = registry.side(manifest.family, "runtime").Model(manifest, sessions, tokenizer)
        # follow-up questions about an image skip the vision graph: encodings keyed by a hash of
        # the pixels the encoder would see, so the same picture in another file or format hits too
        self._encodings: OrderedDict[str, ImageEncoding] = OrderedDict()
        self._files: OrderedDict[str, str] = OrderedDict()  # sha256 of a file's bytes -> pixel key
        self.image_cache = image_cache
        self.auto: dict[str, Any] | None = None  # how --precision auto chose (runtime/autotune.py)
        t = manifest.text
        self.options = DecodingOptions(eos_ids=t.eos, pad_id=t.pad_id, max_new_tokens=t.max_answer_tokens)

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path,
        precision: str | None = None,
        threads: int = 0,
        verify: bool = True,
        image_cache: int = 8,
        backend: str = "cpu",
    ) -> VQAPipeline:
        """Load and verify a bundle.

        Args:
            bundle: bundle directory written by ``edgevqa export``.
            precision: which shipped precision to run (default: the bundle's default, or its
                TensorRT engines when ``backend`` is auto and this machine can run them); ``"auto"``:
                usable engines, else the gated ONNX precision that answers fastest on this machine,
                measured once and cached (runtime/autotune.py; the decision is ``pipe.auto``).
            threads: intra-op threads (0: all cores).
            verify: check every file against its sha256 in the manifest first.
            image_cache: how many encoded images to keep for follow-up questions (0: none); each
                holds the image's keys and values for every text layer (blip-vqa-base: 42.5 MB).
            backend: cpu, cuda, tensorrt, trt-engine or auto (see runtime/backends.py).

        Raises:
            BundleError: missing, tampered, another family or schema, engines for another GPU.
            InputError: a backend this machine cannot run.
        """
        bundle = Path(bundle)
        m = load_manifest(bundle, verify=False)
        spec = registry.for_bundle(m.family)
        precision, backend = choose(m, precision, backend, backends.probe())
        auto = None
        if precision == "auto":
            from edgevqa.runtime import autotune

            def load(p: str) -> VQAPipeline:
                return cls.from_bundle(bundle, p, threads, verify, 0, backend)

            auto = autotune.choose(bundle, m, backend, threads, load)
            precision = auto["precision"]
        if verify:
            verify_files(bundle, m, precision)
        sessions = {
            name: _load_graph(bundle, m, precision, name, backend, threads, verify)
            for name in m.precisions[precision]
        }
        if missing := [g.name for g in spec.exported() if g.name not in sessions]:
            raise BundleError(f"bundle has no {', '.join(missing)} graph for precision {precision}")
        pipe = cls(
            bundle, m, precision, sessions, QuestionTokenizer(bundle / TOKENIZER), image_cache, backend
        )
        pipe.auto = auto
        return pipe

    # ------------------------------------------------------------------------------------------

    def encode_image(self, image: Any) -> ImageEncoding:
        """What the vision graph makes of a path, bytes or PIL image (cached by content)."""
        return self._encoding(image)[0]

    def forget_images(self) -> None:
        """Empty the cache of image encodings."""
        self._encodings.clear()
        self._files.clear()

    def _encoding(self, image: Any) -> tuple[ImageEncoding, bool]:
        """The encoding of ``image`` and whether it came from the cache."""
        src, file_key = self._read(image)
        return (src, True) if isinstance(src, ImageEncoding) else self._encode(src, file_key)

    def _read(self, image: Any) -> tuple[np.ndarray | ImageEncoding, str | None]:
        """The pixels of ``image`` and the sha256 of its file's bytes (None for a PIL image) - or,
        when the same bytes were encoded before, their cached encoding: a repeated file is then
        neither decoded nor preprocessed (~6 ms of a 384 px answer)."""
        spec = self.manifest.image
        if hasattr(image, "mode"):
            return preprocess(image, spec), None
        if self.image_cache <= 0:  # no cache: nothing to look up
            return preprocess(load_image(image), spec), None
        data = image if isinstance(image, bytes) else read_source(image, MAX_HASHED_FILE_BYTES)
        if data is None:  # too large to hold in memory for hashing: decoded from disk
            return preprocess(load_image(image), spec), None
        file_key = hashlib.sha256(data).hexdigest()
        pixel_key = self._files.get(file_key)
        if pixel_key is not None and (hit := self._encodings.get(pixel_key)) is not None:
            self._encodings.move_to_end(pixel_key)
            return hit, file_key
        name = None if isinstance(image, bytes) else str(image)
        return preprocess(load_image(data, name=name), spec), file_key

    def _encode(self, pixels: np.ndarray, file_key: str | None = None) -> tuple[ImageEncoding, bool]:
        def run() -> ImageEncoding:
            return ImageEncoding(self.model.encode_image(pixels))

        if self.image_cache <= 0:  # no cache: no reason to hash the pixels
            return run(), False
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        if file_key is not None:
            self._files[file_key] = digest
            while len(self._files) > 4 * self.image_cache:  # aliases only: a few bytes each
                self._files.popitem(last=False)
        if (hit := self._encodings.get(digest)) is not None:
            self._encodings.move_to_end(digest)
            return hit, True
        enc = self._encodings[digest] = run()
        while len(self._encodings) > self.image_cache:
            self._encodings.popitem(last=False)
        return enc, False

    def question_ids(self, question: str) -> np.ndarray:
        """The [1, T] ids the family's first graph takes for ``question`` (BLIP: the question;
        a prefix LM: its whole prompt).

        Raises:
            InputError: empty, too long, or not text the tokenizer can read.
        """
        if not is_text(question):
            raise InputError("the question is not valid text (it holds an unpaired UTF-16 surrogate)")
        if len(question) > MAX_QUESTION_CHARS:
            raise InputError(
                f"the question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}"
            )
        return self.model.prompt_ids(question)

    def _decode(
        self,
        image: ImageEncoding,
        ids: np.ndarray,
        options: DecodingOptions | None = None,
    ) -> tuple[list[int], dict[str, float]]:
        t0 = time.perf_counter()
        first, state = self.model.start(image.arrays, ids)
        t1 = time.perf_counter()
        marks: list[float] = []  # when each decoder call returned

        def step(new: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
            out = self.model.step(new, state)
            marks.append(time.perf_counter())
            return out

        out = greedy(step, first, state, options or self.options)[0]
        t2 = time.perf_counter()
        timings = {"question_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1)}
        timings["first_token_ms"] = 1e3 * (marks[0] - t0)  # the question's encoding or prefill + 1 step
        if len(marks) > 1:  # each further token
            timings["ms_per_token"] = 1e3 * (marks[-1] - marks[0]) / (len(marks) - 1)
        return out, timings

    def ask(self, image: Any, question: str, options: DecodingOptions | None = None) -> Answer:
        """Answer ``question`` about ``image`` (path, bytes or PIL image) greedily.

        Args:
            image: a path, the file's bytes, or a PIL image.
            question: the question; empty or whitespace-only raises InputError.
            options: decoding limits (default: the bundle's max answer length).
        """
        return self.ask_many(image, [question], options)[0]

    def ask_many(
        self,
        image: Any,
        questions: list[str],
        options: DecodingOptions | None = None,
    ) -> list[Answer]:
        """Answer several questions about one image; the image is read and encoded once."""
        t0 = time.perf_counter()
        ids = [self.question_ids(q) for q in questions]  # fail on a bad question before the image
        src, file_key = self._read(image)
        t1 = time.perf_counter()
        encoding, cached = (src, True) if isinstance(src, ImageEncoding) else self._encode(src, file_key)
        t2 = time.perf_counter()
        answers = []
        for i, q_ids in enumerate(ids):
            t3 = time.perf_counter()
            out, timings = self._decode(encoding, q_ids, options)
            text = self.tokenizer.decode(out, self.manifest.text.clean_up_tokenization_spaces)
            first = i == 0  # later questions reuse what the first one read and encoded
            if first:  # the first token of the first answer waits for the image too
                timings["first_token_ms"] += 1e3 * (t2 - t0)
            timings = {
                "preprocess_ms": 1e3 * (t1 - t0) if first else 0.0,
                "vision_ms": 1e3 * (t2 - t1) if first else 0.0,
                **timings,
                "total_ms": 1e3 * ((t2 - t0 if first else 0.0) + time.perf_counter() - t3),
            }
            answers.append(
                Answer(text, out, {k: round(v, 3) for k, v in timings.items()}, cached or not first)
            )
        return answers

    def sample(
        self,
        image: Any,
        question: str,
        n: int,
        sampling: SamplingOptions,
        rng: np.random.Generator,
        options: DecodingOptions | None = None,
    ) -> list[Answer]:
        """``n`` sampled answers to one question (temperature / top-k / top-p, see decoding.py).

        The image and question are encoded once; the n answers are decoded together as a batch of
        n (at most ``max_batch`` rows per decoder call: TensorRT profiles bound the batch).
        """
        if n < 1:
            raise InputError(f"the number of samples must be at least 1, got {n}")
        q_ids = self.question_ids(question)
        encoding, _ = self._encoding(image)
        opts = options or self.options
        out: list[list[int]] = []
        for start in range(0, n, self.max_batch):
            first, state = self.model.start(encoding.arrays, q_ids, rows=min(self.max_batch, n - start))
            out += sample(self.model.step, first, state, opts, sampling, rng)
        clean = self.manifest.text.clean_up_tokenization_spaces
        return [Answer(self.tokenizer.decode(ids, clean), ids) for ids in out]

    def teacher_forced(self, image: Any, question: str, ids: list[int]) -> list[int]:
        """The runtime's top-1 token at each position of ``ids`` (an answer, e.g. PyTorch's), given
        the answer tokens before it: where near-tied logits make greedy text fork, this still says
        how often the graphs would pick the same next token."""
        if not ids:
            return []
        encoding, _ = self._encoding(image)
        first, state = self.model.start(encoding.arrays, self.question_ids(question))
        return _teacher_forced_logits(self.model, first, state, ids)[0].argmax(-1).tolist()

    @property
    def max_batch(self) -> int:
        """Most rows one decoder call may take: the engines' profile maximum, else unbounded."""
        if self.backend != "trt-engine":
            return 1 << 30
        profiles = self.manifest.trt.get(self.precision, {}).get("profiles", {})
        ids = profiles.get("decoder_step", {}).get("input_ids")  # [min, opt, max] shapes of [B, T]
        return max(1, int(ids[2][0])) if ids else 1

    def rank(self, image: Any, question: str, candidates: tuple[str, ...] = ("yes", "no")) -> Answer:
        """Score each candidate answer in one batched decoder pass and return the most likely.

        For closed questions: instead of generating, every candidate (its tokens and eos) is
        teacher-forced at once and scored by its total log-probability, eos included.
        """
        if len(candidates) < 2:
            raise InputError("rank mode needs at least two candidate answers")
        t0 = time.perf_counter()
        q_ids = self.question_ids(question)
        encoding, cached = self._encoding(image)
        seqs = [self.model.candidate_ids(c) for c in candidates]
        width = max(len(x) for x in seqs)
        batch = np.array([x + [self.options.pad_id] * (width - len(x)) for x in seqs], dtype=np.int64)
        first, state = self.model.start(encoding.arrays, q_ids, rows=len(candidates))
        head, state = self.model.step(first, state)  # predicts each candidate's first token
        logits = head[:, -1:]
        if width > 1:  # the rest, teacher-forced in one call
            logits = np.concatenate([logits, self.model.step(batch[:, :-1], state)[0]], axis=1)
        scores = sequence_log_probs(logits, batch, [len(x) for x in seqs])
        best = int(np.argmax(scores))
        ms = {"total_ms": round(1e3 * (time.perf_counter() - t0), 3)}
        return Answer(candidates[best], seqs[best], ms, cached, dict(zip(candidates, map(float, scores))))


def _teacher_forced_logits(model: Any, first: np.ndarray, state: Any, ids: list[int]) -> np.ndarray:
    """Logits [rows, len(ids), V] predicting each of ``ids`` given the ones before it."""
    head, state = model.step(first, state)
    logits = head[:, -1:]
    if len(ids) > 1:
        rest = np.asarray([ids[:-1]] * first.shape[0], dtype=np.int64)
        logits = np.concatenate([logits, model.step(rest, state)[0]], axis=1)
    return logits


def choose(m: Manifest, precision: str | None, backend: str, machine: backends.Machine) -> tuple[str, str]:
    """(precision, backend) to run: engines need trt-engine, ONNX graphs an onnxruntime backend."""
    if precision not in (None, "auto") and precision not in m.precisions:
        raise BundleError(
            f"precision {precision!r} is not in this bundle; it has {sorted(m.precisions)} (or auto)"
        )
    engines = sorted(m.trt)
    if precision in (None, "auto") and backend in ("auto", "trt-engine") and engines:
        # engine_mismatch also says why when the machine has no GPU or TensorRT at all
        usable = (
            backend == "trt-engine"
            or backends.engine_mismatch(m.trt[engines[0]]["built_for"], machine) is None
        )
        precision = engines[0] if usable else precision
    if precision == "auto":  # the ONNX precisions, measured once the backend is known
        return "auto", backends.select(backend, machine, has_engines=False)
    precision = precision or m.default_precision
    if precision in m.engines:  # an OpenVINO path: onnxruntime's CPU sessions and OpenVINO's CPU plugin
        if backend not in ("auto", "cpu"):
            raise InputError(
                f"precision {precision} runs on the CPU (onnxruntime and OpenVINO): use --backend cpu"
            )
        if not machine.offers("openvino"):
            raise InputError(
                f"precision {precision} runs its vision graph with OpenVINO, not installed here: "
                f"pip install 'edgevqa[openvino]', or --precision {OPENVINO_VISION.get(precision, 'int8')}"
            )
        return precision, "cpu"
    if precision in m.trt:
        if backend not in ("auto", "trt-engine"):
            raise InputError(
                f"precision {precision} holds TensorRT engines: run it with --backend trt-engine"
            )
        backends.select("trt-engine", machine, has_engines=True)
        if why := backends.engine_mismatch(m.trt[precision]["built_for"], machine):
            raise BundleError(why)
        return precision, "trt-engine"
    if backend == "trt-engine":
        raise InputError(
            f"precision {precision} is ONNX: --backend trt-engine runs only {engines or 'engines'}"
        )
    return precision, backends.select(backend, machine, has_engines=False)


def _load_graph(
    bundle: Path, m: Manifest, precision: str, name: str, backend: str, threads: int, verify: bool
) -> Any:
    """One graph of ``precision`` as an onnxruntime session or a TensorRT engine."""
    path = m.graph_path(bundle, precision, name)
    engine = m.engines.get(precision, {}).get(name)
    # only a verified graph goes through the machine-local caches (optcache.py)
    sha = m.files.get(m.precisions[precision][name], {}).get("sha256") if verify else None
    try:
        if engine == "openvino-f32" or backend == "openvino":
            from edgevqa.runtime.openvino import OpenVinoGraph

            hint = "f32" if engine else ""  # an OpenVINO path: the precision the gate validated
            graph = OpenVinoGraph(path, threads, hint=hint, cache_dir=optcache.openvino_cache_dir(sha))
        elif backend == "trt-engine":
            from edgevqa.runtime.trt import TrtGraph

            graph = TrtGraph(path)
        else:
            engines = optcache.engine_cache_dir(sha) if backend == "tensorrt" else None
            provs = backends.providers(backend, cache_dir=engines, fp16=precision == "fp16")
            graph = make_session(
                path, threads, providers=provs, graph_sha256=sha if backend == "cpu" else None
            )
    except (BundleError, InputError):
        raise
    except Exception as e:  # onnxruntime and tensorrt raise their own types for unreadable graphs
        raise BundleError(f"cannot load {name} ({precision}): {str(e).splitlines()[0]}") from None
    check_graph(m, name, graph)
    return graph


def sequence_log_probs(logits: np.ndarray, targets: np.ndarray, lengths: list[int]) -> np.ndarray:
    """Sum of log softmax(logits)[target] over each row's first ``lengths[i]`` positions."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    mask = np.arange(targets.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return (picked * mask).sum(axis=1)
