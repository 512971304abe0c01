"""Datasets: one record type (:class:`VQARecord`), the synthetic default, and loaders."""

from edgevqa.data.records import SPLITS, VQARecord, load_split, write_split

__all__ = ["SPLITS", "VQARecord", "load_split", "write_split"]
