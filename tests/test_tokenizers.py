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
SHAKESPEARE = next((p for p in (os.environ.get("TINYGPT_SHAKESPEARE", ""),
                                os.path.join(ROOT, "data", "tinyshakespeare.txt"),
                                "/work/shared/data/tinyshakespeare.txt") if p and os.path.isfile(p)), None)
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
    return ByteLevelBPE(vocab, merges), vocab


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
    # merges.txt without the #version line (some tools omit it) reads the same
    (tmp_path / "merges.txt").write_text("\n".join(lines[1:]), encoding="utf-8")
    assert ByteLevelBPE.load(tmp_path) == tok


def test_char_tokenizer_is_re_exported():
    assert tokenizers.CharTokenizer is tinygpt.data.CharTokenizer is CharTokenizer
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
        (vocab, "#version: 0.2\na b\n#x\n", f"{merges_path}: line 3: a '#' line"),
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


def test_special_tokens_detected_or_given():
    _, vocab = _hand_made([("a", "b")], specials=["<|x|>"])
    assert ByteLevelBPE(vocab, ["a b"]).special_tokens == {"<|x|>": 257}
    assert ByteLevelBPE(vocab, ["a b"], special_tokens=["<|x|>"]).special_tokens == {"<|x|>": 257}
    with pytest.raises(ValueError, match="'<|y|>' is not in the vocab".replace("|", r"\|")):
        ByteLevelBPE(vocab, ["a b"], special_tokens=["<|y|>"])
    with pytest.raises(ValueError, match="'ab' is also an ordinary token"):
        ByteLevelBPE(vocab, ["a b"], special_tokens=["ab"])
    with pytest.raises(ValueError, match=r"vocab entry '<\|x\|>' is neither"):
        ByteLevelBPE(vocab, ["a b"], special_tokens=[])


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


@pytest.mark.skipif(SHAKESPEARE is None, reason="Tiny Shakespeare not found (set TINYGPT_SHAKESPEARE=path)")
def test_shakespeare_against_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    with open(SHAKESPEARE, encoding="utf-8") as f:
        text = f.read()
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
