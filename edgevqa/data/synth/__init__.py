"""Deterministic synthetic radiology-like VQA: the embedded default dataset (no downloads needed).

Each image is one of 3 modalities ("x-ray", "ct", "mri") x 3 regions ("chest", "brain",
"abdomen"), drawn with numpy from ellipses on a coordinate grid, with 0, 1 or 2 bright round
lesions, all on one side and of one size. Every image gets a few closed (yes/no) and open
questions about presence, modality, region, side, count and size of its findings.

Side convention (radiological, used everywhere here): "left" and "right" are the *patient's*
sides, and the patient faces the viewer, so the patient's left is on the image's right. A
"left" lesion is drawn in the right half of the image; ``meta["lesion_image_half"]`` says which.

Layout written by :func:`generate`::

    out_dir/images/000000.png ...   grayscale ("L") PNGs, image_size x image_size
    out_dir/{train,val,test}.jsonl  VQARecords (image paths relative to out_dir), split 80/10/10 by image
    out_dir/dataset.json            config, generator version and counts (also returned)
    out_dir/{split}.captions.jsonl  with ``captions=True`` (``edgevqa data synth --captions``): one
                                    CaptionRecord per image, e.g. "chest x-ray with two large lesions
                                    on the left", for the dapt and caption training recipes

Example:
    >>> from edgevqa.data.synth import SynthConfig, generate
    >>> summary = generate("data/synth", SynthConfig(n_images=3000, seed=0))  # doctest: +SKIP
    >>> summary["counts"]["questions"]                                        # doctest: +SKIP
"""

from edgevqa.data.synth.config import (  # noqa: F401 (the package's public names)
    GENERATOR_VERSION,
    MODALITIES,
    REGIONS,
    SIDES,
    SIZES,
    SPLIT_FRACTIONS,
    Lesion,
    SynthConfig,
)
from edgevqa.data.synth.dataset import caption_of, generate  # noqa: F401
from edgevqa.data.synth.draw import render_image  # noqa: F401
from edgevqa.data.synth.findings import sample_lesions  # noqa: F401
from edgevqa.data.synth.questions import _Image, vocabulary  # noqa: F401
