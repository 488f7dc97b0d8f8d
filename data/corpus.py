"""The one reader of a prepared corpus's meta.json (data/prepare.py writes it), validated.

Every reader of a corpus (data.batches.load_split, train.py's vocabulary check, data.prepare's
"already prepared?") goes through `load_corpus_meta`, so a meta.json that is a list, a directory,
not JSON, or has a vocab_size that is a string, null or negative stops with one line that names
the file and the command that rewrites it, never a traceback from deep inside a reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

META_FILE = "meta.json"
SPLITS = ("train", "val")
# data.prepare writes uint16 only (GPT-2's 50,257 ids fit). Accepting no other dtype also keeps
# ids non-negative, so the range check of a split needs only the maximum.
SUPPORTED_DTYPES = ("uint16",)
GENERIC_PREPARE = "python -m data.prepare data=<name>"


class CorpusError(ValueError):
    """The prepared corpus is missing or inconsistent; the message says how to fix it."""


@dataclass(frozen=True)
class CorpusMeta:
    """The fields of meta.json every reader relies on, checked; `raw` is the whole file."""

    path: Path
    vocab_size: int
    dtype: np.dtype
    tokens: dict[str, int]
    sha256: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def load_corpus_meta(data_dir: str | Path, prepare: str = GENERIC_PREPARE) -> CorpusMeta:
    """meta.json of the corpus in `data_dir`, validated; CorpusError (one line naming the file and
    `prepare`, the command that makes this corpus) when it is missing or malformed."""
    meta_path = Path(data_dir) / META_FILE
    redo = f"re-run `{prepare} force=true`"
    if not meta_path.exists():
        raise CorpusError(
            f"no prepared corpus in {data_dir} (no {META_FILE}): run `{prepare}` first"
        )
    if not meta_path.is_file():
        raise CorpusError(f"{meta_path} is not a file: remove it, then {redo}")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CorpusError(f"cannot read {meta_path} ({err.strerror or err})") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorpusError(f"{meta_path} is not valid JSON ({reason}): {redo}") from None
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise CorpusError(f"{meta_path} holds a JSON {kind}, not an object: {redo}")

    def bad(what: str) -> CorpusError:
        return CorpusError(f"{meta_path}: {what}: {redo}")

    vocab_size = raw.get("vocab_size")
    if not _is_int(vocab_size) or vocab_size <= 0:
        raise bad(f"vocab_size must be a positive integer, got {vocab_size!r}")
    dtype_name = raw.get("dtype", "uint16")  # corpora from before the key existed were uint16
    if dtype_name not in SUPPORTED_DTYPES:
        raise bad(f"dtype {dtype_name!r} is not supported (readers accept {SUPPORTED_DTYPES[0]})")
    dtype = np.dtype(dtype_name)
    if vocab_size > np.iinfo(dtype).max + 1:
        raise bad(f"vocab_size {vocab_size} does not fit {dtype_name} token ids")
    tokens = raw.get("tokens")
    if not isinstance(tokens, dict) or not all(
        _is_int(tokens.get(split)) and tokens[split] >= 0 for split in SPLITS
    ):
        raise bad(f"tokens must map train and val to token counts, got {tokens!r}")
    sha256 = raw.get("sha256") or {}
    if not isinstance(sha256, dict) or not all(isinstance(v, str) for v in sha256.values()):
        raise bad(f"sha256 must map splits to hex digests, got {sha256!r}")
    return CorpusMeta(
        path=meta_path,
        vocab_size=vocab_size,
        dtype=dtype,
        tokens={split: tokens[split] for split in SPLITS},
        sha256=sha256,
        raw=raw,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a count
