"""A malformed corpus meta.json or split is refused in one line naming the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.batches import load_split
from data.corpus import CorpusError, load_corpus_meta

PREPARE = "python -m data.prepare data=text_files"
VALID = {"vocab_size": 64, "dtype": "uint16", "tokens": {"train": 100, "val": 10}}


def write(directory: Path, meta, train: np.ndarray | None = None) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    tokens = np.arange(110, dtype=np.uint16) % 64 if train is None else train
    tokens[:100].tofile(directory / "train.bin")
    tokens[100:].tofile(directory / "val.bin")
    return directory


def refused(directory: Path, split: str = "train") -> str:
    with pytest.raises(CorpusError) as raised:
        load_split(directory, split, PREPARE)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_valid_meta_loads(tmp_path):
    meta = load_corpus_meta(write(tmp_path / "c", VALID), PREPARE)
    assert (meta.vocab_size, meta.dtype.name, meta.tokens) == (64, "uint16", VALID["tokens"])
    assert len(load_split(tmp_path / "c", "train", PREPARE)) == 100


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ([], "holds a JSON list, not an object"),
        ("{not json", "is not valid JSON"),
        ('{"vocab_size": 64, "dtype": "uint16\x01"}', "is not valid JSON"),
        ({**VALID, "vocab_size": "64"}, "vocab_size must be a positive integer, got '64'"),
        ({**VALID, "vocab_size": None}, "vocab_size must be a positive integer, got None"),
        ({**VALID, "vocab_size": -5}, "vocab_size must be a positive integer, got -5"),
        ({**VALID, "vocab_size": True}, "vocab_size must be a positive integer, got True"),
        ({**VALID, "vocab_size": 70_000}, "does not fit uint16"),
        ({**VALID, "dtype": "int16"}, "dtype 'int16' is not supported (readers accept uint16)"),
        ({**VALID, "dtype": "uint32"}, "dtype 'uint32' is not supported"),
        ({k: v for k, v in VALID.items() if k != "tokens"}, "tokens must map train and val"),
        ({**VALID, "tokens": {"train": 100}}, "tokens must map train and val"),
        ({**VALID, "tokens": {"train": "100", "val": 10}}, "tokens must map train and val"),
        ({**VALID, "sha256": ["abc"]}, "sha256 must map splits"),
    ],
    ids=[
        "list",
        "unparseable",
        "control-character",
        "vocab-string",
        "vocab-null",
        "vocab-negative",
        "vocab-bool",
        "vocab-over-dtype",
        "dtype-int16",
        "dtype-uint32",
        "tokens-missing",
        "tokens-without-val",
        "tokens-string",
        "sha256-list",
    ],  # fmt: skip
)
def test_malformed_meta_is_one_line_naming_the_file_and_the_command(tmp_path, meta, expected):
    message = refused(write(tmp_path / "c", meta))
    assert expected in message
    assert str(tmp_path / "c" / "meta.json") in message and PREPARE in message


def test_meta_json_that_is_a_directory_is_refused(tmp_path):
    corpus = tmp_path / "c"
    (corpus / "meta.json").mkdir(parents=True)
    message = refused(corpus)
    assert f"{corpus / 'meta.json'} is not a file" in message and PREPARE in message


def test_missing_meta_names_the_prepare_command(tmp_path):
    (tmp_path / "c").mkdir()
    assert f"run `{PREPARE}`" in refused(tmp_path / "c")


def test_an_empty_split_names_the_file_and_the_command(tmp_path):
    corpus = write(tmp_path / "c", {**VALID, "tokens": {"train": 100, "val": 0}})
    (corpus / "val.bin").write_bytes(b"")
    message = refused(corpus, "val")
    assert f"{corpus / 'val.bin'} is empty" in message and PREPARE in message


def test_an_empty_train_bin_that_meta_says_is_full_is_refused(tmp_path):
    corpus = write(tmp_path / "c", VALID)
    (corpus / "train.bin").write_bytes(b"")
    assert f"{corpus / 'train.bin'} holds 0 uint16 tokens" in refused(corpus)


def test_a_token_id_at_the_vocab_size_is_refused(tmp_path):
    tokens = np.arange(110, dtype=np.uint16) % 64
    tokens[7] = 64
    message = refused(write(tmp_path / "c", VALID, tokens))
    assert "holds token id 64 >= meta.json's vocab_size 64" in message


def test_a_missing_train_bin_names_the_prepare_command(tmp_path):
    corpus = write(tmp_path / "c", VALID)
    (corpus / "train.bin").unlink()
    assert f"run `{PREPARE}`" in refused(corpus)
