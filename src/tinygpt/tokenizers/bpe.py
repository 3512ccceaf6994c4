"""GPT-2's byte-level BPE: encode/decode any UTF-8 text, load and save GPT-2's files, train merges.

How GPT-2 tokenises (openai/gpt-2 src/encoder.py, which this follows step by step):

1. split the text into "words" with GPT-2's regex (`GPT2_SPLIT_PATTERN`, needs the `regex`
   package for \\p{L} / \\p{N});
2. write each word's UTF-8 bytes as printable characters with `bytes_to_unicode()` (a
   bijection of the 256 bytes onto 256 characters; the space becomes 'Ġ');
3. in each word, merge the adjacent pair of symbols with the lowest merge rank (its line in
   merges.txt), all its non-overlapping occurrences left to right, and repeat until no
   adjacent pair has a rank; the resulting symbols are looked up in vocab.json.

Ids: the 256 byte symbols in `bytes_to_unicode()` order (so '!' is 0, as in GPT-2), then one
id per new token made by a merge, then the special tokens (GPT-2: '<|endoftext|>' = 50256).
"""
from __future__ import annotations

import codecs
import heapq
import time
from collections import Counter

import numpy as np

try:
    import regex
except ImportError:  # declared in pyproject.toml; the message says what to do if it is absent
    regex = None


# The pre-tokenisation pattern of GPT-2 (encoder.py), verbatim.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
VOCAB_NAME = "vocab.json"
MERGES_NAME = "merges.txt"
MERGES_HEADER = "#version: 0.2"
ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")  # Hugging Face's names for the special tokens' parts


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character (a bijection on the 256 byte values).

    The printable Latin-1 bytes '!'..'~', '¡'..'¬', '®'..'ÿ' stand for themselves; the other
    68 bytes (controls, space, 0x7f-0xa0, soft hyphen) map to chr(256), chr(257), ... in
    byte order. The dict is in GPT-2's order: the printable bytes first.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
_BASE_SYMBOLS = list(_BYTE_TO_CHAR.values())  # id i -> its byte symbol (GPT-2's order)


def _need_regex():
    if regex is None:
        raise ImportError("ByteLevelBPE needs the 'regex' package for GPT-2's pre-tokenisation pattern "
                          "(Python's re has no \\p{L}): pip install regex")


def _split_pattern():
    _need_regex()
    global _SPLIT
    if _SPLIT is None:
        _SPLIT = regex.compile(GPT2_SPLIT_PATTERN)
    return _SPLIT


_SPLIT = None


_SYMBOL_TO_LATIN1 = {ord(c): b for c, b in _CHAR_TO_BYTE.items()}  # str.translate table: symbol -> chr(byte)


def _symbols_to_bytes(token: str) -> bytes:
    """The bytes a token of byte symbols stands for (every character must be one of the 256 symbols)."""
    return token.translate(_SYMBOL_TO_LATIN1).encode("latin-1")


class ByteLevelBPE:
    """GPT-2's byte-level BPE tokenizer.

    Parameters
    ----------
    vocab : dict str -> int
        Token (in byte symbols, or a special token's text) -> id; ids must be 0..len-1.
        It must hold the 256 byte symbols and the result of every merge.
    merges : sequence of (str, str) or "a b" strings
        The merges, lowest rank (applied first) first.
    special_tokens : sequence of str, optional
        The special tokens (encoded as one id when allowed, see `encode`). Every vocab entry
        must be a byte symbol, the result of a merge or a declared special token; anything else
        is an error (a truncated merges.txt, or a merges.txt of another vocabulary). None:
        GPT-2's one special token, '<|endoftext|>', when the vocab has it.
    roles : dict, optional
        Which special token plays which part: keys 'bos_token', 'eos_token', 'unk_token',
        'pad_token' (Hugging Face's names); values special tokens or None. None: GPT-2's
        convention, '<|endoftext|>' as bos, eos and unk when it is a special token.
    errors : str
        `decode`'s default for bytes that are not UTF-8 ('replace', as GPT-2; 'strict', ...).
    model_max_length : int, optional
        The context length of the model the tokenizer belongs to (recorded, written to
        tokenizer_config.json; `encode` does not truncate).
    """

    def __init__(self, vocab, merges, special_tokens=None, *, roles=None, errors="replace", model_max_length=None,
                 _where=None):
        _need_regex()
        try:
            codecs.lookup_error(errors)
        except (LookupError, TypeError):
            raise ValueError(f"ByteLevelBPE: errors must be a codec error handler ('replace', 'strict', ...), "
                             f"got {errors!r}") from None
        if model_max_length is not None and (isinstance(model_max_length, bool) or
                                             not isinstance(model_max_length, int) or model_max_length < 1):
            raise ValueError(f"ByteLevelBPE: model_max_length must be a positive int or None, got {model_max_length!r}")
        self.errors, self.model_max_length = errors, model_max_length
        where_vocab = _where[0] if _where else (lambda token: f"vocab entry {token!r}")
        where_merge = _where[1] if _where else (lambda rank: f"merges[{rank}]")
        if not isinstance(vocab, dict):
            raise ValueError(f"ByteLevelBPE: vocab must be a dict token -> id, got {type(vocab).__name__}")
        for token, i in vocab.items():
            if not isinstance(token, str) or not token:
                raise ValueError(f"{where_vocab(token)}: tokens must be non-empty strings")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(vocab):
                raise ValueError(f"{where_vocab(token)}: id {i!r} is not an int in [0, {len(vocab)}) "
                                 f"(ids must be 0..{len(vocab) - 1}, each once)")
        if len(set(vocab.values())) != len(vocab):
            seen = {}
            for token, i in vocab.items():
                if i in seen:
                    raise ValueError(f"{where_vocab(token)}: id {i} is also the id of {seen[i]!r}")
                seen[i] = token
        for b, sym in _BYTE_TO_CHAR.items():
            if sym not in vocab:
                raise ValueError(f"ByteLevelBPE: the vocab lacks the byte symbol {sym!r} (byte 0x{b:02x}); "
                                 f"a byte-level vocab must hold all 256")
        self.vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))  # token -> id, in id order
        self.merges: list[tuple[str, str]] = []
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}  # (id a, id b) -> (rank, id of a+b)
        made = set()
        for rank, merge in enumerate(merges):
            if isinstance(merge, str):
                parts = merge.split(" ")
            else:
                parts = list(merge)
            if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
                raise ValueError(f"{where_merge(rank)}: expected two symbols separated by one space, got {merge!r}")
            a, b = parts
            for part in (a, b):
                if part not in vocab:
                    raise ValueError(f"{where_merge(rank)}: the symbol {part!r} of merge '{a} {b}' is not in the vocab")
            if a + b not in vocab:
                raise ValueError(f"{where_merge(rank)}: the merge '{a} {b}' makes {a + b!r}, which is not in the vocab")
            key = (vocab[a], vocab[b])
            if key in self._ranks:
                raise ValueError(f"{where_merge(rank)}: the merge '{a} {b}' repeats {where_merge(self._ranks[key][0])}")
            self._ranks[key] = (rank, vocab[a + b])
            self.merges.append((a, b))
            made.add(a + b)
        natural = set(_BASE_SYMBOLS) | made
        if special_tokens is None:
            special_tokens = [ENDOFTEXT] if ENDOFTEXT in vocab and ENDOFTEXT not in natural else []
        elif isinstance(special_tokens, str):
            raise ValueError(f"ByteLevelBPE: special_tokens must be a sequence of strings, got the string "
                             f"{special_tokens!r}")
        special_tokens = list(special_tokens)
        for t in special_tokens:
            if not isinstance(t, str) or t not in vocab:
                raise ValueError(f"ByteLevelBPE: the special token {t!r} is not in the vocab")
            if t in natural:
                raise ValueError(f"ByteLevelBPE: the special token {t!r} is also an ordinary token "
                                 f"(a byte symbol or a merge result)")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"ByteLevelBPE: repeated special tokens in {special_tokens}")
        declared = set(special_tokens)
        stray = [t for t in self.vocab if t not in natural and t not in declared]
        if stray:
            more = f" (and {len(stray) - 1} more entries like it)" if len(stray) > 1 else ""
            raise ValueError(
                f"{where_vocab(stray[0])}: id {vocab[stray[0]]} is neither a byte symbol, nor made by one of the "
                f"{len(self.merges)} merges, nor a declared special token{more}. The merges do not match the vocab "
                f"(a truncated merges file, or one of another vocabulary?); declare real special tokens with "
                f"special_tokens=[...] (or in tokenizer_config.json)")
        self.special_tokens: dict[str, int] = {t: vocab[t] for t in sorted(special_tokens, key=vocab.get)}
        self.roles = self._check_roles(roles)
        self._base_ids = [vocab[_BYTE_TO_CHAR[b]] for b in range(256)]  # byte value -> id
        self._id_bytes: list[bytes] = [b""] * len(vocab)  # id -> the bytes it stands for
        for token, i in vocab.items():
            self._id_bytes[i] = token.encode("utf-8") if token in self.special_tokens else _symbols_to_bytes(token)
        self._cache: dict[str, list[int]] = {}
        self.cache_size = 1 << 16
        self._special_re = {}

    def _check_roles(self, roles) -> dict:
        if roles is None:
            return {r: ENDOFTEXT for r in ("bos_token", "eos_token", "unk_token")} \
                if ENDOFTEXT in self.special_tokens else {}
        if not isinstance(roles, dict):
            raise ValueError(f"ByteLevelBPE: roles must be a dict role -> special token, got {type(roles).__name__}")
        out = {}
        for role, token in roles.items():
            if role not in ROLES:
                raise ValueError(f"ByteLevelBPE: unknown role {role!r} (roles: {', '.join(ROLES)})")
            if token is None:
                continue
            if token not in self.special_tokens:
                raise ValueError(f"ByteLevelBPE: the {role} {token!r} is not a special token of this tokenizer "
                                 f"(it has {list(self.special_tokens)})")
            out[role] = token
        return out

    # ---------------------------------------------------------------- basic properties

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eos_token_id(self) -> int | None:
        """The id of the end-of-text token (roles['eos_token']; GPT-2: 50256), or None."""
        eos = self.roles.get("eos_token")
        return None if eos is None else self.special_tokens[eos]

    def __len__(self):
        return self.vocab_size

    def __repr__(self):
        return (f"ByteLevelBPE(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")

    def __eq__(self, other):
        return (isinstance(other, ByteLevelBPE) and self.vocab == other.vocab and self.merges == other.merges
                and self.special_tokens == other.special_tokens and self.roles == other.roles)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` stands for (a special token: its UTF-8 text)."""
        self._check_ids([i])
        return self._id_bytes[i]

    # ---------------------------------------------------------------- encoding

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-tokenised word: merges by rank, lowest first (GPT-2's loop)."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        ranks = self._ranks
        ids = [self._base_ids[b] for b in word.encode("utf-8")]
        while len(ids) > 1:
            best = None
            for pair in zip(ids, ids[1:]):
                r = ranks.get(pair)
                if r is not None and (best is None or r[0] < best[0]):
                    best, best_pair = r, pair
            if best is None:
                break
            a, b = best_pair
            new_id = best[1]
            out, k, n = [], 0, len(ids)
            while k < n:  # every non-overlapping occurrence of (a, b), left to right
                if k < n - 1 and ids[k] == a and ids[k + 1] == b:
                    out.append(new_id)
                    k += 2
                else:
                    out.append(ids[k])
                    k += 1
            ids = out
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _encode_ordinary(self, text: str, out: list) -> None:
        for word in _split_pattern().findall(text):
            out.extend(self._bpe(word))

    def _resolve_special(self, which, name: str) -> set:
        if which == "all":
            return set(self.special_tokens)
        if isinstance(which, str):
            raise ValueError(f"ByteLevelBPE.encode: {name} must be 'all' or a collection of special tokens, "
                             f"got the string {which!r}")
        which = set(which)
        unknown = which - set(self.special_tokens)
        if unknown:
            raise ValueError(f"ByteLevelBPE.encode: {name} names {sorted(unknown)}, which are not special tokens "
                             f"of this tokenizer (it has {list(self.special_tokens)})")
        return which

    def _special_regex(self, tokens: frozenset):
        r = self._special_re.get(tokens)
        if r is None:
            # longest first, so a special token that contains another one wins
            alternatives = sorted(tokens, key=lambda t: (-len(t), t))
            r = regex.compile("|".join(regex.escape(t) for t in alternatives))
            self._special_re[tokens] = r
        return r

    def encode(self, text: str, allowed_special=(), disallowed_special="all") -> np.ndarray:
        """Token ids of `text` as an int64 array.

        Special tokens (like tiktoken): those in `allowed_special` ('all' or a collection)
        become their single id; one of `disallowed_special` ('all' = every special token not
        allowed; () = none) found in the text raises ValueError; any other special token's
        text is encoded as plain text (several ordinary tokens).
        """
        if not isinstance(text, str):
            raise TypeError(f"ByteLevelBPE.encode: expected str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"ByteLevelBPE.encode: the text is not encodable as UTF-8: {exc.reason} "
                             f"({text[exc.start]!r}, U+{ord(text[exc.start]):04X}) at position {exc.start}") from None
        allowed = self._resolve_special(allowed_special, "allowed_special")
        disallowed = (set(self.special_tokens) - allowed if disallowed_special == "all"
                      else self._resolve_special(disallowed_special, "disallowed_special"))
        if disallowed:
            m = self._special_regex(frozenset(disallowed)).search(text)
            if m:
                raise ValueError(
                    f"ByteLevelBPE.encode: the text holds the special token {m.group()!r} at position {m.start()}; "
                    f"pass allowed_special={{{m.group()!r}}} (or 'all') to encode it as its id "
                    f"{self.special_tokens[m.group()]}, or disallowed_special=() to encode it as plain text")
        ids: list[int] = []
        if allowed:
            start = 0
            for m in self._special_regex(frozenset(allowed)).finditer(text):
                self._encode_ordinary(text[start:m.start()], ids)
                ids.append(self.special_tokens[m.group()])
                start = m.end()
            self._encode_ordinary(text[start:], ids)
        else:
            self._encode_ordinary(text, ids)
        return np.array(ids, dtype=np.int64)

    # ---------------------------------------------------------------- decoding

    def _check_ids(self, ids):
        if hasattr(ids, "numpy") and not isinstance(ids, np.ndarray):
            ids = ids.numpy()
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ByteLevelBPE.decode: expected a 1-D sequence of ints, got shape "
                             f"{ids.shape} dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if bad.size:
            raise ValueError(f"ByteLevelBPE.decode: id {int(ids[bad[0]])} at position {int(bad[0])} "
                             f"is not in the vocab (ids are 0..{self.vocab_size - 1})")
        return ids.tolist()

    def decode_bytes(self, ids) -> bytes:
        """The bytes of a 1-D sequence of ids (list, numpy array or Tensor)."""
        table = self._id_bytes
        return b"".join(table[i] for i in self._check_ids(ids))

    def decode(self, ids, errors: str | None = None) -> str:
        """The text of a 1-D sequence of ids. Generated ids can cut a character's UTF-8 bytes
        apart; `errors` ('replace', as GPT-2; 'strict'; ...; None: self.errors) says what to do then."""
        return self.decode_bytes(ids).decode("utf-8", errors=self.errors if errors is None else errors)

    # ---------------------------------------------------------------- files

    @classmethod
    def from_files(cls, vocab_json, merges_txt, special_tokens=None, **kwargs) -> "ByteLevelBPE":
        """Load GPT-2 format files (vocab.json: token -> id; merges.txt: an optional '#version'
        first line, then one 'a b' merge per line, by rank). special_tokens=None: '<|endoftext|>'
        if the vocab has it; any other entry that no merge makes must be declared. Malformed or
        mismatched files raise ValueError naming the file and line. kwargs: roles, errors,
        model_max_length (see the class)."""
        from . import pretrained  # noqa: PLC0415 - pretrained imports this module

        vocab, where_vocab = pretrained.read_vocab_json(vocab_json)
        merges, where_merge = pretrained.read_merges_txt(merges_txt)
        return cls(vocab, merges, special_tokens, _where=(where_vocab, where_merge), **kwargs)

    @classmethod
    def load(cls, directory, special_tokens=None) -> "ByteLevelBPE":
        """The tokenizer of a Hugging Face / GPT-2 directory: tokenizer.json if present, else
        vocab.json + merges.txt; special tokens and their roles from tokenizer_config.json and
        special_tokens_map.json (see tinygpt/tokenizers/pretrained.py). special_tokens: use
        these instead of the declared ones."""
        from . import pretrained  # noqa: PLC0415

        return pretrained.load(cls, directory, special_tokens)

    def save(self, directory, model_max_length: int | None = None) -> None:
        """Write vocab.json, merges.txt (GPT-2's format), tokenizer.json, tokenizer_config.json and
        special_tokens_map.json into `directory`, each atomically: transformers' AutoTokenizer and
        tokenizers' Tokenizer.from_file read them offline."""
        from . import pretrained  # noqa: PLC0415

        pretrained.save(self, directory, model_max_length)

    def to_dict(self) -> dict:
        """Everything as JSON-able data (for checkpoint metadata)."""
        d = {"type": "bpe", "vocab": dict(self.vocab), "merges": [f"{a} {b}" for a, b in self.merges],
             "special_tokens": list(self.special_tokens), "roles": dict(self.roles)}
        if self.errors != "replace":
            d["errors"] = self.errors
        if self.model_max_length is not None:
            d["model_max_length"] = self.model_max_length
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ByteLevelBPE":
        if not isinstance(d, dict) or d.get("type") != "bpe" or not isinstance(d.get("vocab"), dict) \
                or not isinstance(d.get("merges"), list) or not isinstance(d.get("special_tokens"), list):
            raise ValueError("ByteLevelBPE.from_dict: expected {'type': 'bpe', 'vocab': dict, 'merges': list, "
                             "'special_tokens': list}")
        return cls(d["vocab"], d["merges"], d["special_tokens"], roles=d.get("roles"),
                   errors=d.get("errors", "replace"), model_max_length=d.get("model_max_length"))

    # ---------------------------------------------------------------- training

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(ENDOFTEXT,), show_progress: bool = False,
              verbose: bool = False) -> "ByteLevelBPE":
        """Learn merges from `text` until the vocab has `vocab_size` tokens (specials included).

        The text is cut at the special tokens (they take no part in the merges) and split
        with GPT-2's pattern; pairs of adjacent symbols are counted within words, weighted by
        the word's frequency (each position counts, so 'aaa' has the pair (a, a) twice). Each
        step merges the most frequent pair; ties go to the pair whose (left bytes, right
        bytes) sorts first, so training is deterministic. Counts are updated only in the words
        that hold the merged pair (an index pair -> words, and a lazily updated max-heap).
        Training stops early when no pair is left (every word is one token).
        """
        _need_regex()
        special_tokens = list(special_tokens)
        for t in special_tokens:
            if not isinstance(t, str) or not t:
                raise ValueError(f"ByteLevelBPE.train: special tokens must be non-empty strings, got {t!r}")
            if t in _CHAR_TO_BYTE:
                raise ValueError(f"ByteLevelBPE.train: the special token {t!r} is a byte symbol")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"ByteLevelBPE.train: repeated special tokens in {special_tokens}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
                or vocab_size < 256 + len(special_tokens):
            raise ValueError(f"ByteLevelBPE.train: vocab_size must be an int >= 256 + {len(special_tokens)} "
                             f"special tokens = {256 + len(special_tokens)}, got {vocab_size!r}")
        if not isinstance(text, str):
            raise TypeError(f"ByteLevelBPE.train: expected str, got {type(text).__name__}")
        t0 = time.perf_counter()

        # words and their frequencies, as lists of base ids
        if special_tokens:
            pieces = regex.split("|".join(regex.escape(t) for t in sorted(special_tokens, key=lambda t: -len(t))), text)
        else:
            pieces = [text]
        split = _split_pattern()
        counts_by_word = Counter()
        for piece in pieces:
            counts_by_word.update(split.findall(piece))
        vocab = {sym: i for i, sym in enumerate(_BASE_SYMBOLS)}
        id_bytes = [_symbols_to_bytes(s) for s in _BASE_SYMBOLS]
        base = [vocab[_BYTE_TO_CHAR[b]] for b in range(256)]
        words, freqs = [], []
        for w, f in counts_by_word.items():
            ids = [base[b] for b in w.encode("utf-8")]
            if len(ids) > 1:
                words.append(ids)
                freqs.append(f)

        pair_count: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set] = {}
        for wi, (ids, f) in enumerate(zip(words, freqs)):
            for pair in zip(ids, ids[1:]):
                pair_count[pair] = pair_count.get(pair, 0) + f
                where.setdefault(pair, set()).add(wi)
        heap = [(-c, id_bytes[p[0]], id_bytes[p[1]], p) for p, c in pair_count.items()]
        heapq.heapify(heap)

        merges, merged = [], set()
        target = vocab_size - len(special_tokens)
        bar = None
        if show_progress:
            from tqdm import tqdm
            bar = tqdm(total=target - len(vocab), desc="bpe merges", unit="merge", dynamic_ncols=True)
        symbol = list(_BASE_SYMBOLS)  # id -> token string
        while len(vocab) < target and heap:
            neg, _, _, pair = heapq.heappop(heap)
            current = pair_count.get(pair, 0)
            if current <= 0:
                continue
            if -neg != current:  # stale: the count went down since this entry was pushed
                heapq.heappush(heap, (-current, id_bytes[pair[0]], id_bytes[pair[1]], pair))
                continue
            a, b = pair
            token = symbol[a] + symbol[b]
            new_id = vocab.get(token)
            if new_id is None:  # a merge can remake an existing token (e.g. a+bc after ab+c)
                new_id = len(vocab)
                vocab[token] = new_id
                symbol.append(token)
                id_bytes.append(id_bytes[a] + id_bytes[b])
                if bar is not None:
                    bar.update(1)
            if pair not in merged:  # a pair can only come back when a token was remade (above)
                merges.append((symbol[a], symbol[b]))
                merged.add(pair)
            grown = set()
            for wi in where.pop(pair, ()):
                ids = words[wi]
                f = freqs[wi]
                out, k, n, hit = [], 0, len(ids), False
                while k < n:
                    if k < n - 1 and ids[k] == a and ids[k + 1] == b:
                        out.append(new_id)
                        k += 2
                        hit = True
                    else:
                        out.append(ids[k])
                        k += 1
                if not hit:  # the index is lazy: this word lost the pair to an earlier merge
                    continue
                for p in zip(ids, ids[1:]):
                    pair_count[p] -= f
                for p in zip(out, out[1:]):
                    pair_count[p] = pair_count.get(p, 0) + f
                    grown.add(p)
                    s = where.get(p)
                    if s is None:
                        where[p] = {wi}
                    else:
                        s.add(wi)
                words[wi] = out
            pair_count.pop(pair, None)
            for p in grown:
                c = pair_count.get(p, 0)
                if c > 0:
                    heapq.heappush(heap, (-c, id_bytes[p[0]], id_bytes[p[1]], p))
        if bar is not None:
            bar.close()
        for t in special_tokens:
            if t in vocab:
                raise ValueError(f"ByteLevelBPE.train: the special token {t!r} is also a learned token")
            vocab[t] = len(vocab)
        tok = cls(vocab, merges, special_tokens)
        if verbose:
            print(f"ByteLevelBPE.train: {len(merges)} merges, vocab {tok.vocab_size}, "
                  f"{len(text):,} characters in {time.perf_counter() - t0:.1f} s")
        return tok

