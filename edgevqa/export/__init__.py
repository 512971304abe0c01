"""Export (torch side): ``export(ExportConfig) -> Path`` of the bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export(cfg: Any, data: str | None = None, progress: bool = True) -> Path:
    from edgevqa.export.exporter import export as _export

    return _export(cfg, data=data, progress=progress)
