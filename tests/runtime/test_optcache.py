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


def test_a_cache_others_can_write_is_not_trusted(bundle, synth_data, tmp_path, monkeypatch, caplog):
    """Cached graphs load without re-hashing: a swapped one in a folder others can write must not
    be run. Here every entry's graph is replaced by another graph of the bundle."""
    import shutil

    cache = tmp_path / "ort"
    monkeypatch.setenv("EDGEVQA_CACHE_DIR", str(cache))
    _, first = _answer(bundle, synth_data)
    entries = [e for e in cache.iterdir() if not e.name.startswith(".")]
    for e in entries[1:]:  # what anyone with write access could do
        for f in entries[0].iterdir():
            shutil.copy(f, e / f.name)
    cache.chmod(0o777)
    with caplog.at_level("WARNING", logger="edgevqa.runtime"):
        pipe, again = _answer(bundle, synth_data)
    assert again == first and "writable by others" in caplog.text
    assert not any(str(s._model_path).startswith(str(cache)) for s in pipe.sessions.values())
    shutil.rmtree(cache)
    _answer(bundle, synth_data)  # a fresh cache, the user's own
    (entries[1] / "model.onnx").chmod(0o666)  # one entry's file: that entry alone is passed over
    pipe, _ = _answer(bundle, synth_data)
    from_cache = [str(s._model_path).startswith(str(cache)) for s in pipe.sessions.values()]
    assert from_cache.count(False) == 1
