"""A tokenizer directory as Hugging Face writes it: read and write ByteLevelBPE's files.

Reading (`load`): the vocab and merges come from ``tokenizer.json`` when the directory has
one (as transformers' AutoTokenizer prefers), else from ``vocab.json`` + ``merges.txt``
(GPT-2's own format). The special tokens are the ones *declared*: ``tokenizer.json``'s
special added tokens, ``tokenizer_config.json``'s ``added_tokens_decoder`` and its
bos/eos/unk/pad tokens, and ``special_tokens_map.json``; with none of those files, GPT-2's
'<|endoftext|>' (GPT2Tokenizer's default). Settings that change the ids and that tinygpt does
not implement (a prefix space, a BOS added to every text, a normalizer, another pre-tokenizer,
BPE dropout, non-special added tokens, ...) raise ValueError naming the file and the field.

Writing (`save`): vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and
special_tokens_map.json, each atomically: what transformers 4 and 5 (`AutoTokenizer`) and
tokenizers (`Tokenizer.from_file`) read.
"""
from __future__ import annotations

import json
import os

from ..checkpoint import atomic_write
from .bpe import ENDOFTEXT, MERGES_HEADER, MERGES_NAME, ROLES, VOCAB_NAME

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# tokenizer classes whose ids are GPT-2's byte-level BPE with nothing added around the text
_TOKENIZER_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast", "PreTrainedTokenizerFast", "TokenizersBackend")
_NO_LIMIT = 10 ** 29  # transformers writes int(1e30) as model_max_length for "no limit"


# ----------------------------------------------------------------------------- reading JSON
def read_json(path):
    """(parsed JSON, raw text) of `path`; ValueError names the file, line and column of bad JSON."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    try:
        return json.loads(raw), raw
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})") from None


def _where_token(path, raw, start=0):
    """A function token -> 'path: line N: token ...' (its first appearance at or after `start`)."""
    def where(token):
        for form in (json.dumps(token, ensure_ascii=False), json.dumps(token)):
            pos = raw.find(form, start) if isinstance(token, str) else -1
            if pos >= 0:
                return f"{path}: line {raw.count(chr(10), 0, pos) + 1}: token {token!r}"
        return f"{path}: token {token!r}"
    return where


def read_vocab_json(path):
    """(vocab dict, where) of a GPT-2 vocab.json (token -> id)."""
    vocab, raw = read_json(path)
    if not isinstance(vocab, dict):
        raise ValueError(f"{os.fspath(path)}: line 1: expected a JSON object token -> id, got {type(vocab).__name__}")
    return vocab, _where_token(os.fspath(path), raw)


def read_merges_txt(path):
    """(merges as 'a b' lines, where) of a merges.txt. Only a first line that starts with
    '#version' is a header: later lines starting with '#' are merges ('# #', '#$ #$' in GPT-2's)."""
    path = os.fspath(path)
    merges, lines = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if lineno == 1 and line.startswith("#version"):
                continue
            if not line:  # a blank line (the file's end): no merge
                continue
            merges.append(line)
            lines.append(lineno)
    return merges, lambda rank: f"{path}: line {lines[rank]}"


# ----------------------------------------------------------------------------- tokenizer.json
def _refuse(where, field, value, why):
    raise ValueError(f"{where}: {field}={value!r} is not supported by tinygpt ({why})")


def _expect(where, field, value, allowed, why):
    if value not in allowed:
        _refuse(where, field, value, why)


def _check_byte_level(where, field, component, kinds):
    if component is None and None in kinds:
        return
    if not isinstance(component, dict) or component.get("type") not in kinds:
        kind = component.get("type") if isinstance(component, dict) else component
        _refuse(where, f"{field}.type", kind, f"supported: {', '.join(map(str, kinds))}")


def _added_token(where, entry, what):
    """(content, special) of an added-token dict, refusing the matching options tinygpt lacks."""
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not entry["content"]:
        raise ValueError(f"{where}: {what} must be an object with a non-empty 'content' string, got {entry!r}")
    for flag in ("single_word", "lstrip", "rstrip"):
        value = entry.get(flag, False)
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {what}.{flag} must be true or false, got {value!r}")
        if value:
            _refuse(where, f"{what}.{flag}", value, "special tokens are matched exactly, as GPT-2's")
    special = entry.get("special", True)
    if not isinstance(special, bool):
        raise ValueError(f"{where}: {what}.special must be true or false, got {special!r}")
    return entry["content"], special


def read_tokenizer_json(path):
    """(vocab, merges, special tokens, where_vocab, where_merge) of a Hugging Face tokenizer.json,
    after checking that it is GPT-2's byte-level BPE with nothing that changes the ids."""
    path = os.fspath(path)
    doc, raw = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise ValueError(f"{path}: expected a tokenizers JSON object with a 'model'")
    model = doc["model"]
    _expect(path, "model.type", model.get("type", "BPE"), ("BPE",), "only byte-level BPE")
    if model.get("dropout") not in (None, 0, 0.0):
        _refuse(path, "model.dropout", model.get("dropout"), "BPE dropout makes encoding random")
    for field in ("continuing_subword_prefix", "end_of_word_suffix"):
        _expect(path, f"model.{field}", model.get(field), (None, ""), "GPT-2 has none")
    for field in ("byte_fallback", "ignore_merges"):
        _expect(path, f"model.{field}", model.get(field, False), (False,), "GPT-2's BPE applies every merge")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise ValueError(f"{path}: model.vocab must be an object and model.merges a list")
    if doc.get("normalizer") is not None:
        _refuse(path, "normalizer", doc["normalizer"], "GPT-2 encodes the text as it is")
    pre = doc.get("pre_tokenizer")
    _check_byte_level(path, "pre_tokenizer", pre, ("ByteLevel",))
    _expect(path, "pre_tokenizer.add_prefix_space", pre.get("add_prefix_space", True), (False,),
            "GPT-2 adds no space before the text")
    _expect(path, "pre_tokenizer.use_regex", pre.get("use_regex", True), (True,), "GPT-2 splits with its pattern")
    post = doc.get("post_processor")
    _check_byte_level(path, "post_processor", post, (None, "ByteLevel", "TemplateProcessing"))
    if isinstance(post, dict) and post["type"] == "TemplateProcessing":
        single = post.get("single")
        if single != [{"Sequence": {"id": "A", "type_id": 0}}]:
            _refuse(path, "post_processor.single", single, "tinygpt adds no tokens around the text")
    _check_byte_level(path, "decoder", doc.get("decoder"), (None, "ByteLevel"))
    for field in ("truncation", "padding"):
        if doc.get(field) is not None:
            _refuse(path, field, doc[field], "encode returns every token of the text")
    where_vocab = _where_token(path, raw, max(raw.find('"vocab"', raw.find('"model"')), 0))
    vocab = dict(vocab)
    specials = []
    added = doc.get("added_tokens", [])
    if not isinstance(added, list):
        raise ValueError(f"{path}: added_tokens must be a list, got {type(added).__name__}")
    for k, entry in enumerate(added):
        content, special = _added_token(path, entry, f"added_tokens[{k}]")
        i = entry.get("id")
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{path}: added_tokens[{k}].id must be an int, got {i!r}")
        if not special:
            _refuse(path, f"added_tokens[{k}] ({content!r}).special", False,
                    "only special tokens are matched outside BPE")
        if content in vocab and vocab[content] != i:
            raise ValueError(f"{path}: added_tokens[{k}] gives {content!r} the id {i}, model.vocab {vocab[content]}")
        vocab.setdefault(content, i)  # an added token beyond the model's vocab takes its id there
        specials.append(content)
    pairs = []
    for rank, m in enumerate(merges):
        if isinstance(m, list):  # tokenizers >= 0.20 writes [a, b]; older files "a b"
            if len(m) != 2:
                raise ValueError(f"{path}: model.merges[{rank}]: expected two symbols, got {m!r}")
            pairs.append(tuple(m))
        else:
            pairs.append(m)
    return vocab, pairs, specials, where_vocab, lambda rank: f"{path}: model.merges[{rank}]"


# ----------------------------------------------------------------------------- tokenizer_config.json
def _token_text(where, field, value):
    """A special token given as "text" or as an AddedToken object {"content": "text", ...}."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        return _added_token(where, value, field)[0]
    raise ValueError(f"{where}: {field} must be a string, an object with 'content', or null, got {value!r}")


def _read_special_declarations(path, doc, declared, roles, role_source):
    """Add the special tokens `doc` (tokenizer_config.json or special_tokens_map.json) declares."""
    for role in ROLES:
        if role in doc:
            token = _token_text(path, role, doc[role])
            if role in roles and roles[role] != token:
                raise ValueError(f"{path}: {role} is {token!r} but {role_source[role]} says {roles[role]!r}")
            roles[role], role_source[role] = token, path
            if token is not None:
                declared.append(token)
    for field in ("additional_special_tokens", "extra_special_tokens"):
        extra = doc.get(field)
        if extra is None:
            continue
        values = list(extra.values()) if isinstance(extra, dict) else extra  # transformers 5: may be named
        if not isinstance(values, list):
            raise ValueError(f"{path}: {field} must be a list, got {type(extra).__name__}")
        declared.extend(t for t in (_token_text(path, field, v) for v in values) if t is not None)


def read_tokenizer_config(directory, vocab):
    """(declared special tokens, roles, settings, GPT-2 defaults?) from tokenizer_config.json and
    special_tokens_map.json; the last is False where the tokenizer class has no GPT-2 defaults."""
    declared, roles, role_source, settings, gpt2_defaults = [], {}, {}, {}, True
    path = os.path.join(directory, TOKENIZER_CONFIG)
    if os.path.isfile(path):
        doc, _ = read_json(path)
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
        cls_name = doc.get("tokenizer_class")
        if cls_name is not None and cls_name not in _TOKENIZER_CLASSES:
            _refuse(path, "tokenizer_class", cls_name, f"tinygpt reads GPT-2's tokenizer: {', '.join(_TOKENIZER_CLASSES)}")
        gpt2_defaults = cls_name in (None, "GPT2Tokenizer", "GPT2TokenizerFast")
        for field, why in (("add_prefix_space", "GPT-2 adds no space before the text"),
                           ("add_bos_token", "GPT-2 adds no token before the text"),
                           ("add_eos_token", "GPT-2 adds no token after the text")):
            value = doc.get(field, False)
            if not isinstance(value, bool):
                raise ValueError(f"{path}: {field} must be true or false, got {value!r}")
            _expect(path, field, value, (False,), why)
        for field in ("clean_up_tokenization_spaces", "split_special_tokens"):
            value = doc.get(field, False)
            if not isinstance(value, bool):
                raise ValueError(f"{path}: {field} must be true or false, got {value!r}")
        if doc.get("split_special_tokens"):
            _refuse(path, "split_special_tokens", True, "use encode(text, disallowed_special=()) for that")
        errors = doc.get("errors", "replace")
        if not isinstance(errors, str):
            raise ValueError(f"{path}: errors must be a string such as 'replace', got {errors!r}")
        settings["errors"] = errors
        limit = doc.get("model_max_length")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 1:
                raise ValueError(f"{path}: model_max_length must be a positive number, got {limit!r}")
            settings["model_max_length"] = int(limit) if limit < _NO_LIMIT else None
        decoder = doc.get("added_tokens_decoder", {})
        if not isinstance(decoder, dict):
            raise ValueError(f"{path}: added_tokens_decoder must be an object id -> token, got {type(decoder).__name__}")
        for key, entry in decoder.items():
            what = f"added_tokens_decoder[{key!r}]"
            content, special = _added_token(path, entry, what)
            if not key.isdigit():
                raise ValueError(f"{path}: {what}: the key must be a token id")
            if content not in vocab or vocab[content] != int(key):
                raise ValueError(f"{path}: {what} is {content!r}, which is not id {key} of the vocab "
                                 f"(id {vocab.get(content)})")
            if not special:
                _refuse(path, f"{what} ({content!r}).special", False, "only special tokens are matched outside BPE")
            declared.append(content)
        _read_special_declarations(path, doc, declared, roles, role_source)
    path = os.path.join(directory, SPECIAL_TOKENS_MAP)
    if os.path.isfile(path):
        doc, _ = read_json(path)
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
        _read_special_declarations(path, doc, declared, roles, role_source)
    for role, token in roles.items():
        if token is not None and token not in vocab:
            raise ValueError(f"{role_source[role]}: the {role} {token!r} is not in the vocabulary")
    return declared, roles, settings, gpt2_defaults


# ----------------------------------------------------------------------------- the directory
def load(cls, directory, special_tokens=None):
    """`cls` (ByteLevelBPE) from a tokenizer directory (see the module docstring)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"ByteLevelBPE.load: no directory {directory!r}")
    tokenizer_json = os.path.join(directory, TOKENIZER_JSON)
    if os.path.isfile(tokenizer_json):
        vocab, merges, specials, where_vocab, where_merge = read_tokenizer_json(tokenizer_json)
    else:
        vocab_json, merges_txt = os.path.join(directory, VOCAB_NAME), os.path.join(directory, MERGES_NAME)
        missing = [p for p in (vocab_json, merges_txt) if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"ByteLevelBPE.load: {directory!r} has no {TOKENIZER_JSON} and no "
                                    f"{' or '.join(map(os.path.basename, missing))} (a tokenizer directory holds "
                                    f"{TOKENIZER_JSON}, or {VOCAB_NAME} and {MERGES_NAME})")
        vocab, where_vocab = read_vocab_json(vocab_json)
        merges, where_merge = read_merges_txt(merges_txt)
        specials = []
    declared, roles, settings, gpt2_defaults = read_tokenizer_config(directory, vocab)
    if gpt2_defaults and ENDOFTEXT in vocab and (special_tokens is None or ENDOFTEXT in special_tokens):
        for role in ("bos_token", "eos_token", "unk_token"):  # GPT2Tokenizer's defaults, where not declared
            roles.setdefault(role, ENDOFTEXT)
    if special_tokens is None:
        special_tokens = list(dict.fromkeys(specials + declared + [t for t in roles.values() if t is not None]))
    return cls(vocab, merges, special_tokens, roles=roles, _where=(where_vocab, where_merge), **settings)


def _write_text(path, text: str) -> None:
    data = text.encode("utf-8")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def tokenizer_json(tok) -> dict:
    """The tokenizers JSON of `tok`: byte-level BPE as GPT-2's tokenizer.json on the Hub."""
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in tok.special_tokens.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {"type": "ByteLevel", **byte_level, "trim_offsets": False},
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": tok.vocab, "merges": [f"{a} {b}" for a, b in tok.merges]},
    }


def save(tok, directory, model_max_length=None) -> None:
    """Write `tok` to `directory` (created if needed) in every form transformers and tokenizers read."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"ByteLevelBPE.save: {directory!r} exists and is not a directory")
    os.makedirs(directory, exist_ok=True)
    limit = model_max_length if model_max_length is not None else tok.model_max_length
    roles = {role: tok.roles.get(role) for role in ROLES}  # null where absent: no GPT2Tokenizer default creeps in
    config = {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for t, i in tok.special_tokens.items()},
        **roles,
        "additional_special_tokens": [t for t in tok.special_tokens if t not in roles.values()],
        "clean_up_tokenization_spaces": False, "errors": tok.errors,
        "model_max_length": int(1e30) if limit is None else limit, "tokenizer_class": "GPT2Tokenizer",
    }
    files = {
        VOCAB_NAME: json.dumps(tok.vocab, ensure_ascii=False, indent=1) + "\n",
        MERGES_NAME: "".join([MERGES_HEADER + "\n"] + [f"{a} {b}\n" for a, b in tok.merges]),
        TOKENIZER_JSON: json.dumps(tokenizer_json(tok), ensure_ascii=False) + "\n",
        TOKENIZER_CONFIG: json.dumps(config, ensure_ascii=False, indent=2) + "\n",
        SPECIAL_TOKENS_MAP: json.dumps({**{r: t for r, t in roles.items() if t is not None},
                                        "additional_special_tokens": config["additional_special_tokens"]},
                                       ensure_ascii=False, indent=2) + "\n",
    }
    for name, text in files.items():
        _write_text(os.path.join(directory, name), text)
