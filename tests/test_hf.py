"""Hugging Face GPT-2 interop: GPT.from_pretrained / save_pretrained (tinygpt/models/hf.py).

Oracles: transformers' GPT2LMHeadModel (skipped without transformers) in both directions, and,
without it, a NumPy float64 GPT-2 forward written here in HF's own layout (Conv1D x @ W + b on
(in, out) weights) that reads the safetensors file directly.
Tolerances: float32 logits atol 1e-4; loss rtol 1e-5; grads rtol 1e-3 + atol 1e-4 x max |grad|.
"""
import json
import math
import os
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tinygpt import GPT, GPTConfig
from tinygpt.checkpoint import CheckpointError
from tinygpt.models import hf

pytestmark = pytest.mark.usefixtures("seeded")
FILES = ["config.json", "generation_config.json", "model.safetensors"]


def tiny(**kw):
    base = dict(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64)
    return GPTConfig(**{**base, **kw})


def randomize(model, seed=0, std=0.1):
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        mean = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0
        p.data[...] = rng.normal(mean, std if p.ndim >= 2 else 0.05, p.shape)
    return model


def tokens(V=100, B=2, T=17, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(B, T))


# ------------------------------------------------------------------ NumPy GPT-2 in HF's layout
def hf_numpy_forward(tensors, config, idx):
    """float64 GPT-2 straight from HF tensors (Conv1D: y = x @ W + b, W (in, out))."""
    t = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in tensors.items()}
    C, nh, eps = config["n_embd"], config["n_head"], config.get("layer_norm_epsilon", 1e-5)
    B, T = idx.shape

    def ln(x, n):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[n + ".weight"] + t[n + ".bias"]

    def gelu(x):
        if config.get("activation_function", "gelu_new") == "gelu":
            return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    x = t["wte.weight"][idx] + t["wpe.weight"][:T]
    mask = np.tril(np.ones((T, T), bool))
    for i in range(config["n_layer"]):
        p = f"h.{i}."
        h = ln(x, p + "ln_1") @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]
        q, k, v = (a.reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3) for a in np.split(h, 3, axis=-1))
        att = np.where(mask, q @ k.transpose(0, 1, 3, 2) / math.sqrt(C // nh), -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        y = (att / att.sum(-1, keepdims=True)) @ v
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
        h = gelu(ln(x, p + "ln_2") @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"])
        x = x + h @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    head = tensors["lm_head.weight"].astype(np.float64) if "lm_head.weight" in tensors else t["wte.weight"]
    return ln(x, "ln_f") @ head.T


def write_hf_dir(path, tensors, config):
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def random_hf_files(path, prefix=True, seed=0, **cfg_kw):
    """A GPT-2 in HF's layout made with NumPy: (in, out) weights, causal-mask buffers, optional prefix."""
    config = {"model_type": "gpt2", "vocab_size": 50, "n_positions": 16, "n_embd": 16, "n_layer": 2, "n_head": 2,
              **cfg_kw}
    C, V, T = config["n_embd"], config["vocab_size"], config["n_positions"]
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)  # noqa: E731
    t = {"wte.weight": r(V, C), "wpe.weight": r(T, C), "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for i in range(config["n_layer"]):
        p = f"h.{i}."
        t.update({p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C), p + "ln_2.weight": 1 + r(C),
                  p + "ln_2.bias": r(C), p + "attn.c_attn.weight": r(C, 3 * C), p + "attn.c_attn.bias": r(3 * C),
                  p + "attn.c_proj.weight": r(C, C), p + "attn.c_proj.bias": r(C),
                  p + "mlp.c_fc.weight": r(C, 4 * C), p + "mlp.c_fc.bias": r(4 * C),
                  p + "mlp.c_proj.weight": r(4 * C, C), p + "mlp.c_proj.bias": r(C),
                  p + "attn.bias": np.tril(np.ones((T, T), np.float32))[None, None],
                  p + "attn.masked_bias": np.array(-1e4, np.float32)})
    if config.get("tie_word_embeddings") is False:
        t["lm_head.weight"] = r(V, C)
    if prefix:
        t = {(k if k == "lm_head.weight" else "transformer." + k): v for k, v in t.items()}
    write_hf_dir(path, t, config)
    return t, config


@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("cfg_kw", [
    {}, {"activation_function": "gelu", "layer_norm_epsilon": 1e-2}, {"tie_word_embeddings": False},
    {"activation_function": "gelu_pytorch_tanh", "n_ctx": 16},
])
def test_load_matches_numpy_reference(tmp_path, prefix, cfg_kw):
    tensors, config = random_hf_files(tmp_path, prefix=prefix, **cfg_kw)
    model = GPT.from_pretrained(tmp_path)
    c = model.config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (50, 16, 2, 2, 16)
    assert c.tie_weights == cfg_kw.get("tie_word_embeddings", True) and c.dropout == 0.0
    assert c.layer_norm_eps == cfg_kw.get("layer_norm_epsilon", 1e-5)
    idx = tokens(50, 3, 16, seed=1)
    np.testing.assert_allclose(model(idx)[0].numpy(), hf_numpy_forward(tensors, config, idx), atol=1e-4, rtol=0)


def test_load_transposes_conv1d_and_ties_head(tmp_path):
    tensors, _ = random_hf_files(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    sd = model.state_dict()
    np.testing.assert_array_equal(sd["transformer.h.1.attn.c_attn.weight"], tensors["transformer.h.1.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(sd["transformer.h.0.mlp.c_proj.weight"], tensors["transformer.h.0.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(sd["transformer.h.0.ln_1.bias"], tensors["transformer.h.0.ln_1.bias"])
    assert model.lm_head.weight is model.transformer.wte.weight and "lm_head.weight" not in sd


def test_load_overrides_and_bf16(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save

    tensors, config = random_hf_files(tmp_path)
    bf = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}
    torch_save(bf, os.path.join(tmp_path, "model.safetensors"), metadata={"format": "pt"})
    model = GPT.from_pretrained(tmp_path, dropout=0.1)
    assert model.config.dropout == 0.1
    widened = {k: v.float().numpy() for k, v in bf.items()}
    np.testing.assert_array_equal(model.transformer.h[0].attn.c_attn.weight.numpy(),
                                  widened["transformer.h.0.attn.c_attn.weight"].T)
    idx = tokens(50, 1, 9)
    np.testing.assert_allclose(model.eval()(idx)[0].numpy(), hf_numpy_forward(widened, config, idx), atol=1e-4)


# ------------------------------------------------------------------ saving
@pytest.mark.parametrize("kw", [{}, dict(gelu="none", layer_norm_eps=1e-3, dropout=0.1), dict(tie_weights=False)])
def test_round_trip(tmp_path, kw):
    model = randomize(GPT(tiny(**kw)), seed=1)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == FILES  # no temp files left
    loaded = GPT.from_pretrained(tmp_path, dropout=kw.get("dropout", 0.0))
    assert loaded.config == model.config
    for (n, a), (m, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == m
        np.testing.assert_array_equal(a, b, err_msg=n)
    idx = tokens()
    np.testing.assert_array_equal(model.eval()(idx)[0].numpy(), loaded.eval()(idx)[0].numpy())


def test_saved_layout_is_hf(tmp_path):
    model = randomize(GPT(tiny(layer_norm_eps=1e-4)), seed=2)
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert set(saved) == {"transformer." + k for k in hf_numpy_names(2)}  # tied head not written
    np.testing.assert_array_equal(saved["transformer.h.0.attn.c_attn.weight"],
                                  model.transformer.h[0].attn.c_attn.weight.numpy().T)
    assert saved["transformer.h.0.mlp.c_fc.weight"].shape == (64, 256)
    assert all(v.dtype == np.float32 for v in saved.values())
    from safetensors import safe_open
    with safe_open(os.path.join(tmp_path, "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    config = json.load(open(os.path.join(tmp_path, "config.json")))
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["n_positions"], config["vocab_size"]) == \
        (64, 2, 4, 32, 100)
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-4
    # the NumPy reference reading HF's layout agrees with the model that wrote it
    idx = tokens(seed=3)
    np.testing.assert_allclose(hf_numpy_forward(saved, config, idx), model(idx)[0].numpy(), atol=1e-4)


def hf_numpy_names(n_layer):
    names = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    for i in range(n_layer):
        for m in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            names += [f"h.{i}.{m}.weight", f"h.{i}.{m}.bias"]
    return names


def test_save_float16_and_float64(tmp_path):
    model = randomize(GPT(tiny()), seed=3).to(dtype=np.float64)
    model.save_pretrained(tmp_path / "a", dtype=np.float16)
    assert load_file(os.path.join(tmp_path, "a", "model.safetensors"))["transformer.wte.weight"].dtype == np.float16
    loaded = GPT.from_pretrained(tmp_path / "a")  # loads as float32
    np.testing.assert_allclose(loaded.transformer.wte.weight.numpy(), model.transformer.wte.weight.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="dtype must be float16, float32 or float64"):
        model.save_pretrained(tmp_path / "b", dtype=np.int32)


@pytest.mark.parametrize("kw, pattern", [
    (dict(norm="post"), "norm='post'"),
    (dict(position="sinusoidal"), "position='sinusoidal'"),
    (dict(bias=False), "bias=False"),
    (dict(sparse_pattern="alternating", attention_window=4), "sparse_pattern='alternating'"),
    (dict(norm="pre", final_norm=False), "final_norm=False"),
])
def test_save_rejects_non_gpt2(tmp_path, kw, pattern):
    with pytest.raises(ValueError, match=f"not a GPT-2.*{pattern}"):
        GPT(tiny(**kw)).save_pretrained(tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = randomize(GPT(tiny()), seed=4)
    model.save_pretrained(tmp_path)
    before = open(os.path.join(tmp_path, "model.safetensors"), "rb").read()

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        randomize(GPT(tiny()), seed=5).save_pretrained(tmp_path)
    assert open(os.path.join(tmp_path, "model.safetensors"), "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == FILES


# ------------------------------------------------------------------ clear errors
def test_hub_name_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"'gpt2' is not a local directory.*download.*config.json.*model.safetensors"):
        GPT.from_pretrained("gpt2")


def test_missing_files(tmp_path):
    random_hf_files(tmp_path)
    with pytest.raises(CheckpointError, match="is a file"):
        GPT.from_pretrained(tmp_path / "config.json")
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors.*pytorch_model.bin"):
        GPT.from_pretrained(tmp_path)
    random_hf_files(tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no config.json"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_corrupted_safetensors(tmp_path, damage):
    random_hf_files(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        f.write_bytes(b"\x00" * 100)
    else:
        f.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*(damaged|cannot read)"):
        GPT.from_pretrained(tmp_path)


def test_unknown_override(tmp_path):
    random_hf_files(tmp_path)
    with pytest.raises(TypeError, match=r"unknown GPTConfig fields \['n_embed'\]"):
        GPT.from_pretrained(tmp_path, n_embed=32)


def test_bad_config_json(tmp_path):
    random_hf_files(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="cannot read.*config.json"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("cfg_kw, pattern", [
    ({"model_type": "llama"}, "model_type 'llama' is not supported"),
    ({"activation_function": "relu"}, "activation_function 'relu' is not supported.*gelu_new"),
    ({"n_inner": 7}, "n_inner=7 is not supported"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"scale_attn_weights": False}, "scale_attn_weights"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"n_ctx": 8}, "n_ctx 8 differs from n_positions 16"),
    ({"n_head": 3}, "divisible"),
])
def test_unsupported_config(tmp_path, cfg_kw, pattern):
    random_hf_files(tmp_path, **cfg_kw)
    with pytest.raises(CheckpointError, match=pattern):
        GPT.from_pretrained(tmp_path)


def test_n_inner_equal_to_4c_is_fine(tmp_path):
    random_hf_files(tmp_path, n_inner=64)
    assert GPT.from_pretrained(tmp_path).config.n_embd == 16


def test_wrong_missing_and_unexpected_tensors(tmp_path):
    tensors, config = random_hf_files(tmp_path)
    bad = dict(tensors)
    bad["transformer.h.1.mlp.c_fc.weight"] = bad["transformer.h.1.mlp.c_fc.weight"].T.copy()  # (out, in): wrong
    del bad["transformer.ln_f.bias"]
    bad["transformer.h.0.attn.rotary"] = np.zeros(3, np.float32)
    write_hf_dir(tmp_path, bad, config)
    with pytest.raises(CheckpointError) as info:
        GPT.from_pretrained(tmp_path)
    msg = str(info.value)
    assert "transformer.h.1.mlp.c_fc.weight has shape (64, 16), config.json implies (16, 64)" in msg
    assert "missing tensors: ['ln_f.bias']" in msg and "unexpected tensors: ['transformer.h.0.attn.rotary']" in msg
    # a config that does not match the weights: every shape is named
    write_hf_dir(tmp_path, tensors, {**config, "n_embd": 32})
    with pytest.raises(CheckpointError, match=r"wte.weight has shape \(50, 16\), config.json implies \(50, 32\)"):
        GPT.from_pretrained(tmp_path)


def test_untied_file_without_head(tmp_path):
    tensors, config = random_hf_files(tmp_path)
    write_hf_dir(tmp_path, tensors, {**config, "tie_word_embeddings": False})
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        GPT.from_pretrained(tmp_path)


# ------------------------------------------------------------------ transformers as the oracle
HF_CFG = dict(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4)


def hf_model(transformers, torch, seed=0, **kw):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**HF_CFG, **kw}, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger than the 0.02 init so the comparison is not dominated by the embeddings
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.05)
            else:
                p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("kw", [{}, {"activation_function": "gelu", "layer_norm_epsilon": 1e-3},
                                {"tie_word_embeddings": False}])
@pytest.mark.parametrize("prefix", [True, False])
def test_loads_transformers_checkpoint(tmp_path, kw, prefix):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = hf_model(transformers, torch, **kw)
    if prefix:
        ref.save_pretrained(tmp_path, safe_serialization=True)
        keys = load_file(os.path.join(tmp_path, "model.safetensors"))
        assert any(k.startswith("transformer.") for k in keys)
    else:
        if kw.get("tie_word_embeddings") is False:
            pytest.skip("GPT2Model has no LM head to save")
        ref.transformer.save_pretrained(tmp_path, safe_serialization=True)  # GPT2Model: no prefix
        assert not any(k.startswith("transformer.") for k in load_file(os.path.join(tmp_path, "model.safetensors")))
    model = GPT.from_pretrained(tmp_path)
    idx = tokens(100, 3, 32, seed=2)
    with torch.no_grad():
        expected = ref(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(model(idx)[0].numpy(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kw", [{}, dict(gelu="none", layer_norm_eps=1e-3), dict(tie_weights=False)])
def test_transformers_loads_our_checkpoint(tmp_path, kw):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    model = randomize(GPT(tiny(**kw)), seed=7)
    model.save_pretrained(tmp_path)
    ref, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    ref.eval()
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"]
    assert not [k for k in info["missing_keys"] if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    assert ref.config.tie_word_embeddings == model.config.tie_weights
    idx = tokens(100, 2, 32, seed=4)
    with torch.no_grad():
        out = ref(torch.from_numpy(idx), labels=torch.from_numpy(idx))
    logits, _ = model(idx)
    np.testing.assert_allclose(logits.numpy(), out.logits.numpy(), atol=1e-4, rtol=0)
    # HF shifts labels inside: targets = next token, the last position ignored
    targets = np.concatenate([idx[:, 1:], np.full((2, 1), -1)], axis=1)
    _, loss = model(idx, targets)
    np.testing.assert_allclose(loss.item(), out.loss.item(), rtol=1e-5)


def test_loss_and_grads_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = hf_model(transformers, torch, seed=3)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    model = GPT.from_pretrained(tmp_path)
    idx = tokens(100, 2, 20, seed=5)
    out = ref(torch.from_numpy(idx), labels=torch.from_numpy(idx))
    out.loss.backward()
    targets = np.concatenate([idx[:, 1:], np.full((2, 1), -1)], axis=1)
    _, loss = model(idx, targets)
    loss.backward()
    np.testing.assert_allclose(loss.item(), out.loss.item(), rtol=1e-5)
    ref_params = dict(ref.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        g_ref = ref_params[name].grad.numpy()
        if name.endswith(hf._CONV1D):
            g_ref = g_ref.T
        g = p.grad.numpy()
        np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-4 * np.abs(g_ref).max(), err_msg=name)
        checked += 1
    assert checked == len(model.parameters()) == 2 + 12 * 2 + 2
    assert loss.item() > 1.0  # not a degenerate (near-zero) loss


@pytest.mark.parametrize("preset", [("gpt2", "124M"), ("gpt2", "355M"), ("gpt2", "774M"), ("gpt2", "1558M"),
                                    ("gpt3", "125M"), ("gpt3", "2.7B"), ("gpt3", "13B"), ("gpt3", "175B")])
def test_num_params_matches_transformers(preset):
    """GPTConfig.num_params against transformers' own count of the same GPT-2 architecture
    (GPT-3's banded attention has no parameters), built on the meta device: nothing allocated."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    family, size = preset
    cfg = getattr(GPTConfig, family)(size)
    hf_cfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                     n_layer=cfg.n_layer, n_head=cfg.n_head)
    with torch.device("meta"):
        ref = transformers.GPT2LMHeadModel(hf_cfg)
    assert cfg.num_params() == ref.num_parameters()


# ------------------------------------------------------------------ config.json: strict types, absurd sizes
@pytest.mark.parametrize("cfg_kw, pattern", [
    ({"tie_word_embeddings": "false"}, r"tie_word_embeddings must be true or false, got 'false' \(str\)"),
    ({"tie_word_embeddings": 0}, r"tie_word_embeddings must be true or false, got 0 \(int\)"),
    ({"n_layer": 2.0}, r"n_layer must be a positive integer, got 2.0 \(float\)"),
    ({"n_embd": "16"}, "n_embd must be a positive integer, got '16'"),
    ({"n_head": True}, r"n_head must be a positive integer, got True \(bool\)"),
    ({"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
    ({"n_positions": -16}, "n_positions must be a positive integer"),
    ({"n_inner": 0}, "n_inner must be a positive integer or null"),
    ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon must be a positive number, got '1e-5'"),
    ({"layer_norm_epsilon": 0}, "layer_norm_epsilon must be a positive number, got 0"),
    ({"resid_pdrop": 1.5}, r"resid_pdrop must be a number in \[0, 1\]"),
    ({"attn_pdrop": None}, r"attn_pdrop must be a number in \[0, 1\]"),
    ({"activation_function": ["gelu"]}, "activation_function must be a string"),
    ({"scale_attn_weights": "true"}, "scale_attn_weights must be true or false"),
    ({"reorder_and_upcast_attn": 1}, "reorder_and_upcast_attn must be true or false"),
    ({"eos_token_id": "50256"}, "eos_token_id must be a token id"),
    ({"bos_token_id": -1}, "bos_token_id must be a token id"),
    ({"summary_type": "bogus"}, "summary_type must be one of"),
    ({"summary_use_proj": "yes"}, "summary_use_proj must be true or false"),
    ({"architectures": "GPT2LMHeadModel"}, "architectures must be a list of strings"),
    ({"model_type": None}, "model_type must be a string"),
    ({"activation_function": "gelu_10"}, "activation_function 'gelu_10' is not supported"),
])
def test_config_types_are_strict(tmp_path, cfg_kw, pattern):
    random_hf_files(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    (tmp_path / "config.json").write_text(json.dumps({**config, **cfg_kw}))
    with pytest.raises(CheckpointError, match=r"config.json: .*" + pattern):
        GPT.from_pretrained(tmp_path)


class NeverBuilt(GPT):
    def __init__(self, config):
        raise AssertionError(f"a model was allocated for {config}")


@pytest.mark.parametrize("cfg_kw, pattern", [
    ({"n_layer": 10 ** 9}, r"n_layer=1000000000, the weights hold layers 0\.\.1"),
    ({"n_layer": 10 ** 9, "n_embd": 2 ** 40, "n_head": 2 ** 20},
     r"wte.weight has shape \(50, 16\), config.json implies \(50, 1099511627776\)"),
    ({"vocab_size": 10 ** 12}, r"wte.weight has shape \(50, 16\), config.json implies \(1000000000000, 16\)"),
    ({"n_positions": 10 ** 10}, r"wpe.weight has shape \(16, 16\), config.json implies \(10000000000, 16\)"),
    ({"n_layer": 1}, r"n_layer=1, the weights hold layers 0\.\.1"),
    ({"n_layer": 3}, r"n_layer=3, the weights hold layers 0\.\.1"),
])
def test_absurd_sizes_fail_before_anything_is_allocated(tmp_path, cfg_kw, pattern):
    """A config.json with n_layer=10**9 used to allocate until the machine ran out of memory:
    the sizes are now checked against the safetensors header first (bounded by the file)."""
    import time
    import tracemalloc

    random_hf_files(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    (tmp_path / "config.json").write_text(json.dumps({**config, **cfg_kw}))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=pattern):
            hf.from_pretrained(NeverBuilt, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2 ** 20 and time.perf_counter() - t0 < 10  # the file is ~70 KB


def test_layer_indices_must_be_exact(tmp_path):
    tensors, config = random_hf_files(tmp_path)
    renamed = {k.replace("h.1.", "h.01."): v for k, v in tensors.items()}  # not an index tinygpt or HF reads
    write_hf_dir(tmp_path, renamed, config)
    with pytest.raises(CheckpointError, match=r"the weights hold layers 0;.*unexpected tensors: \['transformer.h.01"):
        GPT.from_pretrained(tmp_path)


def test_integer_tensor_is_refused_from_the_header(tmp_path):
    tensors, config = random_hf_files(tmp_path)
    tensors["transformer.ln_f.bias"] = np.zeros(16, np.int32)
    write_hf_dir(tmp_path, tensors, config)
    with pytest.raises(CheckpointError, match=r"ln_f.bias has dtype I32, expected a float type"):
        GPT.from_pretrained(tmp_path)


# the config.json of GPT-2 124M on the Hugging Face Hub (openai-community/gpt2), sizes shrunk
HUB_GPT2_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "bos_token_id": 50256,
    "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_positions": 16, "resid_pdrop": 0.1,
    "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257,
}
HUB_GPT2_GENERATION = {"_from_model_config": True, "bos_token_id": 50256, "eos_token_id": 50256,
                       "transformers_version": "4.26.0.dev0"}


def test_hub_gpt2_files(tmp_path):
    tensors, config = random_hf_files(tmp_path, **HUB_GPT2_CONFIG)
    (tmp_path / "generation_config.json").write_text(json.dumps(HUB_GPT2_GENERATION))
    model = GPT.from_pretrained(tmp_path)
    c = model.config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.gelu, c.tie_weights, c.dropout) == \
        (50257, 16, 2, 2, 16, "tanh", True, 0.0)
    assert model.generation_config == {"eos_token_id": 50256}
    idx = tokens(50257, 2, 16, seed=1)
    np.testing.assert_allclose(model(idx)[0].numpy(), hf_numpy_forward(tensors, config, idx), atol=1e-4, rtol=0)


@pytest.mark.parametrize("gen, expected", [
    ({}, {"eos_token_id": 49}),  # config.json's eos_token_id
    ({"eos_token_id": 7, "do_sample": False}, {"eos_token_id": 7, "temperature": 0.0}),
    ({"eos_token_id": [7, 8], "do_sample": True, "temperature": 0.7, "top_k": 40, "top_p": 0.9,
      "repetition_penalty": 1.2, "max_new_tokens": 30}, {"eos_token_id": 7, "temperature": 0.7, "top_k": 40,
                                                         "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 30}),
    ({"eos_token_id": None, "temperature": 0.7}, {}),  # without do_sample HF does not sample: temperature unused
    ({"eos_token_id": 50256}, {}),  # past the 50-token vocabulary: never generated
])
def test_generation_config(tmp_path, gen, expected):
    random_hf_files(tmp_path, eos_token_id=49)
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GPT.from_pretrained(tmp_path)
    assert model.generation_config == expected
    assert [str(w.message).split("/")[-1] for w in caught if "eos_token_id lists" in str(w.message)] == \
        (["generation_config.json: eos_token_id lists [7, 8]; tinygpt's generate stops at one token: using 7"]
         if isinstance(gen.get("eos_token_id"), list) else [])
    kwargs = {"temperature": 0.0, "max_new_tokens": 3, **expected}
    out = model.eval().generate(np.array([[1, 2]]), **kwargs)  # the dict is generate's keyword arguments
    assert out.shape[0] == 1


def test_generation_config_settings_generate_cannot_follow(tmp_path):
    random_hf_files(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 4, "no_repeat_ngram_size": 3,
                                                                  "eos_token_id": 3}))
    with pytest.warns(UserWarning, match=r"no equivalent of no_repeat_ngram_size=3, num_beams=4"):
        assert GPT.from_pretrained(tmp_path).generation_config == {"eos_token_id": 3}
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": "40"}))
    with pytest.raises(CheckpointError, match=r"generation_config.json: top_k must be a positive integer or null"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("flag", [False, True])
def test_reorder_and_upcast_attn_is_the_same_function(tmp_path, flag):
    """reorder_and_upcast_attn changes float16 arithmetic only: tinygpt (float32) matches
    transformers' eager attention with it on or off."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = hf_model(transformers, torch, seed=4, reorder_and_upcast_attn=flag)
    ref.config._attn_implementation = "eager"
    ref.save_pretrained(tmp_path, safe_serialization=True)
    assert json.load(open(tmp_path / "config.json"))["reorder_and_upcast_attn"] is flag
    model = GPT.from_pretrained(tmp_path)
    idx = tokens(100, 2, 32, seed=6)
    with torch.no_grad():
        expected = ref(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(model(idx)[0].numpy(), expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ the tokenizer in the same directory
@pytest.fixture(scope="module")
def bpe():
    from tinygpt.tokenizers import ByteLevelBPE

    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    return ByteLevelBPE.train(text, 300)


def test_with_tokenizer_and_save_with_tokenizer(tmp_path, bpe):
    from tinygpt.tokenizers import ByteLevelBPE

    model = randomize(GPT(tiny(vocab_size=300)), seed=8)
    model.save_pretrained(tmp_path, tokenizer=bpe)  # the method passes the tokenizer through
    assert sorted(os.listdir(tmp_path)) == sorted(FILES + ["merges.txt", "special_tokens_map.json", "tokenizer.json",
                                                           "tokenizer_config.json", "vocab.json"])
    config = json.load(open(tmp_path / "config.json"))
    assert config["eos_token_id"] == config["bos_token_id"] == 299 == bpe.eos_token_id
    assert json.load(open(tmp_path / "tokenizer_config.json"))["model_max_length"] == 32
    loaded, tok = GPT.from_pretrained(tmp_path, with_tokenizer=True)
    assert tok == bpe and isinstance(tok, ByteLevelBPE) and loaded.generation_config == {"eos_token_id": 299}
    idx = tok.encode("The model").reshape(1, -1)
    np.testing.assert_array_equal(loaded(idx)[0].numpy(), model(idx)[0].numpy())
    # no tokenizer in the directory: a clear error, before any weight is read
    for name in ("tokenizer.json", "vocab.json"):
        os.remove(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"with_tokenizer=True.*has no tokenizer.json and no vocab.json"):
        GPT.from_pretrained(tmp_path, with_tokenizer=True)
    with pytest.raises(TypeError, match="with_tokenizer must be True or False"):
        GPT.from_pretrained(tmp_path, with_tokenizer="yes")


def test_save_refuses_a_tokenizer_that_does_not_fit(tmp_path, bpe):
    from tinygpt.tokenizers import CharTokenizer

    with pytest.raises(ValueError, match="the tokenizer has 300 tokens, more than the model's vocab_size 100"):
        hf.save_pretrained(GPT(tiny()), tmp_path / "a", tokenizer=bpe)
    with pytest.raises(ValueError, match="must be a ByteLevelBPE.*CharTokenizer"):
        hf.save_pretrained(GPT(tiny()), tmp_path / "b", tokenizer=CharTokenizer.from_text("abc"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_transformers_loads_model_and_tokenizer_offline(tmp_path, bpe, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = randomize(GPT(tiny(vocab_size=300)), seed=9)
    hf.save_pretrained(model, tmp_path, tokenizer=bpe)
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path), local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    gen = transformers.GenerationConfig.from_pretrained(str(tmp_path), local_files_only=True)
    assert gen.eos_token_id == tok.eos_token_id == ref.config.eos_token_id == 299 and len(tok) == 300
    text = "The model loads."
    ids = tok.encode(text)
    assert ids == bpe.encode(text).tolist()
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(model(np.array([ids]))[0].numpy(), expected, atol=1e-4, rtol=0)
    with torch.no_grad():  # greedy decoding: the same tokens
        hf_out = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    ours = model.eval().generate(np.array([ids]), max_new_tokens=6, temperature=0.0)
    assert np.asarray(ours).tolist() == hf_out.tolist()


# ------------------------------------------------------------------ quantized, LoRA and MoE models
@pytest.mark.parametrize("qkw", [dict(bits=8), dict(bits=8, embeddings=False), dict(bits=4, group_size=16)])
def test_save_quantized_writes_the_dequantized_model(tmp_path, qkw):
    """A quantized model is written as the float weights it computes with (q * scale); transformers
    then computes what the quantized tinygpt model computes (it used to load random weights)."""
    import tinygpt as tg

    model = tg.quantize(randomize(GPT(tiny()), seed=10), **qkw)
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert all(v.dtype == np.float32 for v in saved.values()) and not any("qweight" in k or "scale" in k for k in saved)
    tied = qkw.get("embeddings", True)  # embeddings=False: the head's own int8 copy differs from the float wte
    assert json.load(open(tmp_path / "config.json"))["tie_word_embeddings"] is tied
    assert ("lm_head.weight" in saved) is (not tied)
    idx = tokens(seed=11)
    expected = model(idx)[0].numpy()
    loaded = GPT.from_pretrained(tmp_path)
    np.testing.assert_allclose(loaded(idx)[0].numpy(), expected, atol=1e-4, rtol=0)
    config = json.load(open(tmp_path / "config.json"))
    np.testing.assert_allclose(hf_numpy_forward(saved, config, idx), expected, atol=1e-4, rtol=0)
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref, info = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["unexpected_keys"] and not [k for k in info["missing_keys"] if "attn.bias" not in k]
    with torch.no_grad():
        np.testing.assert_allclose(ref.eval()(torch.from_numpy(idx)).logits.numpy(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("targets, tie", [(("c_attn",), True), (("c_attn", "c_proj", "c_fc"), True),
                                          (("c_attn", "lm_head"), False)])
def test_save_with_lora_adapters_merges_them(tmp_path, targets, tie):
    """Unmerged LoRA adapters used to be dropped silently; they are merged into the written weights
    (the model itself keeps its adapters)."""
    import tinygpt.lora as lora
    from tinygpt.lora import LoRALinear

    model = randomize(GPT(tiny(tie_weights=tie)), seed=12)
    lora.apply(model, rank=4, alpha=8, targets=targets)
    rng = np.random.default_rng(13)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.data[...] = rng.normal(0, 0.1, p.shape)  # non-zero: the adapters change the function
    idx = tokens(seed=14)
    expected = model.eval()(idx)[0].numpy()
    model.save_pretrained(tmp_path)
    assert isinstance(model.transformer.h[0].attn.c_attn, LoRALinear)  # not merged in place
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert not any("lora" in k for k in saved)
    assert ("lm_head.weight" in saved) is not tie
    loaded = GPT.from_pretrained(tmp_path)
    np.testing.assert_allclose(loaded(idx)[0].numpy(), expected, atol=1e-4, rtol=0)
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        np.testing.assert_allclose(ref(torch.from_numpy(idx)).logits.numpy(), expected, atol=1e-4, rtol=0)


def test_save_moe_model_is_refused(tmp_path):
    model = GPT(tiny(n_expert=4, expert_top_k=2))
    with pytest.raises(ValueError, match=r"not a GPT-2.*n_expert=4 \(mixture-of-experts.*save_checkpoint"):
        model.save_pretrained(tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_save_refuses_tensors_gpt2_has_no_place_for(tmp_path):
    from tinygpt.nn import Linear

    model = GPT(tiny())
    model.transformer.h[0].mlp.extra = Linear(4, 4)
    with pytest.raises(ValueError, match=r"no place for: \['transformer.h.0.mlp.extra.weight'"):
        model.save_pretrained(tmp_path / "out")


@pytest.mark.skipif(not os.environ.get("TINYGPT_GPT2_VOCAB_DIR"),
                    reason="GPT-2's vocab.json and merges.txt: set TINYGPT_GPT2_VOCAB_DIR (see docs/tokenizers.md)")
def test_hub_gpt2_directory_with_its_real_tokenizer(tmp_path):
    """A directory laid out as the Hub's gpt2 (config.json, generation_config.json, vocab.json,
    merges.txt, tokenizer_config.json {"model_max_length": 1024}; tiny random weights): one call
    gives the model and the tokenizer, and save_pretrained gives back what transformers loads."""
    gpt2_dir = os.environ["TINYGPT_GPT2_VOCAB_DIR"]
    random_hf_files(tmp_path / "hub", **HUB_GPT2_CONFIG)
    (tmp_path / "hub" / "generation_config.json").write_text(json.dumps(HUB_GPT2_GENERATION))
    (tmp_path / "hub" / "tokenizer_config.json").write_text('{"model_max_length": 1024}')
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "hub" / name).write_bytes(open(os.path.join(gpt2_dir, name), "rb").read())
    model, tok = GPT.from_pretrained(tmp_path / "hub", with_tokenizer=True)
    assert tok.vocab_size == 50257 and tok.eos_token_id == 50256 == model.generation_config["eos_token_id"]
    ids = tok.encode("Hello world").tolist()
    assert ids == [15496, 995]
    hf.save_pretrained(model, tmp_path / "out", tokenizer=tok)
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "out"), local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    text = "Hello world, <|endoftext|> and 👋"
    assert hf_tok.encode(text) == tok.encode(text, allowed_special="all").tolist()
    assert hf_tok.eos_token_id == ref.config.eos_token_id == ref.generation_config.eos_token_id == 50256
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(model(np.array([ids]))[0].numpy(), expected, atol=1e-4, rtol=0)
