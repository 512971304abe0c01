"""Readers for public radiology datasets, one module per on-disk layout.

Each reader module has ``detect(root) -> bool`` and ``read(root, opts) -> Iterator[Item]``; the
shared work (image checks, hashing, splits, the skipped-row report) is in :mod:`edgevqa.data.loaders`.
"""
