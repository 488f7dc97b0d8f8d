"""Tokenize a corpus into `train.bin` / `val.bin` (uint16 token ids) and `meta.json`.

    python -m data.prepare                        # data=shakespeare, the default
    python -m data.prepare data=openwebtext data.num_workers=32
    python -m data.prepare data=text_files data.files=[a.txt,b.txt] data.dir=data/cache/mine
    python -m data.prepare data=shakespeare force=true   # redo even if already prepared
    python -m data.prepare data=shakespeare_bytes        # the same text, byte-level (vocab 256)

`data.tokenizer` is gpt2 (the default) or bytes. With gpt2 each document's tokens are followed by
<|endoftext|> (50256) and the text is encoded with `encode_ordinary`, so a literal
"<|endoftext|>" inside a document is ordinary text; with bytes the separator is NUL (id 0).
Documents are tokenized `batch_docs` at a time and appended to the files, so memory stays bounded
whatever the corpus size. Files are written under temporary names (`train.bin.tmp<pid>`) and
renamed when complete, and meta.json is written last (and removed first on a redo): a meta.json
always describes finished files. One prepare at a time writes a directory (a lock on it, which the
OS drops when the process dies); holding it, a prepare first removes the temporary files a killed
one left.

meta.json: tokenizer, vocab_size, eot_id, dtype, tokens / documents / sha256 per split, source
(what was tokenized), split (how), fingerprint (of tokenizer + source + split: a second run with
the same fingerprint and intact files does nothing), prepare_seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data.config import DataConfig
from data.corpus import META_FILE, SPLITS, CorpusError, CorpusMeta, load_corpus_meta
from data.sources import OPENWEBTEXT_DOCUMENTS, describe_source, load_documents, split_documents
from data.tokenizer import load_tokenizer

DTYPE = np.uint16  # GPT-2's 50,257 ids fit; half the bytes of int32 (bytes would fit uint8, but
# one dtype keeps every reader of .bin files simple)
FORMAT_VERSION = 1
# Files written under a temporary name (`<final name>.tmp<pid>`) and renamed when complete.
TEMP_NAME = re.compile(r"(train\.bin|val\.bin|meta\.json)\.tmp\d+")


def prepare(cfg: DataConfig, force: bool = False) -> dict:
    """Tokenize the corpus of `cfg` into `cfg.dir` unless it is already there; returns meta."""
    out_dir = Path(cfg.dir)
    source = describe_source(cfg)
    split = {"val_fraction": cfg.val_fraction, "val_docs": cfg.val_docs, "seed": cfg.split_seed}
    fingerprint = _fingerprint(cfg.tokenizer, source, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir):
        remove_leftover_temp_files(out_dir)
        if not force and (meta := _finished_meta(out_dir, fingerprint)) is not None:
            print(f"{out_dir} is already prepared: {_token_summary(meta)} (force=true redoes it)")
            return meta
        return _prepare(cfg, out_dir, source, split, fingerprint)


def _prepare(cfg: DataConfig, out_dir: Path, source: dict, split: dict, fingerprint: str) -> dict:
    start = time.perf_counter()
    (out_dir / META_FILE).unlink(missing_ok=True)  # the files are about to change
    tokenizer = load_tokenizer(cfg.tokenizer)
    splits = split_documents(load_documents(cfg), cfg)
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": np.dtype(DTYPE).name,
        "tokens": {},
        "documents": {},
        "sha256": {},
        "source": source,
        "split": split,
        "fingerprint": fingerprint,
    }
    if "work" in splits["val"].column_names:  # shakespeare: which works are held out
        meta["split"]["val_works"] = sorted(splits["val"]["work"])
    for name in SPLITS:
        written = write_tokens(splits[name], out_dir / f"{name}.bin", tokenizer, cfg, desc=name)
        meta["tokens"][name], meta["sha256"][name] = written["tokens"], written["sha256"]
        meta["documents"][name] = len(splits[name])
    meta["prepare_seconds"] = round(time.perf_counter() - start, 1)
    meta["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write_atomically(out_dir / META_FILE, json.dumps(meta, indent=2).encode() + b"\n")

    print(f"prepared {out_dir} in {meta['prepare_seconds']} s: {_token_summary(meta)}")
    n_documents = sum(meta["documents"].values())
    if cfg.name == "openwebtext" and n_documents < OPENWEBTEXT_DOCUMENTS:
        print(
            f"warning: {n_documents:,} documents, the full OpenWebText has "
            f"{OPENWEBTEXT_DOCUMENTS:,}: the parquet export of {cfg.hf_path} may be partial"
        )
    return meta


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the corpus directory itself (flock on its fd: no lock file to
    leave behind; the OS releases it when the process dies, so kill -9 leaves no stale lock).
    A second prepare into the same directory waits, then finds the corpus prepared."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another data.prepare writing {out_dir} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only fd of the lock releases it


def remove_leftover_temp_files(out_dir: Path) -> list[Path]:
    """Remove the temporary files (`train.bin.tmp<pid>`, ...) of earlier prepares that were killed
    (for OpenWebText, gigabytes each); only call it holding the directory's lock, so no prepare
    that is still writing can own them. Returns what was removed."""
    removed = []
    for path in out_dir.iterdir():
        if TEMP_NAME.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        names = ", ".join(sorted(p.name for p in removed))
        print(f"removed temporary files an interrupted data.prepare left in {out_dir}: {names}")
    return removed


def write_tokens(
    documents: datasets.Dataset, path: Path, tokenizer, cfg: DataConfig, desc: str
) -> dict:
    """Append each document's tokens and an EOT to `path` (atomically); tokens and sha256.

    `tokenizer` is a data.tokenizer tokenizer (encode_batch, eot_id)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    n_tokens = 0
    workers = cfg.num_workers or os.cpu_count() or 1
    try:
        with open(tmp, "wb") as f, tqdm(total=len(documents), desc=desc, unit="doc") as bar:
            for batch in documents.iter(batch_size=cfg.batch_docs):
                ids = tokenizer.encode_batch(batch["text"], num_threads=workers)
                tokens = _with_eot(ids, tokenizer.eot_id)
                f.write(tokens.data)
                digest.update(tokens.data)
                n_tokens += len(tokens)
                bar.update(len(ids))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"tokens": n_tokens, "sha256": digest.hexdigest()}


def load_meta(data_dir: str | Path) -> dict:
    """meta.json of a prepared corpus, validated (data.corpus), after checking the .bin files
    have the sizes it states."""
    data_dir = Path(data_dir)
    if not (data_dir / META_FILE).exists():
        raise FileNotFoundError(
            f"no prepared corpus in {data_dir} (no {META_FILE}): run "
            f"`python -m data.prepare data=<name>` first"
        )
    meta = load_corpus_meta(data_dir)
    if problem := _size_problem(data_dir, meta):
        raise CorpusError(f"{problem}: re-run `python -m data.prepare` with force=true")
    return meta.raw


def _with_eot(ids: list[list[int]], eot_id: int) -> np.ndarray:
    tokens = np.empty(sum(len(doc) for doc in ids) + len(ids), dtype=DTYPE)
    position = 0
    for doc in ids:
        tokens[position : position + len(doc)] = doc
        position += len(doc)
        tokens[position] = eot_id
        position += 1
    return tokens


def _finished_meta(out_dir: Path, fingerprint: str) -> dict | None:
    """The existing meta if it was made from this config and its files look intact."""
    try:
        meta = load_corpus_meta(out_dir)
    except CorpusError:  # missing or malformed: prepare again
        return None
    if meta.raw.get("fingerprint") != fingerprint or _size_problem(out_dir, meta):
        return None
    return meta.raw


def _size_problem(data_dir: Path, meta: CorpusMeta) -> str | None:
    for name in SPLITS:
        path = data_dir / f"{name}.bin"
        expected = meta.tokens[name] * meta.dtype.itemsize
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            return f"{path} has {actual} bytes, {META_FILE} says {expected}"
    return None


def _fingerprint(tokenizer: str, source: dict, split: dict) -> str:
    identity = {"format_version": FORMAT_VERSION, "tokenizer": tokenizer, "source": source,
                "split": split}  # fmt: skip
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _write_atomically(path: Path, content: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _token_summary(meta: dict) -> str:
    tokens, documents = meta["tokens"], meta["documents"]
    return ", ".join(f"{s} {tokens[s]:,} tokens ({documents[s]:,} documents)" for s in SPLITS)


def _absolute_paths(cfg: DataConfig) -> DataConfig:
    """Paths of the config resolved against the launch directory, as train.py resolves them."""
    absolute = hydra.utils.to_absolute_path

    def optional(path: str | None) -> str | None:
        return None if path is None else absolute(path)

    return dataclasses.replace(
        cfg,
        dir=absolute(cfg.dir),
        files=[absolute(f) for f in cfg.files],
        source_archive=optional(cfg.source_archive),
        download_dir=absolute(cfg.download_dir),
        hf_cache_dir=optional(cfg.hf_cache_dir),
    )


ConfigStore.instance().store(group="schema/data", name="base", node=DataConfig)


@hydra.main(config_path="../configs", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    data_cfg = OmegaConf.to_object(cfg.data)
    prepare(_absolute_paths(data_cfg), force=cfg.force)


if __name__ == "__main__":
    main()
