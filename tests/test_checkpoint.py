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
