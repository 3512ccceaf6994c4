"""Tokenizer, batch sampler, text loading and the train/val split."""
import json
import os
import urllib.error

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygpt.data as data
from tinygpt.data import BatchSampler, CharTokenizer, load_text, train_val_split

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


# ---------------------------------------------------------------- CharTokenizer


def test_tokenizer_vocab_and_round_trip():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.chars == "".join(sorted(set(TEXT)))
    assert tok.vocab_size == len(set(TEXT))
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int64 and ids.shape == (len(TEXT),)
    assert tok.decode(ids) == TEXT
    assert tok.decode(ids.tolist()) == TEXT
    assert tok.encode("").shape == (0,) and tok.decode([]) == ""
    assert tok.encode("\n").tolist() == [0]  # sorted: newline first


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_tokenizer_round_trip_any_text(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text


def test_unknown_character_names_it_and_its_position():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"unknown character 'z' at position 3"):
        tok.encode("abcz")


def test_decode_out_of_range_and_bad_input():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="id 3 at position 1 is out of range"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="id -1 at position 0"):
        tok.decode(np.array([-1]))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode([0.5])


def test_tokenizer_decodes_a_tensor():
    import tinygpt as tg

    tok = CharTokenizer.from_text("abc")
    assert tok.decode(tg.Tensor(np.array([2, 1, 0]))) == "cba"


def test_tokenizer_rejects_bad_vocab():
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="from_dict"):
        CharTokenizer.from_dict({"chars": ["a"]})


def test_tokenizer_dict_and_save_load(tmp_path):
    tok = CharTokenizer.from_text(TEXT + "é€😀")
    d = json.loads(json.dumps(tok.to_dict()))
    assert CharTokenizer.from_dict(d).chars == tok.chars
    path = tmp_path / "tok.json"
    tok.save(path)
    tok2 = CharTokenizer.load(path)
    assert tok2.chars == tok.chars and tok2.stoi == tok.stoi
    assert os.listdir(tmp_path) == ["tok.json"]  # no temp file left behind


# ---------------------------------------------------------------- BatchSampler


def test_sampler_shapes_and_shift():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = BatchSampler(tokens, batch_size=4, block_size=8, seed=0).sample()
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)               # tokens are consecutive ints
    np.testing.assert_array_equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows


def test_sampler_covers_every_window_including_the_last():
    tokens = np.arange(10)
    s = BatchSampler(tokens, batch_size=500, block_size=9, seed=1)
    x, y = s.sample()  # only one window fits: tokens[0:9] -> tokens[1:10]
    assert (x[:, 0] == 0).all() and (y[:, -1] == 9).all()
    x, _ = BatchSampler(np.arange(20), batch_size=2000, block_size=5, seed=2).sample()
    assert set(x[:, 0].tolist()) == set(range(15))


def test_sampler_is_deterministic_per_seed():
    tokens = np.arange(1000)
    a = [BatchSampler(tokens, 3, 16, seed=7).sample()[0] for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    b = BatchSampler(tokens, 3, 16, seed=8).sample()[0]
    assert not np.array_equal(a[0], b)


def test_sampler_state_resume_draws_the_same_batches():
    tokens = np.arange(1000)
    s = BatchSampler(tokens, 4, 16, seed=3)
    for _ in range(5):
        next(s)
    state = json.loads(json.dumps(s.state_dict()))  # JSON-able
    expected = [s.sample() for _ in range(5)]
    s2 = BatchSampler(tokens, 4, 16, seed=999)
    s2.load_state_dict(state)
    for (x, y), (x2, y2) in zip(expected, (s2.sample() for _ in range(5))):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)


def test_sampler_state_mismatch_and_short_data():
    s = BatchSampler(np.arange(100), 4, 16)
    with pytest.raises(ValueError, match="block_size=16, this sampler has 8"):
        BatchSampler(np.arange(100), 4, 8).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="num_tokens"):
        BatchSampler(np.arange(50), 4, 16).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match=r"16 tokens are too few for block_size=16 \(need at least"):
        BatchSampler(np.arange(16), 1, 16)
    BatchSampler(np.arange(17), 1, 16).sample()  # exactly block_size + 1 is enough
    with pytest.raises(ValueError, match="1-D int"):
        BatchSampler(np.zeros(100), 1, 4)


# ---------------------------------------------------------------- load_text / split


def test_load_text_reads_an_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: pytest.fail("no download"))
    assert load_text(path, url="http://example.invalid/x") == TEXT


def test_load_text_downloads_when_missing(tmp_path, monkeypatch):
    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return TEXT.encode("utf-8")

    seen = {}

    def urlopen(url, timeout):
        seen.update(url=url, timeout=timeout)
        return Response()

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    path = tmp_path / "sub" / "input.txt"
    assert load_text(path, url=data.TINY_SHAKESPEARE_URL) == TEXT
    assert seen["url"] == data.TINY_SHAKESPEARE_URL and seen["timeout"] > 0
    assert path.read_text(encoding="utf-8") == TEXT
    assert os.listdir(path.parent) == ["input.txt"]


def test_load_text_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    path = tmp_path / "input.txt"
    with pytest.raises(RuntimeError) as info:
        load_text(path, url=data.TINY_SHAKESPEARE_URL)
    msg = str(info.value)
    assert str(path.resolve()) in msg and data.TINY_SHAKESPEARE_URL in msg and "no network" in msg
    assert not path.exists() and os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="input.txt"):
        load_text(path)


def test_tiny_shakespeare_is_packaged():
    text = data.tiny_shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:\nBefore we proceed any further")
    assert len(set(text)) == 65


def test_load_text_without_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_text() == data.tiny_shakespeare()  # no data/tinyshakespeare.txt: the packaged copy
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tinyshakespeare.txt").write_text("my own copy", encoding="utf-8")
    assert load_text() == "my own copy"


def test_train_val_split():
    tokens = np.arange(1000)
    train, val = train_val_split(tokens)
    np.testing.assert_array_equal(train, np.arange(900))
    np.testing.assert_array_equal(val, np.arange(900, 1000))
    train, val = train_val_split(tokens, val_fraction=0.25)
    assert len(train) == 750 and len(val) == 250
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(tokens, 1.0)
