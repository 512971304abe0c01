"""The machine-local cache of optimized graphs: built once, used after, rebuilt when broken."""

from __future__ import annotations

from edgevqa.runtime import VQAPipeline


def _answer(bundle, data):
    from edgevqa.data.records import load_split

    rec = load_split(data, "test")[0]
    pipe = VQAPipeline.from_bundle(bundle, precision="int8")
    return pipe, pipe.ask(rec.image_path(data), rec.question).token_ids


def test_cache_is_built_once_then_used(bundle, synth_data, tmp_path, monkeypatch):
    cache = tmp_path / "ort"
    monkeypatch.setenv("EDGEVQA_CACHE_DIR", str(cache))
    _, first = _answer(bundle, synth_data)
    entries = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert len(entries) == 3 and all((e / "model.onnx").is_file() for e in entries)
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    mtimes = [(e / "model.onnx").stat().st_mtime_ns for e in entries]
    pipe, again = _answer(bundle, synth_data)
    assert again == first
    assert all(str(s._model_path).startswith(str(cache)) for s in pipe.sessions.values())
    assert [(e / "model.onnx").stat().st_mtime_ns for e in entries] == mtimes  # used, not rebuilt


def test_broken_entry_is_rebuilt(bundle, synth_data, tmp_path, monkeypatch):
    cache = tmp_path / "ort"
    monkeypatch.setenv("EDGEVQA_CACHE_DIR", str(cache))
    _, first = _answer(bundle, synth_data)
    for e in cache.iterdir():
        (e / "model.onnx").write_bytes(b"not a graph")
    _, again = _answer(bundle, synth_data)
    assert again == first
    assert all((e / "model.onnx").stat().st_size > 100 for e in cache.iterdir())


def test_cache_can_be_switched_off_and_is_never_used_unverified(bundle, synth_data, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVQA_CACHE_DIR", "off")
    _answer(bundle, synth_data)
    monkeypatch.setenv("EDGEVQA_CACHE_DIR", str(tmp_path / "ort"))
    VQAPipeline.from_bundle(bundle, precision="int8", verify=False)
    assert not (tmp_path / "ort").exists()
