"""tinygpt.tokenizers: GPT-2's byte-level BPE against GPT-2's own algorithm, a naive trainer,
and (where installed) Hugging Face's GPT2Tokenizer / tokenizers reading our files."""
import glob
import json
import os
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygpt
import tinygpt.data
import tinygpt.tokenizers as tokenizers
from tinygpt.tokenizers import ByteLevelBPE, CharTokenizer, bytes_to_unicode

regex = pytest.importorskip("regex")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"

MULTILINGUAL = (
    "Ἐν ἀρχῇ ἦν ὁ λόγος. В начале было Слово. 太初有道，道与神同在。 初めに言があった。 "
    "태초에 말씀이 계시니라. في البدء كان الكلمة. Au commencement était la Parole — naïve café, "
    "façade, Straße, smørrebrød. 👍🏽 👨‍👩‍👧 🇫🇷 e\u0301 n\u0303 a\u030a\u0320 1234 ٣٤٥ ½ Ⅻ\t\ttabs\u3000\u00a0nbsp\n"
)
SAMPLES = [
    "", " ", "  ", "\n", "\n\n\n", " \n ", "a", "Hello world", "Hello  world", "Hello world  ", "  leading",
    "I'll don't we're they've she's I'm he'd", "'S 'LL", "O'er 't", "x = 3.14159 + 2e-5; // done!!!",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n", "tab\tsep\tvalues\r\nwindows\r\n",
    "\u00a0\u2003\u2028\u2029\x0b\x0c\x1c\x1d\x85", "😀😀😀 🤷‍♀️ 👩🏾‍💻", "Zürich Ünïcödé ÅÄÖ", "a" * 200,
    "abababababab", " " * 50 + "x", MULTILINGUAL,
]


# ---------------------------------------------------------------- GPT-2's reference code (openai/gpt-2 encoder.py, MIT)


def gpt2_bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    cs = [chr(n) for n in cs]
    return dict(zip(bs, cs))


def get_pairs(word):
    pairs = set()
    prev_char = word[0]
    for char in word[1:]:
        pairs.add((prev_char, char))
        prev_char = char
    return pairs


class GPT2Encoder:
    """GPT-2's Encoder (encode only, special tokens split off first when allowed)."""

    def __init__(self, encoder, bpe_merges, specials=()):
        self.encoder = encoder
        self.byte_encoder = gpt2_bytes_to_unicode()
        self.bpe_ranks = dict(zip(bpe_merges, range(len(bpe_merges))))
        self.cache = {}
        self.pat = regex.compile(PAT)
        self.specials = list(specials)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        pairs = get_pairs(word)
        if not pairs:
            return token
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def _plain(self, text):
        bpe_tokens = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[bpe_token] for bpe_token in self.bpe(token).split(" "))
        return bpe_tokens

    def encode(self, text):
        if not self.specials:
            return self._plain(text)
        parts = regex.split("(" + "|".join(regex.escape(s) for s in self.specials) + ")", text)
        out = []
        for k, part in enumerate(parts):
            if k % 2:
                out.append(self.encoder[part])
            else:
                out.extend(self._plain(part))
        return out


def naive_train(text, vocab_size, specials=(EOT,)):
    """The textbook trainer: recount every pair each step; same tie-break as ByteLevelBPE.train."""
    be = gpt2_bytes_to_unicode()
    bd = {c: b for b, c in be.items()}
    pieces = regex.split("|".join(regex.escape(s) for s in specials), text) if specials else [text]
    freq = {}
    for piece in pieces:
        for w in regex.findall(PAT, piece):
            key = tuple(be[b] for b in w.encode("utf-8"))
            freq[key] = freq.get(key, 0) + 1
    words = [list(w) for w in freq]
    counts = list(freq.values())
    vocab = set(be.values())
    merges = []
    while len(vocab) < vocab_size - len(specials):
        pairs = {}
        for w, c in zip(words, counts):
            for p in zip(w, w[1:]):
                pairs[p] = pairs.get(p, 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], bytes(bd[x] for x in p[0]), bytes(bd[x] for x in p[1])))
        merges.append(best)
        vocab.add(best[0] + best[1])
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


def _corpus():
    """A fixed corpus present in every checkout: tinygpt's own sources and README, plus some
    multilingual text (so merges of multi-byte characters are learned too)."""
    parts = []
    for path in sorted(glob.glob(os.path.join(ROOT, "src", "tinygpt", "*.py")))[:6] + [os.path.join(ROOT, "README.md")]:
        with open(path, encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts) + MULTILINGUAL * 20 + f"{EOT}The end.{EOT}"


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


@pytest.fixture(scope="module")
def tok(corpus):
    return ByteLevelBPE.train(corpus, 700)


# texts: any Unicode (no surrogates), plus runs of the characters the pattern treats specially
_SPECIAL_CHARS = list(" \t\n\r\x0b\x0c\x1c\x85\u00a0\u2003\u3000\u2028'sltvmdre0123456789٣½Ⅻ!?.,-—") + \
    ["e\u0301", "👍🏽", "👨‍👩‍👧", "🇫🇷", "'ll", "'ve", "'re", "\u0301\u0302", "ß", "中文", "\U0010fffd"]
TEXTS = st.one_of(st.text(max_size=80),
                  st.lists(st.sampled_from(_SPECIAL_CHARS) | st.text(max_size=3), max_size=40).map("".join))


# ---------------------------------------------------------------- the byte table and the pattern


def test_byte_table_is_gpt2s_bijection():
    table = bytes_to_unicode()
    assert table == gpt2_bytes_to_unicode() and list(table) == list(gpt2_bytes_to_unicode())  # order too
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    printable = set(range(0x21, 0x7f)) | set(range(0xa1, 0xad)) | set(range(0xae, 0x100))
    assert len(printable) == 188
    for b, c in table.items():
        if b in printable:
            assert c == chr(b)
        else:
            assert 256 <= ord(c) < 256 + 68
        assert c.isprintable() and not c.isspace()
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā" and table[0xad] == "\u0143"
    others = [b for b in range(256) if b not in printable]
    assert [ord(table[b]) for b in others] == list(range(256, 256 + 68))  # in byte order


def test_split_pattern_is_gpt2s():
    assert tokenizers.GPT2_SPLIT_PATTERN == PAT
    split = regex.compile(tokenizers.GPT2_SPLIT_PATTERN).findall
    assert split("Hello world's  end\n\n") == ["Hello", " world", "'s", " ", " end", "\n\n"]
    assert split("I'll  2024abc!?") == ["I", "'ll", " ", " 2024", "abc", "!?"]
    assert split("e\u0301t\u00e9") == ["e", "\u0301", "t\u00e9"]  # a combining mark is \p{M}, not \p{L}


# ---------------------------------------------------------------- encoding on hand-made vocabularies


def _hand_made(merges, specials=()):
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for s in specials:
        vocab[s] = len(vocab)
    return ByteLevelBPE(vocab, merges, special_tokens=specials), vocab


def test_merges_apply_by_rank_not_position():
    tok, vocab = _hand_made([("b", "c"), ("a", "b"), ("a", "bc")])
    # "abc": the pairs are (a, b) rank 1 and (b, c) rank 0 -> b+c first, then a+bc
    assert tok.encode("abc").tolist() == [vocab["abc"]]
    tok, vocab = _hand_made([("b", "c"), ("a", "b")])
    assert tok.encode("abc").tolist() == [vocab["a"], vocab["bc"]]
    assert tok.encode("abab").tolist() == [vocab["ab"], vocab["ab"]]
    tok, vocab = _hand_made([("a", "a")])
    assert tok.encode("aaaaa").tolist() == [vocab["aa"], vocab["aa"], vocab["a"]]  # left to right, no overlap
    tok, vocab = _hand_made([("Ġ", "t"), ("h", "e"), ("Ġt", "he")])
    assert tok.encode(" the the").tolist() == [vocab["Ġthe"]] * 2
    assert tok.encode("the").tolist() == [vocab["t"], vocab["he"]]  # no space: a different word
    assert tok.vocab_size == 256 + 3 and len(tok) == tok.vocab_size
    assert tok.encode("").dtype == np.int64 and tok.encode("").shape == (0,)


def test_base_ids_follow_gpt2s_order():
    tok, _ = _hand_made([])
    assert tok.encode("!").tolist() == [0] and tok.encode("~").tolist() == [93]
    assert tok.encode(" ").tolist() == [list(bytes_to_unicode()).index(32)]
    assert tok.encode("é").tolist() == [tok.vocab[bytes_to_unicode()[b]] for b in "é".encode()]


@settings(max_examples=60)
@given(TEXTS)
def test_encode_equals_gpt2_reference_code(tok, text):
    ref = GPT2Encoder(tok.vocab, tok.merges)
    assert tok.encode(text).tolist() == ref.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_encode_samples_equal_gpt2_reference_code(tok, corpus):
    ref = GPT2Encoder(tok.vocab, tok.merges, specials=[EOT])
    for text in SAMPLES + corpus.splitlines()[:300] + [corpus[:20000]]:
        assert tok.encode(text, allowed_special="all").tolist() == ref.encode(text), text[:60]


# ---------------------------------------------------------------- decoding and round trips


@settings(max_examples=100)
@given(TEXTS)
def test_round_trip_any_text(tok, text):
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ((ids >= 0) & (ids < tok.vocab_size)).all()
    assert tok.decode(ids) == text and tok.decode(ids.tolist()) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_round_trip_samples(tok):
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
        nfd = unicodedata.normalize("NFD", text)
        assert tok.decode(tok.encode(nfd)) == nfd  # no normalisation: combining marks survive


def test_decode_partial_characters_and_tensors(tok):
    ids = tok.encode("😀")
    assert len(b"".join(tok.token_bytes(i) for i in ids.tolist())) == 4
    first = tok.token_bytes(int(ids[0]))
    if len(ids) > 1:  # a cut character decodes with U+FFFD (or raises with errors='strict')
        assert "\ufffd" in tok.decode(ids[:1])
        with pytest.raises(UnicodeDecodeError):
            tok.decode(ids[:1], errors="strict")
    assert first and tok.decode(tinygpt.Tensor(tok.encode("Hi there").astype(np.int64))) == "Hi there"


def test_decode_errors(tok):
    with pytest.raises(ValueError, match=r"id 700 at position 1 is not in the vocab \(ids are 0\.\.699\)"):
        tok.decode([5, 700])
    with pytest.raises(ValueError, match="id -1 at position 0"):
        tok.decode(np.array([-1, 3]))
    with pytest.raises(ValueError, match="1-D sequence of ints"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="1-D sequence of ints"):
        tok.decode([1.5])
    assert tok.decode([]) == ""


def test_encode_rejects_lone_surrogates_and_non_str(tok):
    with pytest.raises(ValueError, match=r"not encodable as UTF-8.*U\+D800\) at position 2"):
        tok.encode("ab\ud800c")
    with pytest.raises(TypeError, match="expected str"):
        tok.encode(b"bytes")


# ---------------------------------------------------------------- special tokens


def test_special_tokens(tok):
    eot = tok.special_tokens[EOT]
    assert eot == tok.vocab_size - 1 and tok.vocab[EOT] == eot
    text = f"first{EOT} second{EOT}"
    ids = tok.encode(text, allowed_special="all").tolist()
    assert ids.count(eot) == 2 and ids == tok.encode(text, allowed_special={EOT}).tolist()
    assert ids[-1] == eot and tok.decode(ids) == text
    assert ids[:ids.index(eot)] == tok.encode("first").tolist()
    # not allowed: an error by default, naming the token and how to proceed ...
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at position 5.*allowed_special"):
        tok.encode(text)
    # ... or plain text when asked
    plain = tok.encode(text, disallowed_special=()).tolist()
    assert eot not in plain and tok.decode(plain) == text and len(plain) > len(ids)
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match="'all' or a collection"):
        tok.encode(text, allowed_special=EOT)


def test_several_special_tokens_longest_first():
    tok = ByteLevelBPE.train("some text here " * 20, 300, special_tokens=("<|a|>", "<|a|><|b|>", "<|b|>"))
    assert list(tok.special_tokens) == ["<|a|>", "<|a|><|b|>", "<|b|>"]
    a, ab, b = tok.vocab_size - 3, tok.vocab_size - 2, tok.vocab_size - 1
    assert list(tok.special_tokens.values()) == [a, ab, b] and a > 256  # after the merges, in order
    ids = tok.encode("x<|a|><|b|>y<|b|>", allowed_special="all").tolist()
    assert ids[1] == ab and ids[3] == b and tok.decode(ids) == "x<|a|><|b|>y<|b|>"
    with pytest.raises(ValueError, match=r"special token '<\|a\|><\|b\|>' at position 0"):  # not allowed
        tok.encode("<|a|><|b|>", allowed_special={"<|a|>", "<|b|>"})
    ids = tok.encode("<|a|><|b|>", allowed_special={"<|a|>", "<|b|>"}, disallowed_special=()).tolist()
    assert ids == [a, b]
    assert tok.encode("<|a|>z", allowed_special={"<|a|>"}, disallowed_special={"<|b|>"}).tolist()[0] == a
    with pytest.raises(ValueError, match=r"special token '<\|b\|>' at position 0"):
        tok.encode("<|b|>", allowed_special={"<|a|>"})


# ---------------------------------------------------------------- training


def test_training_matches_a_naive_trainer(corpus):
    text = corpus[:15000] + MULTILINGUAL
    tok = ByteLevelBPE.train(text, 420, special_tokens=())
    assert tok.merges == naive_train(text, 420, specials=())
    assert tok.vocab_size == 420 and not tok.special_tokens


def test_tie_break_is_by_bytes():
    # each pair occurs once: (b" ", b"c") < (b"a", b"b") < (b"c", b"d") as byte strings
    tok = ByteLevelBPE.train("ab cd", 300, special_tokens=())
    assert tok.merges == [("Ġ", "c"), ("Ġc", "d"), ("a", "b")]  # b" c" < b"a" for the second
    assert tok.vocab_size == 259  # ran out of pairs before 300: every word is one token
    assert tok.encode("ab cd").tolist() == [258, 257]  # 'ab' made third (258), 'Ġcd' second (257)


def test_training_respects_vocab_size_and_compresses(corpus):
    small = ByteLevelBPE.train(corpus, 300)
    big = ByteLevelBPE.train(corpus, 900)
    assert small.vocab_size == 300 and big.vocab_size == 900
    assert len(big.merges) >= 900 - 257 and big.special_tokens == {EOT: 899}
    n_bytes = len(corpus.encode("utf-8"))
    n_small = len(small.encode(corpus, allowed_special="all"))
    n_big = len(big.encode(corpus, allowed_special="all"))
    assert n_big < n_small < n_bytes and n_big < 0.5 * n_bytes
    assert big.merges[:len(small.merges)] == small.merges  # training is greedy: a prefix
    for t in (small, big):
        assert t.decode(t.encode(corpus, allowed_special="all")) == corpus


def test_training_is_deterministic_and_ignores_special_tokens(corpus):
    a = ByteLevelBPE.train(corpus[:30000], 500)
    b = ByteLevelBPE.train(corpus[:30000], 500)
    assert a == b and a.to_dict() == b.to_dict()
    # the special token's text takes part in no merge
    many = ByteLevelBPE.train(f"{EOT}ab{EOT}" * 100, 400)
    assert all("endoftext" not in x + y for x, y in many.merges)


def test_training_progress_bar(corpus, capsys):
    ByteLevelBPE.train(corpus[:5000], 300, show_progress=True)
    assert "bpe merges" in capsys.readouterr().err


def test_training_argument_errors():
    with pytest.raises(ValueError, match=r"vocab_size must be an int >= 256 \+ 1 special tokens = 257"):
        ByteLevelBPE.train("abc", 256)
    with pytest.raises(ValueError, match="repeated special tokens"):
        ByteLevelBPE.train("abc", 300, special_tokens=("<a>", "<a>"))
    with pytest.raises(ValueError, match="is a byte symbol"):
        ByteLevelBPE.train("abc", 300, special_tokens=("a",))
    with pytest.raises(ValueError, match="also a learned token"):
        ByteLevelBPE.train(" x x x", 300, special_tokens=("Ġx",))  # the vocab key of the token ' x' 
    with pytest.raises(TypeError, match="expected str"):
        ByteLevelBPE.train(b"abc", 300)


# ---------------------------------------------------------------- files and dicts


def test_save_load_and_dict_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    with open(tmp_path / "merges.txt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0] == "#version: 0.2" and lines[-1] == "" and len(lines) == len(tok.merges) + 2
    assert lines[1] == " ".join(tok.merges[0])
    with open(tmp_path / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    assert vocab == tok.vocab and list(vocab.values()) == list(range(tok.vocab_size))
    for loaded in (ByteLevelBPE.load(tmp_path),
                   ByteLevelBPE.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt"),
                   ByteLevelBPE.from_dict(json.loads(json.dumps(tok.to_dict()))),
                   tokenizers.from_dict(tok.to_dict())):
        assert loaded == tok and loaded.special_tokens == {EOT: tok.vocab_size - 1}
        assert loaded.encode(MULTILINGUAL).tolist() == tok.encode(MULTILINGUAL).tolist()
    assert sorted(os.listdir(tmp_path)) == ["merges.txt", "special_tokens_map.json", "tokenizer.json",
                                            "tokenizer_config.json", "vocab.json"]  # and no temp file
    # without tokenizer.json: vocab.json + merges.txt (+ the config files)
    os.remove(tmp_path / "tokenizer.json")
    assert ByteLevelBPE.load(tmp_path) == tok
    # merges.txt without the #version line (some tools omit it) reads the same
    (tmp_path / "merges.txt").write_text("\n".join(lines[1:]), encoding="utf-8")
    assert ByteLevelBPE.load(tmp_path) == tok
    # GPT-2's bare pair of files (no config files): <|endoftext|> is GPT2Tokenizer's default special token
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        os.remove(tmp_path / name)
    assert ByteLevelBPE.load(tmp_path) == tok and tok.eos_token_id == tok.vocab_size - 1
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json and no merges.txt"):
        os.remove(tmp_path / "merges.txt")
        ByteLevelBPE.load(tmp_path)


def test_char_tokenizer_is_re_exported():
    assert tokenizers.CharTokenizer is tinygpt.data.CharTokenizer is CharTokenizer
    assert CharTokenizer.__module__ == "tinygpt.tokenizers.char"  # its home; tinygpt.data re-exports it
    c = CharTokenizer.from_text("hello")
    assert tokenizers.from_dict(c.to_dict()).chars == c.chars
    with pytest.raises(ValueError, match="unknown tokenizer type 'wordpiece'"):
        tokenizers.from_dict({"type": "wordpiece"})


def _write(tmp_path, vocab, merges_text):
    (tmp_path / "vocab.json").write_text(vocab if isinstance(vocab, str) else json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(merges_text, encoding="utf-8")
    return tmp_path


def test_malformed_files_name_file_and_line(tmp_path):
    _, vocab = _hand_made([("a", "b"), ("Ġ", "ab")])
    good = "#version: 0.2\na b\nĠ ab\n"
    assert ByteLevelBPE.load(_write(tmp_path, vocab, good)).merges == [("a", "b"), ("Ġ", "ab")]
    merges_path = str(tmp_path / "merges.txt")
    vocab_path = str(tmp_path / "vocab.json")
    cases = [
        (vocab, "#version: 0.2\na b\nĠab\n", f"{merges_path}: line 3: expected two symbols"),
        (vocab, "#version: 0.2\na b\nĠ ab x\n", f"{merges_path}: line 3: expected two symbols"),
        (vocab, "#version: 0.2\n\na b\nq zz\n", f"{merges_path}: line 4: the symbol 'zz'"),
        (vocab, "#version: 0.2\na b\nb a\n", f"{merges_path}: line 3: the merge 'b a' makes 'ba'"),
        (vocab, "#version: 0.2\na b\na b\n", f"{merges_path}: line 3: the merge 'a b' repeats {merges_path}: line 2"),
        (vocab, "#version: 0.2\na b\n#x\n", f"{merges_path}: line 3: expected two symbols"),
        (vocab, "a b\n#version: 0.2\n", f"{merges_path}: line 2: .*'#version:' .*not in the vocab"),
        ('{"a": 1,\n "b": }', good, f"{vocab_path}: line 2 column 7: not valid JSON"),
        ("[1, 2]", good, f"{vocab_path}: line 1: expected a JSON object"),
        ({**vocab, "zz": 5}, good, f"{vocab_path}: .*token 'zz': id 5 is also the id of"),
        ({**vocab, "zz": "7"}, good, f"{vocab_path}: .*token 'zz': id '7' is not an int"),
        ({**vocab, "zz": len(vocab) + 3}, good, "is not an int in"),
        ({k: i for i, k in enumerate(k for k in vocab if k != "Ā")}, good, "lacks the byte symbol 'Ā' \\(byte 0x00\\)"),
    ]
    for v, m, message in cases:
        with pytest.raises(ValueError, match=message.replace("|", r"\|")):
            ByteLevelBPE.load(_write(tmp_path, v, m))
    # a line number inside a multi-line vocab.json
    lines = "{\n" + ",\n".join(f"{json.dumps(k)}: {i}" for k, i in {**vocab, "zz": 0}.items()) + "\n}"
    with pytest.raises(ValueError, match=f"{vocab_path}: line {len(vocab) + 2}: token 'zz'"):
        ByteLevelBPE.load(_write(tmp_path, lines, good))
    with pytest.raises(FileNotFoundError):
        ByteLevelBPE.load(tmp_path / "nowhere")


def test_only_declared_special_tokens_are_special():
    _, vocab = _hand_made([("a", "b")], specials=["<|x|>"])
    assert ByteLevelBPE(vocab, ["a b"], special_tokens=["<|x|>"]).special_tokens == {"<|x|>": 257}
    with pytest.raises(ValueError, match=r"vocab entry '<\|x\|>': id 257 is neither a byte symbol, nor made by one "
                                         r"of the 1 merges, nor a declared special token"):
        ByteLevelBPE(vocab, ["a b"])  # None declares only GPT-2's <|endoftext|>
    with pytest.raises(ValueError, match="'<|y|>' is not in the vocab".replace("|", r"\|")):
        ByteLevelBPE(vocab, ["a b"], special_tokens=["<|y|>"])
    with pytest.raises(ValueError, match="'ab' is also an ordinary token"):
        ByteLevelBPE(vocab, ["a b"], special_tokens=["ab"])
    with pytest.raises(ValueError, match=r"vocab entry '<\|x\|>': .*neither"):
        ByteLevelBPE(vocab, ["a b"], special_tokens=[])
    with pytest.raises(ValueError, match="must be a sequence of strings"):
        ByteLevelBPE(vocab, ["a b"], special_tokens="<|x|>")
    # GPT-2's one special token is declared by default, with its roles
    _, vocab = _hand_made([("a", "b")], specials=[EOT])
    tok = ByteLevelBPE(vocab, ["a b"])
    assert tok.special_tokens == {EOT: 257} and tok.eos_token_id == 257
    assert tok.roles == {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    assert ByteLevelBPE(vocab, ["a b"], roles={}).eos_token_id is None
    with pytest.raises(ValueError, match="unknown role 'sep_token'"):
        ByteLevelBPE(vocab, ["a b"], roles={"sep_token": EOT})
    with pytest.raises(ValueError, match="the eos_token 'ab' is not a special token"):
        ByteLevelBPE(vocab, ["a b"], roles={"eos_token": "ab"})


def test_merges_starting_with_hash_are_merges(tmp_path):
    """GPT-2's merges.txt has '# #', '## ##', '#### ####', '#$ #$', ...: only a first line
    starting with '#version' is a header."""
    merges = [("#", "#"), ("##", "##"), ("####", "####"), ("#", "$"), ("#$", "#$")]
    tok, vocab = _hand_made(merges, specials=[EOT])
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    loaded = ByteLevelBPE.load(_write(tmp_path, vocab, text))
    assert loaded.merges == merges and loaded == tok
    assert loaded.encode("########").tolist() == [vocab["########"]]
    assert loaded.encode("#$#$").tolist() == [vocab["#$#$"]]
    # the same file without the header line: the '#' merges are still merges
    assert ByteLevelBPE.load(_write(tmp_path, vocab, text.split("\n", 1)[1])).merges == merges
    # \r\n line ends read the same
    assert ByteLevelBPE.load(_write(tmp_path, vocab, text.replace("\n", "\r\n"))).merges == merges


def test_truncated_merges_name_the_vocab_line(tmp_path):
    corpus_tok = ByteLevelBPE.train("the cat sat on the mat with the hat " * 20, 300)
    corpus_tok.save(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        os.remove(tmp_path / name)
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").split("\n")
    (tmp_path / "merges.txt").write_text("\n".join(lines[:-6]) + "\n", encoding="utf-8")  # the last 5 merges gone
    first_lost = "".join(lines[-6].split(" "))
    vocab_lines = (tmp_path / "vocab.json").read_text(encoding="utf-8").split("\n")
    lineno = next(k for k, line in enumerate(vocab_lines, 1) if line.strip().startswith(json.dumps(first_lost, ensure_ascii=False)))
    with pytest.raises(ValueError, match=rf"vocab.json: line {lineno}: token {regex.escape(repr(first_lost))}: id "
                                         rf"\d+ is neither .* of the {len(lines) - 7} merges.* \(and 4 more entries"):
        ByteLevelBPE.load(tmp_path)


def test_stray_vocab_entries_fail_fast(tmp_path):
    """10^5 vocab entries that no merge makes used to become special tokens (and a 10^5-way regex
    at the first encode); now loading stops at the first, naming its line."""
    _, vocab = _hand_made([("a", "b")], specials=[EOT])
    vocab.update({f"<junk{i}>": len(vocab) + i for i in range(100_000)})
    with pytest.raises(ValueError, match=r"vocab.json: line 1: token '<junk0>': id 258 .* \(and 99999 more"):
        ByteLevelBPE.load(_write(tmp_path, vocab, "a b\n"))


# ---------------------------------------------------------------- Hugging Face as an independent oracle


@pytest.fixture(scope="module")
def hf_gpt2(tok, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("bpe")
    tok.save(d)
    return transformers.GPT2Tokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


@pytest.fixture(scope="module")
def hf_fast(tok, tmp_path_factory):
    hf_tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("bpe")
    tok.save(d)
    t = hf_tokenizers.ByteLevelBPETokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    t.add_special_tokens([EOT])
    return t


def test_transformers_gpt2_tokenizer_reads_our_files(tok, hf_gpt2, corpus):
    assert len(hf_gpt2) == tok.vocab_size and hf_gpt2.convert_tokens_to_ids(EOT) == tok.special_tokens[EOT]
    for text in SAMPLES + corpus.splitlines()[:500] + [corpus[:30000]]:
        ids = tok.encode(text, allowed_special="all").tolist()
        assert hf_gpt2.encode(text) == ids, text[:60]
        assert hf_gpt2.decode(ids, clean_up_tokenization_spaces=False) == text


@settings(max_examples=100)
@given(TEXTS)
def test_transformers_gpt2_tokenizer_any_text(tok, hf_gpt2, text):
    assert hf_gpt2.encode(text) == tok.encode(text).tolist()


def test_tokenizers_byte_level_bpe_reads_our_files(tok, hf_fast, corpus):
    for text in SAMPLES + corpus.splitlines()[:500] + [corpus[:30000]]:
        assert hf_fast.encode(text).ids == tok.encode(text, allowed_special="all").tolist(), text[:60]


@settings(max_examples=100)
@given(TEXTS)
def test_tokenizers_byte_level_bpe_any_text(tok, hf_fast, text):
    if EOT not in text:
        assert hf_fast.encode(text).ids == tok.encode(text).tolist()


def test_shakespeare_against_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    text = tinygpt.data.tiny_shakespeare()  # the copy shipped in the package
    tok = ByteLevelBPE.train(text[:300_000], 1000)
    tok.save(tmp_path)
    hf = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    lines = text.splitlines()
    for line in lines[::7] + ["\n".join(lines[-400:])]:
        assert hf.encode(line) == tok.encode(line).tolist(), line
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < 0.45 * len(text)


def test_missing_regex_package_is_named(monkeypatch):
    import tinygpt.tokenizers.bpe as bpe

    monkeypatch.setattr(bpe, "regex", None)
    monkeypatch.setattr(bpe, "_SPLIT", None)
    with pytest.raises(ImportError, match=r"needs the 'regex' package.*pip install regex"):
        ByteLevelBPE.train("abc", 300)
    assert tokenizers.CharTokenizer.from_text("abc").vocab_size == 3  # the char tokenizer does not need it


# ---------------------------------------------------------------- Hugging Face tokenizer directories


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("saved")
    tok.save(d, model_max_length=256)
    return d


def _copy(src, dst, skip=()):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name not in skip:
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_saved_config_files(tok, saved):
    config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "GPT2Tokenizer" and config["model_max_length"] == 256
    assert config["add_prefix_space"] is False and config["add_bos_token"] is False
    assert config["clean_up_tokenization_spaces"] is False and config["errors"] == "replace"
    assert config["eos_token"] == config["bos_token"] == config["unk_token"] == EOT and config["pad_token"] is None
    assert config["added_tokens_decoder"] == {str(tok.vocab_size - 1): {
        "content": EOT, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}}
    assert json.loads((saved / "special_tokens_map.json").read_text(encoding="utf-8")) == {
        "bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "additional_special_tokens": []}
    doc = json.loads((saved / "tokenizer.json").read_text(encoding="utf-8"))
    assert doc["model"]["vocab"] == tok.vocab and doc["model"]["merges"][0] == " ".join(tok.merges[0])
    loaded = ByteLevelBPE.load(saved)
    assert loaded == tok and loaded.model_max_length == 256 and loaded.roles == tok.roles


def test_special_tokens_roles_and_settings_round_trip(tmp_path):
    t = ByteLevelBPE.train(_corpus()[:20000], 400, special_tokens=("<|pad|>", EOT, "<|sep|>"))
    t = ByteLevelBPE(t.vocab, t.merges, list(t.special_tokens), errors="strict",
                     roles={"eos_token": EOT, "pad_token": "<|pad|>"})
    t.save(tmp_path)
    back = ByteLevelBPE.load(tmp_path)
    assert back == t and back.errors == "strict" and back.roles == {"eos_token": EOT, "pad_token": "<|pad|>"}
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["additional_special_tokens"] == ["<|sep|>"]
    assert ByteLevelBPE.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    with pytest.raises(UnicodeDecodeError):
        back.decode(back.encode("😀")[:1])  # errors='strict' from tokenizer_config.json
    assert "\ufffd" in back.decode(back.encode("😀")[:1], errors="replace")


def test_transformers_auto_tokenizer_loads_our_directory(tok, saved, corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    texts = SAMPLES + corpus.splitlines()[:300] + [corpus[:20000], f"a{EOT}b{EOT}"]
    for d in (saved, _copy(saved, tmp_path / "no-tokenizer-json", skip=("tokenizer.json",))):
        hf = transformers.AutoTokenizer.from_pretrained(str(d))
        assert len(hf) == tok.vocab_size and hf.eos_token_id == tok.eos_token_id == hf.bos_token_id
        assert hf.pad_token_id is None and hf.model_max_length == 256
        for text in texts:
            ids = tok.encode(text, allowed_special="all").tolist()
            assert hf.encode(text) == ids, text[:60]
            assert hf.decode(ids) == text  # clean_up_tokenization_spaces false: exact
    hf_tokenizers = pytest.importorskip("tokenizers")
    fast = hf_tokenizers.Tokenizer.from_file(str(saved / "tokenizer.json"))
    for text in texts:
        assert fast.encode(text).ids == tok.encode(text, allowed_special="all").tolist()


def test_reads_transformers_saved_directory(tok, saved, tmp_path):
    """transformers' own save (tokenizers >= 0.20 JSON: merges as pairs, a TemplateProcessing
    post-processor), with a special token added beyond the BPE vocab."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(saved))
    hf.add_special_tokens({"pad_token": "<|pad|>"})
    hf.save_pretrained(str(tmp_path))
    ours = ByteLevelBPE.load(tmp_path)
    assert ours.vocab_size == len(hf) == tok.vocab_size + 1 and ours.merges == tok.merges
    assert ours.special_tokens == {EOT: tok.vocab_size - 1, "<|pad|>": tok.vocab_size}
    assert ours.roles["pad_token"] == "<|pad|>" and ours.roles["eos_token"] == EOT
    text = f"x<|pad|>y{EOT} {MULTILINGUAL}"
    assert ours.encode(text, allowed_special="all").tolist() == hf.encode(text)


def _published_style(tok, path):
    """A tokenizer.json in the style of GPT-2's on the Hugging Face Hub (older tokenizers): merges
    as 'a b' strings, no model type, <|endoftext|> 'normalized', a ByteLevel post-processor."""
    doc = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "special": True, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True} for t, i in tok.special_tokens.items()],
        "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True},
        "model": {"dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "vocab": tok.vocab, "merges": [f"{a} {b}" for a, b in tok.merges]},
    }
    os.makedirs(path, exist_ok=True)
    (path / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    (path / "tokenizer_config.json").write_text('{"model_max_length": 1024}', encoding="utf-8")  # the Hub's gpt2
    return doc


def test_published_style_tokenizer_json(tok, corpus, tmp_path):
    _published_style(tok, tmp_path)
    loaded = ByteLevelBPE.load(tmp_path)
    assert loaded == tok and loaded.model_max_length == 1024 and loaded.eos_token_id == tok.vocab_size - 1
    hf_tokenizers = pytest.importorskip("tokenizers")
    fast = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in SAMPLES + [corpus[:20000]]:
        assert fast.encode(text).ids == loaded.encode(text).tolist()


@pytest.mark.parametrize("change, pattern", [
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer="),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "pre_tokenizer.add_prefix_space=True"),
    (lambda d: d["pre_tokenizer"].update(use_regex=False), "pre_tokenizer.use_regex=False"),
    (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": []}), "pre_tokenizer.type='Sequence'"),
    (lambda d: d.update(pre_tokenizer=None), "pre_tokenizer.type=None"),
    (lambda d: d["model"].update(type="WordPiece"), "model.type='WordPiece'"),
    (lambda d: d["model"].update(dropout=0.1), "model.dropout=0.1 .*random"),
    (lambda d: d["model"].update(continuing_subword_prefix="##"), "model.continuing_subword_prefix='##'"),
    (lambda d: d["model"].update(ignore_merges=True), "model.ignore_merges=True"),
    (lambda d: d["model"].update(merges={}), "model.vocab must be an object and model.merges a list"),
    (lambda d: d["added_tokens"][0].update(special=False), r"added_tokens\[0\] .*special=False"),
    (lambda d: d["added_tokens"][0].update(lstrip=True), r"added_tokens\[0\].lstrip=True"),
    (lambda d: d["added_tokens"][0].update(id=3), r"added_tokens\[0\] gives .* the id 3"),
    (lambda d: d.update(post_processor={"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": EOT, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}),
     "post_processor.single=.*adds no tokens"),
    (lambda d: d.update(post_processor={"type": "BertProcessing"}), "post_processor.type='BertProcessing'"),
    (lambda d: d.update(decoder={"type": "WordPiece"}), "decoder.type='WordPiece'"),
    (lambda d: d.update(truncation={"max_length": 8}), "truncation="),
    (lambda d: d["model"]["merges"].append("zz zz"), r"model.merges\[\d+\]: the symbol 'zz'"),
])
def test_tokenizer_json_settings_that_change_ids_are_refused(tok, tmp_path, change, pattern):
    doc = _published_style(tok, tmp_path)
    change(doc)
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match=f"tokenizer.json: {pattern}"):
        ByteLevelBPE.load(tmp_path)


@pytest.mark.parametrize("config, pattern", [
    ({"add_prefix_space": True}, "add_prefix_space=True is not supported"),
    ({"add_bos_token": True}, "add_bos_token=True is not supported"),
    ({"add_eos_token": "yes"}, "add_eos_token must be true or false"),
    ({"split_special_tokens": True}, "split_special_tokens=True .*disallowed_special"),
    ({"tokenizer_class": "RobertaTokenizer"}, "tokenizer_class='RobertaTokenizer' is not supported"),
    ({"model_max_length": "1024"}, "model_max_length must be a positive number"),
    ({"errors": 3}, "errors must be a string"),
    ({"errors": "nonsense"}, "errors must be a codec error handler"),
    ({"eos_token": "<|nope|>"}, r"tokenizer_config.json: the eos_token '<\|nope\|>' is not in the vocabulary"),
    ({"eos_token": 5}, "eos_token must be a string"),
    ({"added_tokens_decoder": {"3": {"content": EOT, "special": True}}}, r"added_tokens_decoder\['3'\] is '<\|endoftext"),
    ({"added_tokens_decoder": {"{id}": {"content": EOT, "special": False}}}, r"\.special=False is not supported"),
    ({"added_tokens_decoder": {"{id}": {"content": EOT, "rstrip": True}}}, r"\.rstrip=True is not supported"),
])
def test_tokenizer_config_checks(tok, saved, tmp_path, config, pattern):
    _copy(saved, tmp_path, skip=("special_tokens_map.json",))
    text = json.dumps(config).replace("{id}", str(tok.vocab_size - 1))
    (tmp_path / "tokenizer_config.json").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=pattern):
        ByteLevelBPE.load(tmp_path)


def test_special_tokens_map_declares_and_must_agree(tok, saved, tmp_path):
    _copy(saved, tmp_path, skip=("tokenizer.json",))
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": EOT, "lstrip": False, "normalized": True, "rstrip": False,
                                  "single_word": False}, "bos_token": None, "unk_token": None}), encoding="utf-8")
    loaded = ByteLevelBPE.load(tmp_path)
    assert loaded.special_tokens == tok.special_tokens and loaded.roles == {"eos_token": EOT}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": None}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"special_tokens_map.json: eos_token is '<\|endoftext\|>' but "
                                         r".*tokenizer_config.json says None"):
        ByteLevelBPE.load(tmp_path)


# ---------------------------------------------------------------- GPT-2's real files (50,257 tokens)

GPT2_DIR = os.environ.get("TINYGPT_GPT2_VOCAB_DIR")
needs_gpt2 = pytest.mark.skipif(not GPT2_DIR, reason="GPT-2's vocab.json and merges.txt: set TINYGPT_GPT2_VOCAB_DIR "
                                                    "(docs/tokenizers.md says where to get them; .ci/run does)")

CHINESE = ("道可道，非常道；名可名，非常名。无名天地之始，有名万物之母。故常无欲，以观其妙；常有欲，以观其徼。"
           "今天天气很好，我们去公园散步吧！机器学习是人工智能的一个分支，它让计算机从数据中学习。"
           "繁體中文：臺灣、學習、電腦。全角标点（）【】《》「」『』、。？！……——GPT-2模型有15亿个参数，"
           "训练数据约40GB。\n中文English混排123，2024年1月1日。\n")
EMOJI = ("👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 🏴‍☠️ flags 🇯🇵🇺🇸🇫🇷, keycaps 1️⃣ #️⃣ *️⃣, ❤️‍🔥 ❤️‍🩹, "
         "🧑🏿‍🤝‍🧑🏻 👍🏻👍🏼👍🏽👍🏾👍🏿 😀😃😄😁 🫠🫶🪿, text🙂text, ☺︎ vs ☺️, ✌🏾, 🤷‍♀️🤷‍♂️\n")
COMBINING = (unicodedata.normalize("NFD", "Crème brûlée, naïve coöperation, Ångström, Tiếng Việt, Straße") +
             " Z\u0364\u0351\u0313a\u0308\u0356\u032d\u0307l\u036e\u0312\u036bg\u030c\u0317\u031a o\u0319\u0314"
             " e\u0301 a\u0300\u0316 \u0301start x\u20dd \u1100\u1161\u11a8 नमस्ते दुनिया สวัสดีครับ "
             "السَّلَامُ عَلَيْكُمْ שָׁלוֹם \u0915\u094d\u0937 a\u200db\u200cc\n")
UNICODE_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029" \
                 "\u202f\u205f\u3000\x85\x0b\x0c\x1c\x1d\x1e\x1f\u180e\u200b\ufeff"
WHITESPACE = ("".join(f"a{' ' * k}b" for k in range(1, 21)) + "\ttab\t\tx \t y\r\nwindows\r\n\r\n  \n \n\n\n"
              "trailing   \nend  " + "".join(f"w{c}w {c}{c}x {c} \n{c}" for c in UNICODE_SPACES) + "  ")
CONTRACTIONS = ("I'm you're he's she'd we'll they've it's can't won't shouldn't've y'all 'tis o'clock rock 'n' "
                "roll. I'M YOU'RE HE'S SHE'D WE'LL THEY'VE IT'S CAN'T 'S 'T 'RE 'VE 'M 'LL 'D. It’s curly’s. "
                "'' ''s 's's 'x 'sss 'd've\n")
NUMBERS = ("0 1 12 123 1234 12345 123456789012345678901234567890 3.14159 -2.5e-10 1,000,000 1_000 0x1F 007 "
           "٠١٢٣٤٥٦٧٨٩ ۱۲۳ १२३ ½ ¾ ² ³ ⅓ Ⅻ ⑳ 一二三 2024-01-01 12:30:45 $1.99 €20 50% #1 v2.0.1\n")


def _gpt2_corpora():
    docs = "".join(open(p, encoding="utf-8").read() for p in
                   [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))))
    code = "".join(open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(ROOT, "src", "tinygpt", "*.py"))))
    return {"shakespeare": tinygpt.data.tiny_shakespeare(), "docs": docs, "code": code, "chinese": CHINESE * 3,
            "emoji": EMOJI, "combining": COMBINING, "whitespace": WHITESPACE, "contractions": CONTRACTIONS,
            "numbers": NUMBERS, "samples": "\n".join(SAMPLES), "mixed": MULTILINGUAL + EMOJI + CHINESE + WHITESPACE}


@pytest.fixture(scope="module")
def gpt2():
    return ByteLevelBPE.load(GPT2_DIR)


@needs_gpt2
def test_gpt2_files_are_the_real_ones(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.merges[:4] == [("Ġ", "t"), ("Ġ", "a"), ("h", "e"), ("i", "n")]
    assert gpt2.merges[-1] == ("Ġg", "azed") and gpt2.vocab["Ġgazed"] == 50255
    assert gpt2.special_tokens == {EOT: 50256} and gpt2.eos_token_id == 50256
    hashes = [m for m in gpt2.merges if m[0].startswith("#")]
    assert ("#", "#") in hashes and ("##", "##") in hashes and ("####", "####") in hashes and ("#$", "#$") in hashes
    assert len(hashes) == 8  # each one of the lines the old loader refused
    # ids that every GPT-2 user knows
    assert gpt2.encode("Hello world").tolist() == [15496, 995]
    assert gpt2.encode(" the").tolist() == [262] and gpt2.encode("!").tolist() == [0]


@pytest.fixture(scope="module")
def gpt2_hf():
    transformers = pytest.importorskip("transformers")
    hf_tokenizers = pytest.importorskip("tokenizers")
    fast = hf_tokenizers.ByteLevelBPETokenizer(os.path.join(GPT2_DIR, "vocab.json"), os.path.join(GPT2_DIR, "merges.txt"))
    fast.add_special_tokens([EOT])
    return fast, transformers.GPT2TokenizerFast(os.path.join(GPT2_DIR, "vocab.json"),
                                                os.path.join(GPT2_DIR, "merges.txt"))


@needs_gpt2
@pytest.mark.parametrize("name", list(_gpt2_corpora()))
def test_gpt2_ids_equal_hugging_face(gpt2, gpt2_hf, name):
    """Identical ids and an exact round trip; Hugging Face matches <|endoftext|> in text (the
    docs mention it), as encode(allowed_special='all') does."""
    text = _gpt2_corpora()[name]
    fast, gpt2_tokenizer = gpt2_hf
    ids = gpt2.encode(text, allowed_special="all").tolist()
    assert fast.encode(text).ids == ids
    part = text[:200_000]  # transformers' wrapper over the same Rust code: a slice is enough
    assert gpt2_tokenizer.encode(part) == gpt2.encode(part, allowed_special="all").tolist()
    assert gpt2.decode(ids) == text and gpt2.decode_bytes(ids) == text.encode("utf-8")  # exact round trip
    assert gpt2_tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
    for line in text.splitlines(keepends=True)[:200]:  # and line by line (other word boundaries)
        assert fast.encode(line).ids == gpt2.encode(line, allowed_special="all").tolist(), line


@needs_gpt2
@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_gpt2_ids_equal_hugging_face_any_text(gpt2, gpt2_hf, text):
    ids = gpt2.encode(text).tolist()
    if EOT not in text:
        assert gpt2_hf[0].encode(text).ids == ids
    assert gpt2.decode(ids) == text


@needs_gpt2
def test_gpt2_equals_openai_algorithm(gpt2):
    ref = GPT2Encoder(gpt2.vocab, gpt2.merges, specials=[EOT])
    corpora = _gpt2_corpora()
    for name in ("docs", "chinese", "emoji", "combining", "whitespace", "contractions", "numbers", "samples"):
        assert gpt2.encode(corpora[name], allowed_special="all").tolist() == ref.encode(corpora[name]), name


@needs_gpt2
def test_gpt2_endoftext(gpt2, gpt2_hf):
    fast, gpt2_tokenizer = gpt2_hf
    text = f"{EOT}First document.{EOT}Second{EOT}{EOT} third <|endoftext|>\n"
    ids = gpt2.encode(text, allowed_special="all").tolist()
    assert ids.count(50256) == 5 and ids[0] == 50256
    assert fast.encode(text).ids == ids and gpt2_tokenizer.encode(text) == ids and gpt2.decode(ids) == text
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at position 0"):
        gpt2.encode(text)
    plain = gpt2.encode(text, disallowed_special=()).tolist()  # the marker's text as ordinary tokens
    assert 50256 not in plain and gpt2.decode(plain) == text
    assert plain == GPT2Encoder(gpt2.vocab, gpt2.merges).encode(text)
    transformers = pytest.importorskip("transformers")
    split = transformers.GPT2TokenizerFast(os.path.join(GPT2_DIR, "vocab.json"), os.path.join(GPT2_DIR, "merges.txt"),
                                           split_special_tokens=True)
    assert split.encode(text) == plain


@needs_gpt2
def test_gpt2_directory_round_trips_through_transformers(gpt2, tmp_path):
    transformers = pytest.importorskip("transformers")
    gpt2.save(tmp_path / "ours", model_max_length=1024)
    assert ByteLevelBPE.load(tmp_path / "ours") == gpt2
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ours"))
    text = _gpt2_corpora()["mixed"] + f"{EOT}x"
    assert len(hf) == 50257 and hf.eos_token_id == 50256 and hf.model_max_length == 1024
    assert hf.encode(text) == gpt2.encode(text, allowed_special="all").tolist()
    hf.save_pretrained(str(tmp_path / "theirs"))  # transformers' own tokenizer.json (+ config)
    assert ByteLevelBPE.load(tmp_path / "theirs") == gpt2


@needs_gpt2
def test_gpt2_truncated_merges_is_an_error(tmp_path):
    with open(os.path.join(GPT2_DIR, "merges.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    (tmp_path / "merges.txt").write_text("\n".join(lines[:-11]) + "\n", encoding="utf-8")  # 49,990 merges
    (tmp_path / "vocab.json").write_bytes(open(os.path.join(GPT2_DIR, "vocab.json"), "rb").read())
    with pytest.raises(ValueError, match=r"vocab.json: line 1: token 'Commission': id 50246 is neither .* "
                                         r"of the 49990 merges.*\(and 9 more"):
        ByteLevelBPE.load(tmp_path)
