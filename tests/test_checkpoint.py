"""Checkpoints: round trip, atomic writes, damaged files, no pickle."""
import dataclasses
import json
import os
import pickle

import numpy as np
import pytest
from safetensors.numpy import save_file

import tinygpt as tg
import tinygpt.checkpoint as ckpt
from tinygpt import random as tg_random
from tinygpt.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from tinygpt.data import BatchSampler, CharTokenizer
from tinygpt.nn import Module, Parameter
from tinygpt.optim import SGD, AdamW


@dataclasses.dataclass
class Cfg:
    vocab_size: int = 65
    n_embd: int = 8
    dropout: float = 0.1
    betas: tuple = (0.9, 0.95)


class Tiny(Module):
    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = Parameter(rng.standard_normal((4, 3)).astype(np.float32))
        self.b = Parameter(rng.standard_normal(3).astype(np.float64))  # float64 must survive
        self.e = Parameter(rng.standard_normal((2, 5)).astype(np.float32))


def train(model, opt, steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = tg.Tensor(rng.standard_normal(p.shape).astype(p.dtype))
        model.e.grad = None  # a parameter without grad: no optimiser state
        opt.step()


def make_opt(model):
    return AdamW([{"params": [model.w, model.e], "weight_decay": 0.1},
                  {"params": [model.b], "weight_decay": 0.0, "lr": 0.01}], lr=0.1, betas=(0.9, 0.95))


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a trained model + optimiser + sampler + tokenizer, and the live objects."""
    tg_random.manual_seed(1234)
    model, tok = Tiny(), CharTokenizer.from_text("hello world")
    opt = make_opt(model)
    train(model, opt, 3)
    sampler = BatchSampler(np.arange(100), 2, 8, seed=5)
    sampler.sample()
    tg_random.generator().random(3)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, step=3, config=Cfg(), tokenizer=tok, sampler=sampler,
                    extra={"best_val": 1.25, "note": "é"})
    return path, model, opt, sampler


def test_round_trip_everything(saved):
    path, model, opt, sampler = saved
    rng_draw = tg_random.generator().random(4)  # what the RNG gives right after the save
    expected_batch = sampler.sample()

    model2 = Tiny(seed=99)
    opt2 = make_opt(model2)
    opt2.param_groups[0]["lr"] = 5.0
    sampler2 = BatchSampler(np.arange(100), 2, 8, seed=0)
    meta = load_checkpoint(path, model2, opt2, sampler=sampler2)

    assert meta["step"] == 3
    assert meta["config"] == {"vocab_size": 65, "n_embd": 8, "dropout": 0.1, "betas": [0.9, 0.95]}
    assert CharTokenizer.from_dict(meta["tokenizer"]).chars == " dehlorw"
    assert meta["extra"] == {"best_val": 1.25, "note": "é"}
    for (name, p), (_, q) in zip(model.named_parameters(), model2.named_parameters()):
        assert q.dtype == p.dtype, name
        np.testing.assert_array_equal(p.data, q.data)
    assert model2.b.dtype == np.float64
    assert [g["lr"] for g in opt2.param_groups] == [0.1, 0.01]
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95)
    for p, q in zip(model.parameters(), model2.parameters()):
        if id(p) not in opt.state:
            assert id(q) not in opt2.state
            continue
        s, s2 = opt.state[id(p)], opt2.state[id(q)]
        assert s2["step"] == s["step"] == 3 and isinstance(s2["step"], int)
        for key in ("exp_avg", "exp_avg_sq"):
            assert s2[key].dtype == s[key].dtype
            np.testing.assert_array_equal(s[key], s2[key])
    np.testing.assert_array_equal(tg_random.generator().random(4), rng_draw)  # RNG restored
    x, y = sampler2.sample()
    np.testing.assert_array_equal(x, expected_batch[0])

    train(model, opt, 2, seed=7)  # identical next steps
    train(model2, opt2, 2, seed=7)
    for p, q in zip(model.parameters(), model2.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_read_metadata_and_model_only_load(saved):
    path, model, *_ = saved
    meta = read_checkpoint_metadata(path)
    assert meta["step"] == 3 and meta["config"]["n_embd"] == 8 and meta["format_version"] == 1
    assert meta["sampler"]["batch_size"] == 2
    state = tg_random.get_rng_state()
    model2 = Tiny(seed=5)
    load_checkpoint(path, model2, restore_rng=False)
    assert tg_random.get_rng_state() == state
    np.testing.assert_array_equal(model2.w.data, model.w.data)
    assert load_checkpoint(path)["step"] == 3  # nothing to load into: metadata only


def test_sgd_and_no_optimizer(tmp_path):
    model = Tiny()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, 2)
    save_checkpoint(tmp_path / "a.safetensors", model, opt)
    model2 = Tiny(seed=3)
    opt2 = SGD(model2.parameters(), lr=0.1, momentum=0.9)
    load_checkpoint(tmp_path / "a.safetensors", model2, opt2)
    train(model, opt, 1, seed=2)
    train(model2, opt2, 1, seed=2)
    np.testing.assert_array_equal(model.w.data, model2.w.data)
    with pytest.raises(CheckpointError, match="holds SGD state, not AdamW"):
        load_checkpoint(tmp_path / "a.safetensors", model2, make_opt(model2))

    save_checkpoint(tmp_path / "b.safetensors", model)
    with pytest.raises(CheckpointError, match="b.safetensors has no optimiser state"):
        load_checkpoint(tmp_path / "b.safetensors", model2, opt2)
    with pytest.raises(CheckpointError, match="no sampler state"):
        load_checkpoint(tmp_path / "b.safetensors", sampler=BatchSampler(np.arange(100), 2, 8))


def test_model_mismatch_names_the_checkpoint(saved):
    path, *_ = saved

    class Other(Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(np.zeros((3, 4), np.float32))
            self.b = Parameter(np.zeros(3))
            self.z = Parameter(np.zeros(1, np.float32))

    with pytest.raises(CheckpointError, match="ckpt.safetensors does not fit the model") as info:
        load_checkpoint(path, Other())
    assert "z" in str(info.value) and "e" in str(info.value) and "w" in str(info.value)
    opt = AdamW(Tiny().parameters())  # one group, the checkpoint has two
    with pytest.raises(CheckpointError, match="does not fit the optimiser.*parameter groups"):
        load_checkpoint(path, Tiny(), opt)
    with pytest.raises(CheckpointError, match="does not fit the sampler"):
        load_checkpoint(path, sampler=BatchSampler(np.arange(100), 3, 8))


def test_save_rejects_non_json_metadata(tmp_path):
    with pytest.raises(TypeError, match="extra must be JSON-serialisable"):
        save_checkpoint(tmp_path / "x.safetensors", Tiny(), extra={"f": object()})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_previous_checkpoint(saved, monkeypatch, exc):
    path, model, opt, _ = saved
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise exc

    monkeypatch.setattr(ckpt, "save_file", half_then_fail)
    with pytest.raises(type(exc)):
        save_checkpoint(path, model, opt, step=4)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temp file left
    monkeypatch.undo()
    assert read_checkpoint_metadata(path)["step"] == 3


def test_failed_rename_leaves_no_temp_file(saved, monkeypatch):
    path, model, *_ = saved
    before = path.read_bytes()
    monkeypatch.setattr(ckpt.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, model, step=9)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(path.parent) == [path.name]


def test_overwrite_replaces_atomically(saved):
    path, model, opt, _ = saved
    save_checkpoint(path, model, opt, step=10)
    assert read_checkpoint_metadata(path)["step"] == 10
    assert os.listdir(path.parent) == [path.name]
    save_checkpoint(path.parent / "new" / "dir" / "c.safetensors", model)  # directories are created
    assert read_checkpoint_metadata(path.parent / "new" / "dir" / "c.safetensors")["step"] == 0


# ---------------------------------------------------------------- damaged and foreign files


def check_rejected(path, data, match=""):
    path.write_bytes(data)
    model = Tiny()
    try:
        load_checkpoint(path, model, make_opt(model))
    except CheckpointError as exc:
        assert str(path) in str(exc) and match in str(exc), str(exc)
        assert isinstance(exc, ValueError)
    else:
        pytest.fail(f"{len(data)} bytes loaded without a CheckpointError")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors: no such file"):
        load_checkpoint(tmp_path / "nope.safetensors", Tiny())
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint_metadata(tmp_path / "nope.safetensors")


def test_truncated_files(saved):
    path, *_ = saved
    data = path.read_bytes()
    bad = path.with_name("bad.safetensors")
    for n in (0, 4, 8, 20, len(data) // 2, len(data) - 1):
        check_rejected(bad, data[:n])
    check_rejected(bad, data + b"\0")


def test_random_bytes(saved):
    path, *_ = saved
    rng = np.random.default_rng(0)
    bad = path.with_name("bad.safetensors")
    for n in (1, 16, 1000, len(path.read_bytes())):
        check_rejected(bad, rng.integers(0, 256, n, dtype=np.uint8).tobytes())


def test_every_flipped_header_byte_is_detected(saved):
    path, *_ = saved
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    bad = path.with_name("bad.safetensors")
    for i in range(header_end):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)  # every byte, each bit position in turn
        check_rejected(bad, bytes(flipped))


def test_flipped_data_bytes_are_detected(saved):
    path, *_ = saved
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    bad = path.with_name("bad.safetensors")
    for i in range(header_end, len(data), 7):
        flipped = bytearray(data)
        flipped[i] ^= 0x10
        check_rejected(bad, bytes(flipped), match="corrupted tensor data")


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    check_rejected(path, path.read_bytes(), match="not a tinygpt checkpoint")
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"format": "pt"})
    check_rejected(path, path.read_bytes(), match="not a tinygpt checkpoint")


def test_newer_format_version_is_refused(saved, monkeypatch):
    path, model, *_ = saved
    monkeypatch.setattr(ckpt, "FORMAT_VERSION", 2)
    save_checkpoint(path, model)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="format version 2"):
        read_checkpoint_metadata(path)


# ---------------------------------------------------------------- no pickle


def test_no_pickle_anywhere(saved, monkeypatch):
    path, model, opt, sampler = saved

    def forbidden(*a, **k):
        raise AssertionError("pickle must not be used")

    for name in ("load", "loads", "dump", "dumps", "Unpickler", "Pickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    save_checkpoint(path, model, opt, step=5, sampler=sampler, tokenizer=CharTokenizer.from_text("ab"))
    assert load_checkpoint(path, Tiny(), make_opt(Tiny()), sampler=sampler)["step"] == 5
    header = path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")]
    json.loads(header)  # the whole header is plain JSON


# ---------------------------------------------------------------- resume exactness on a real GPT

RESUME_SCRIPT = '''
import json, sys
import tinygpt as tg
from tinygpt.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from tinygpt.data import BatchSampler, CharTokenizer
from tinygpt.nn.utils import clip_grad_norm_
from tinygpt.optim import CosineWarmupScheduler

TEXT = "To be, or not to be, that is the question:\\nWhether 'tis nobler in the mind to suffer\\n"


def setup(config=None, tokenizer=None):
    tok = CharTokenizer.from_dict(tokenizer) if tokenizer else CharTokenizer.from_text(TEXT)
    cfg = tg.GPTConfig(**config) if config else tg.GPTConfig(
        vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.2)
    model = tg.GPT(cfg)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-2, betas=(0.9, 0.95))
    sched = CosineWarmupScheduler(opt, max_lr=1e-2, min_lr=1e-3, warmup_steps=2, decay_steps=8)
    sampler = BatchSampler(tok.encode(TEXT), batch_size=4, block_size=8, seed=1)
    return cfg, tok, model, opt, sched, sampler


def train(model, opt, sched, sampler, steps):
    losses = []
    for _ in range(steps):
        x, y = sampler.sample()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.item()).hex())
    return losses


if __name__ == "__main__":  # resume from sys.argv[1], train sys.argv[2] steps, print the losses
    meta = read_checkpoint_metadata(sys.argv[1])
    cfg, tok, model, opt, sched, sampler = setup(meta["config"], meta["tokenizer"])
    meta = load_checkpoint(sys.argv[1], model, opt, sampler=sampler)
    sched.load_state_dict(meta["extra"]["scheduler"])
    print(json.dumps(train(model, opt, sched, sampler, int(sys.argv[2]))))
'''


def test_resume_is_bit_exact_in_a_fresh_process(tmp_path):
    import runpy
    import subprocess
    import sys

    if not hasattr(tg, "GPT"):
        pytest.skip("tinygpt.GPT is not available")
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    mod = runpy.run_path(str(script))
    n = 4

    tg.manual_seed(0)
    full = mod["train"](*mod["setup"]()[2:], 2 * n)

    tg.manual_seed(0)
    cfg, tok, model, opt, sched, sampler = mod["setup"]()
    first = mod["train"](model, opt, sched, sampler, n)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, step=n, config=cfg, tokenizer=tok, sampler=sampler,
                    extra={"scheduler": sched.state_dict()})
    assert first == full[:n]

    repo = os.path.dirname(os.path.dirname(os.path.abspath(tg.__file__)))
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, str(script), str(path), str(n)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    assert resumed == full[n:]  # float.hex strings: bit-for-bit
    assert len(set(full)) == len(full)  # the losses do move


# ---------------------------------------------------------------- hostile but well-formed checkpoints
def rewrite(src, dest, mutate=None, tensors=None):
    """Copy checkpoint `src` to `dest` with its JSON metadata changed by mutate(meta) and tensors replaced
    ({name: array, or None to drop}), checksums recomputed: a well-formed file with hostile contents."""
    from safetensors import safe_open

    with safe_open(str(src), "np") as f:
        raw = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    keys = ckpt._JSON_KEYS + getattr(ckpt, "_OPTIONAL_JSON_KEYS", ("quantization",))
    meta = {k: json.loads(raw[k]) for k in keys if k in raw}
    if mutate is not None:
        mutate(meta)
    raw.update({k: json.dumps(v) for k, v in meta.items()})  # NaN / Infinity pass through as JSON extensions
    for name, value in (tensors or {}).items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    raw["meta_sha256"] = ckpt._meta_digest(raw)
    raw["data_sha256"] = ckpt._data_digest(arrays)
    save_file(arrays, str(dest), metadata=raw)
    return dest


def _group(i, **kw):
    return lambda m: m["optimizer"]["param_groups"][i].update(kw)


def _state(index, **kw):
    return lambda m: m["optimizer"]["state"].__setitem__(index, {**m["optimizer"]["state"].get(index, {}), **kw})


_W = np.zeros((4, 3), np.float32)
HOSTILE = {  # name: (mutate the metadata, replace tensors)
    "step a string": (lambda m: m.update(step="3"), None),
    "step negative": (lambda m: m.update(step=-1), None),
    "step a float": (lambda m: m.update(step=1.5), None),
    "step a bool": (lambda m: m.update(step=True), None),
    "step null": (lambda m: m.update(step=None), None),
    "step beyond int64": (lambda m: m.update(step=2 ** 70), None),
    "config a list": (lambda m: m.update(config=[1, 2]), None),
    "tokenizer a number": (lambda m: m.update(tokenizer=5), None),
    "extra a string": (lambda m: m.update(extra="x"), None),
    "optimizer a string": (lambda m: m.update(optimizer="adam"), None),
    "optimizer class a number": (lambda m: m["optimizer"].update({"class": 5}), None),
    "optimizer without state": (lambda m: m["optimizer"].pop("state"), None),
    "param_groups a dict": (lambda m: m["optimizer"].update(param_groups={}), None),
    "group not a dict": (lambda m: m["optimizer"]["param_groups"].__setitem__(0, 5), None),
    "group params a string": (_group(0, params="all"), None),
    "group params repeated": (_group(0, params=[0, 0]), None),
    "group params out of range": (_group(1, params=[99]), None),
    "lr a string": (_group(0, lr="fast"), None),
    "lr NaN": (_group(0, lr=float("nan")), None),
    "lr infinite": (_group(1, lr=float("inf")), None),
    "lr negative": (_group(0, lr=-1.0), None),
    "lr null": (_group(0, lr=None), None),
    "betas one value": (_group(0, betas=[0.9]), None),
    "betas a string": (_group(0, betas="ab"), None),
    "beta2 above 1": (_group(1, betas=[0.9, 1.5]), None),
    "eps a bool": (_group(0, eps=True), None),
    "weight_decay a list": (_group(0, weight_decay=[0.1]), None),
    "unknown group option": (_group(0, foo=1), None),
    "state a list": (lambda m: m["optimizer"].update(state=[]), None),
    "state index not a number": (lambda m: m["optimizer"]["state"].__setitem__("abc", {}), None),
    "state index out of range": (lambda m: m["optimizer"]["state"].__setitem__("99", {"step": 3}), None),
    "state entry a list": (lambda m: m["optimizer"]["state"].__setitem__("0", [1]), None),
    "state step a string": (_state("0", step="3"), None),
    "state step negative": (_state("0", step=-2), None),
    "state step a float": (_state("1", step=2.5), None),
    "state unknown key": (_state("0", foo=1), None),
    "state missing exp_avg": (None, {"optim/0/exp_avg": None}),
    "exp_avg wrong shape": (None, {"optim/0/exp_avg": np.zeros((2, 2), np.float32)}),
    "exp_avg integers": (None, {"optim/0/exp_avg": np.zeros((4, 3), np.int32)}),
    "exp_avg NaN": (None, {"optim/0/exp_avg": np.full((4, 3), np.nan, np.float32)}),
    "exp_avg_sq negative": (None, {"optim/0/exp_avg_sq": -np.ones((4, 3), np.float32)}),
    "optim tensor without state": (None, {"optim/9/exp_avg": _W}),
    "stray tensor": (None, {"weights/w": _W}),
    "model tensor of ints": (None, {"model/w": np.zeros((4, 3), np.int32)}),
    "model tensor wrong shape": (None, {"model/w": np.zeros((3, 4), np.float32)}),
    "rng a string": (lambda m: m.update(rng="x"), None),
    "rng another generator": (lambda m: m["rng"].update(bit_generator="MT19937"), None),
    "rng state garbage": (lambda m: m["rng"].update(state="x"), None),
    "rng state too large": (lambda m: m["rng"]["state"].update(state=2 ** 200), None),
    "rng has_uint32 a string": (lambda m: m["rng"].update(has_uint32="x"), None),
    "sampler a string": (lambda m: m.update(sampler="x"), None),
    "sampler empty": (lambda m: m.update(sampler={}), None),
    "sampler other batch size": (lambda m: m["sampler"].update(batch_size=3), None),
    "sampler rng garbage": (lambda m: m["sampler"].update(rng={"bit_generator": "PCG64", "state": 5}), None),
    "quantization bits 3": (lambda m: m.update(quantization={"bits": 3, "group_size": None, "embeddings": True}),
                            None),
}


def _snapshot(model, opt, sampler):
    return ({k: v.copy() for k, v in model.state_dict().items()},
            {i: {k: (v.copy() if hasattr(v, "shape") else v) for k, v in s.items()} for i, s in opt.state.items()},
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
            json.dumps(sampler.state_dict()), json.dumps(tg_random.get_rng_state()))


def _same(a, b):
    assert a[0].keys() == b[0].keys() and all(np.array_equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        assert a[1][i].keys() == b[1][i].keys()
        assert all(np.array_equal(a[1][i][k], b[1][i][k]) for k in a[1][i])
    assert a[2:] == b[2:]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_metadata_raises_checkpoint_error_and_changes_nothing(saved, tmp_path, case):
    """Each case is a well-formed safetensors file (valid checksums) with hostile contents: load_checkpoint
    raises CheckpointError (not TypeError / ValueError / KeyError, and not later at opt.step()) and leaves
    the model, optimiser, sampler and global RNG exactly as they were."""
    path, *_ = saved
    mutate, tensors = HOSTILE[case]
    bad = rewrite(path, tmp_path / "bad.safetensors", mutate, tensors)
    model = Tiny(seed=4)
    opt = make_opt(model)
    train(model, opt, 2, seed=3)  # some optimiser state of its own
    sampler = BatchSampler(np.arange(100), 2, 8, seed=9)
    before = _snapshot(model, opt, sampler)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad, model, opt, sampler=sampler, restore_rng=True)
    assert type(info.value) is CheckpointError and str(bad) in str(info.value)
    _same(before, _snapshot(model, opt, sampler))
    train(model, opt, 1)  # still usable
    assert all(np.isfinite(p.data).all() for p in model.parameters())


def test_a_valid_rewrite_still_loads(saved, tmp_path):
    """The rewrite helper itself produces loadable files (so the hostile cases fail for their contents)."""
    path, model, opt, sampler = saved
    good = rewrite(path, tmp_path / "good.safetensors", lambda m: m.update(step=11))
    model2, sampler2 = Tiny(seed=2), BatchSampler(np.arange(100), 2, 8)
    opt2 = make_opt(model2)
    assert load_checkpoint(good, model2, opt2, sampler=sampler2)["step"] == 11
    np.testing.assert_array_equal(model2.w.data, model.w.data)


def _gpt_checkpoint(tmp_path, **cfg):
    config = tg.GPTConfig(**{**dict(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=8), **cfg})
    path = tmp_path / "gpt.safetensors"
    save_checkpoint(path, tg.GPT(config), config=config, tokenizer=CharTokenizer("abcdefghijklmnop"))
    return path


@pytest.mark.parametrize("field,value,match", [
    ("n_layer", 10 ** 9, "n_layer=1000000000 but the file holds 2 layers"),
    ("vocab_size", 10 ** 9, "describes .* parameters, the file holds"),
    ("n_embd", 2 ** 40, "describes .* parameters, the file holds"),
    ("block_size", 10 ** 9, "describes .* parameters, the file holds"),
    ("n_expert", 10 ** 6, "describes .* parameters, the file holds"),
    ("n_head", "2", "invalid model config"),
    ("dropout", "x", "invalid model config"),
    ("sparse_pattern", 5, "invalid model config"),
])
def test_absurd_config_is_refused_before_allocating(tmp_path, field, value, match):
    """model_config / load_model compare the config with the tensors in the file before building anything:
    an absurd size fails at once, in a few MB, instead of allocating until the machine runs out."""
    import tracemalloc

    from tinygpt.checkpoint import load_model, model_config

    path = _gpt_checkpoint(tmp_path)
    bad = rewrite(path, tmp_path / "bad.safetensors", lambda m: m["config"].update({field: value}))
    tracemalloc.start()
    with pytest.raises(CheckpointError, match=match):
        load_model(bad)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2 ** 20, peak
    with pytest.raises(CheckpointError, match=match):
        model_config(bad)


def test_sizes_not_in_the_file_are_bounded(tmp_path):
    from tinygpt.checkpoint import model_config

    path = _gpt_checkpoint(tmp_path, position="sinusoidal")
    bad = rewrite(path, tmp_path / "bad.safetensors", lambda m: m["config"].update(block_size=10 ** 9))
    with pytest.raises(CheckpointError, match="sinusoidal positions exceed"):
        model_config(bad)
    path = _gpt_checkpoint(tmp_path, n_expert=2)
    bad = rewrite(path, tmp_path / "bad.safetensors", lambda m: m["config"].update(capacity_factor=1e12))
    with pytest.raises(CheckpointError, match="capacity_factor .* exceeds n_expert"):
        model_config(bad)
    assert model_config(path).n_expert == 2


# ---------------------------------------------------------------- temp files of killed writers
KILLED_WRITER = '''
import sys, time
import numpy as np
import tinygpt.checkpoint as ck
from safetensors.numpy import save_file


def stall(tensors, filename, metadata=None):
    save_file(tensors, filename, metadata=metadata)
    print("written", flush=True)
    time.sleep(600)  # killed here, before the rename


ck.save_file = stall
ck.save_checkpoint(sys.argv[1], type("M", (), {"state_dict": lambda self: {"w": np.ones(1000, np.float32)}})())
'''


def _start_writer(tmp_path, target):
    import subprocess
    import sys

    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(tg.__file__)))}
    proc = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "written"
    return proc


def _temps(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


@pytest.mark.parametrize("next_op", ["save", "load"])
def test_temp_file_of_a_killed_save_is_removed_by_the_next_save_or_load(saved, tmp_path, next_op):
    import signal

    path, model, *_ = saved
    proc = _start_writer(tmp_path, path)
    try:
        temps = _temps(path.parent)
        assert len(temps) == 1 and temps[0].startswith(".ckpt.safetensors.")
        # while its writer lives, the temp file is in use: nobody removes it
        assert read_checkpoint_metadata(path)["step"] == 3
        save_checkpoint(path.parent / "other.safetensors", model)
        assert _temps(path.parent) == temps
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 in the middle of the save
        proc.wait()
    assert _temps(path.parent) == temps and read_checkpoint_metadata(path)["step"] == 3  # the old file is intact
    if next_op == "save":
        save_checkpoint(path, model, step=4)
    else:
        load_checkpoint(path, Tiny(), restore_rng=False)
    assert _temps(path.parent) == []


def test_cleanup_removes_only_our_temp_files(tmp_path):
    keep = ["notes.tmp", ".x.tmp", ".ckpt.safetensors.1234567.tmp", ".ckpt.safetensors.ABCDEF12.tmp", "a.12345678.tmp"]
    for name in keep:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".dir.12345678.tmp").mkdir()
    (tmp_path / "target").write_text("precious")
    os.symlink(tmp_path / "target", tmp_path / ".link.12345678.tmp")
    (tmp_path / ".ckpt.safetensors.0123abcd.tmp").write_text("left by a killed save")
    removed = ckpt.remove_stale_temp_files(tmp_path)
    assert removed == [str(tmp_path / ".ckpt.safetensors.0123abcd.tmp")]
    assert sorted(os.listdir(tmp_path)) == sorted(keep + [".dir.12345678.tmp", "target", ".link.12345678.tmp"])
    assert (tmp_path / "target").read_text() == "precious"
    assert ckpt.remove_stale_temp_files(tmp_path / "missing") == []
