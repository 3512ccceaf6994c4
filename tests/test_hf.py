"""Hugging Face GPT-2 interop: GPT.from_pretrained / save_pretrained (tinygpt/models/hf.py).

Oracles: transformers' GPT2LMHeadModel (skipped without transformers) in both directions, and,
without it, a NumPy float64 GPT-2 forward written here in HF's own layout (Conv1D x @ W + b on
(in, out) weights) that reads the safetensors file directly.
Tolerances: float32 logits atol 1e-4; loss rtol 1e-5; grads rtol 1e-3 + atol 1e-4 x max |grad|.
"""
import json
import math
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tinygpt import GPT, GPTConfig
from tinygpt.checkpoint import CheckpointError
from tinygpt.models import hf

pytestmark = pytest.mark.usefixtures("seeded")


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
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temp files left
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
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


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
