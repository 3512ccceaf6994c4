"""GPT family presets (GPT-1, GPT-2, GPT-3), the analytic parameter count, GPT-3's sparse
pattern, and the locality of banded attention (perturbation tests, reference and native).

Published sizes: GPT-2's are Hugging Face's num_parameters() of gpt2, gpt2-medium, gpt2-large
and gpt2-xl (tied head counted once, position table included); GPT-3's are the names of the
paper's Table 2.1, which are rounded (within 2% here; 175B within 1%).
"""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt import GPT, GPTConfig, kernels
from tinygpt.nn import Block, CausalSelfAttention

pytestmark = pytest.mark.usefixtures("seeded")


# ------------------------------------------------------------------ presets
def test_gpt1_preset():
    c = GPTConfig.gpt1()
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (12, 12, 768, 512, 40478)
    assert c.norm == "post" and c.final_norm is False and c.gelu == "tanh"
    assert c.position == "learned" and c.tie_weights and c.bias
    assert [c.layer_window(i) for i in range(12)] == [None] * 12
    assert abs(c.num_params() / 117e6 - 1) < 0.01  # "117M"


@pytest.mark.parametrize("size, shape, published", [
    ("124M", (12, 12, 768), 124_439_808), ("355M", (24, 16, 1024), 354_823_168),
    ("774M", (36, 20, 1280), 774_030_080), ("1558M", (48, 25, 1600), 1_557_611_200),
])
def test_gpt2_presets(size, shape, published):
    c = GPTConfig.gpt2(size)
    assert (c.n_layer, c.n_head, c.n_embd) == shape
    assert (c.vocab_size, c.block_size, c.norm, c.final_norm, c.gelu, c.position, c.tie_weights) == \
        (50257, 1024, "pre", True, "tanh", "learned", True)
    assert c.num_params() == published
    assert c.num_params(non_embedding=True) == published - 1024 * c.n_embd


@pytest.mark.slow  # allocates and initialises 124M parameters (~2-15 s)
def test_gpt2_124m_instantiated_count():
    """The real model, allocated: 124,439,808 parameters (tied head once, wpe included)."""
    model = GPT(GPTConfig.gpt2("124M"))
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768  # nanoGPT's 123.65M
    assert model.lm_head.weight is model.transformer.wte.weight


GPT3_TABLE = [  # Table 2.1: name, n_layer, d_model, n_heads, d_head (XL and 13B: see config.py)
    ("125M", 12, 768, 12, 64), ("350M", 24, 1024, 16, 64), ("760M", 24, 1536, 16, 96),
    ("1.3B", 24, 2048, 16, 128), ("2.7B", 32, 2560, 32, 80), ("6.7B", 32, 4096, 32, 128),
    ("13B", 40, 5120, 40, 128), ("175B", 96, 12288, 96, 128),
]


@pytest.mark.parametrize("size, n_layer, n_embd, n_head, d_head", GPT3_TABLE)
def test_gpt3_presets(size, n_layer, n_embd, n_head, d_head):
    c = GPTConfig.gpt3(size)
    assert (c.n_layer, c.n_embd, c.n_head, c.n_embd // c.n_head) == (n_layer, n_embd, n_head, d_head)
    assert (c.vocab_size, c.block_size, c.norm, c.final_norm, c.gelu, c.tie_weights) == \
        (50257, 2048, "pre", True, "tanh", True)
    assert c.sparse_pattern == "alternating" and c.attention_window == 256
    assert [c.layer_window(i) for i in range(4)] == [None, 256, None, 256]
    published = float(size[:-1]) * (1e9 if size.endswith("B") else 1e6)
    assert abs(c.num_params() / published - 1) < 0.02, c.num_params()


def test_gpt3_175b_within_one_percent():
    n = GPTConfig.gpt3("175B").num_params()
    assert abs(n / 175e9 - 1) < 0.01, n


def test_preset_overrides_and_pattern_choice():
    c = GPTConfig.gpt3("125M", attention_window=64, sparse_pattern="banded", dropout=0.1, n_layer=3)
    assert c.n_layer == 3 and c.dropout == 0.1 and [c.layer_window(i) for i in range(3)] == [64, 64, 64]
    assert GPTConfig.gpt2("355M", block_size=256).block_size == 256
    assert GPTConfig.gpt3("125M", sparse_pattern="dense").layer_window(1) is None
    assert GPTConfig.gpt1(vocab_size=100).vocab_size == 100


@pytest.mark.parametrize("call, names", [
    (lambda: GPTConfig.gpt2("125M"), "'124M', '355M', '774M', '1558M'"),
    (lambda: GPTConfig.gpt2("gpt2-xl"), "'124M', '355M', '774M', '1558M'"),
    (lambda: GPTConfig.gpt3("124M"), "'125M', '350M', '760M', '1.3B', '2.7B', '6.7B', '13B', '175B'"),
])
def test_bad_preset_names(call, names):
    with pytest.raises(ValueError, match="unknown size") as info:
        call()
    assert names in str(info.value)


def test_small_gpt3_preset_builds_and_runs():
    c = GPTConfig.gpt3("125M", vocab_size=31, block_size=16, n_layer=4, n_head=2, n_embd=16, attention_window=4)
    model = GPT(c)
    assert [b.attn.window for b in model.transformer.h] == [None, 4, None, 4]
    logits, loss = model(np.zeros((1, 16), np.int64), np.ones((1, 16), np.int64))
    assert logits.shape == (1, 16, 31) and np.isfinite(loss.item())


# ------------------------------------------------------------------ analytic parameter count
@given(n_layer=st.integers(1, 3), n_head=st.integers(1, 3), hs=st.integers(1, 4), vocab=st.integers(1, 40),
       block=st.integers(1, 12), bias=st.booleans(), norm=st.sampled_from(["pre", "post"]),
       position=st.sampled_from(["learned", "sinusoidal"]), tied=st.booleans(),
       final_norm=st.sampled_from([None, True, False]), non_embedding=st.booleans())
def test_num_params_matches_the_model(n_layer, n_head, hs, vocab, block, bias, norm, position, tied,
                                      final_norm, non_embedding):
    n_embd = n_head * hs * (2 if position == "sinusoidal" else 1)
    cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                    bias=bias, norm=norm, position=position, tie_weights=tied, final_norm=final_norm)
    model = GPT(cfg)
    assert cfg.num_params(non_embedding) == model.num_params(non_embedding)
    assert cfg.num_params() == sum(p.size for p in model.parameters())


# ------------------------------------------------------------------ sparse_pattern
def test_sparse_pattern_forms():
    base = dict(n_layer=4, n_head=2, n_embd=8, attention_window=3)
    windows = lambda c: [c.layer_window(i) for i in range(c.n_layer)]  # noqa: E731
    assert windows(GPTConfig(n_layer=4, n_head=2, n_embd=8)) == [None] * 4
    with pytest.raises(ValueError, match="attention_window 3 is set but sparse_pattern 'dense'"):
        GPTConfig(**base)  # a band that no layer uses would silently give a dense model
    assert windows(GPTConfig(**base, sparse_pattern="alternating")) == [None, 3, None, 3]
    assert windows(GPTConfig(**base, sparse_pattern="banded")) == [3] * 4
    c = GPTConfig(**base, sparse_pattern=["banded", "dense", 5, "banded"])
    assert c.sparse_pattern == ("banded", "dense", 5, "banded") and windows(c) == [3, None, 5, 3]
    assert windows(GPTConfig(n_layer=2, sparse_pattern=(2, "dense"))) == [2, None]  # ints need no window
    assert GPTConfig.from_dict(c.to_dict()) == c
    assert GPTConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # JSON turns the tuple into a list
    assert [b.attn.window for b in GPT(GPTConfig(vocab_size=5, block_size=6, **base,
                                                 sparse_pattern=c.sparse_pattern)).transformer.h] == [3, None, 5, 3]


@pytest.mark.parametrize("kw, pattern", [
    (dict(sparse_pattern="strided"), r"one of \('dense', 'alternating', 'banded'\)"),
    (dict(sparse_pattern="banded"), "needs attention_window"),
    (dict(sparse_pattern=("dense", "banded", "dense", "dense")), "needs attention_window"),
    (dict(sparse_pattern=("dense",) * 3, attention_window=2), "3 entries, n_layer is 4"),
    (dict(sparse_pattern=("dense", "local", "dense", "dense"), attention_window=2), r"sparse_pattern\[1\]"),
    (dict(sparse_pattern=("dense", 0, "dense", "dense")), r"sparse_pattern\[1\].*got 0"),
    (dict(sparse_pattern=5), "string or a sequence"),
    (dict(attention_window=0), "attention_window must be a positive int"),
    (dict(attention_window=2.5), "attention_window must be a positive int"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
])
def test_sparse_pattern_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        GPTConfig(n_layer=4, n_head=2, n_embd=8, **kw)


def test_layer_norm_eps_reaches_every_layernorm():
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=2, n_head=1, n_embd=4, layer_norm_eps=1e-3))
    lns = [m for _, m in model.named_modules() if type(m).__name__ == "LayerNorm"]
    assert len(lns) == 5 and all(m.eps == 1e-3 for m in lns)


# ------------------------------------------------------------------ band locality (perturbation)
def _randomize(module, seed, std=0.3):
    rng = np.random.default_rng(seed)
    for _, p in module.named_parameters():
        p.data[...] = rng.normal(1.0 if p.ndim == 1 else 0.0, std, p.shape)
    return module


def _spy_attention(monkeypatch):
    """Record which attention kernel ran (the fixture's choice must be the one exercised)."""
    ran, select = [], kernels.select

    def spy(op, *arrays, **kw):
        k = select(op, *arrays, **kw)
        if op in ("attention", "qkv_attention"):  # the module runs attention_qkv (the KV cache path: attention)
            ran.append(k.name)
        return k

    monkeypatch.setattr(kernels, "select", spy)
    return ran


def _check_locality(f, x, i, first_seen, seed=0):
    """f(x)[:, i] must ignore x[:, j] for j < first_seen and depend on x[:, j] for first_seen <= j <= i."""
    rng = np.random.default_rng(seed)
    base = f(x)[:, i]
    for j in range(i + 1):
        x2 = x.copy()
        x2[:, j] += rng.normal(0.0, 1.0, x2[:, j].shape).astype(x.dtype)
        out = f(x2)[:, i]
        if j < first_seen:
            np.testing.assert_array_equal(out, base, err_msg=f"position {i} sees position {j} outside its band")
        else:
            assert np.abs(out - base).max() > 1e-4, f"position {i} does not see position {j} inside its band"


@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_banded_attention_layer_is_local(kernel_impl, monkeypatch, window):
    ran = _spy_attention(monkeypatch)
    T, C = 9, 8
    attn = _randomize(CausalSelfAttention(C, 2, window=window), seed=window).eval()
    x = np.random.default_rng(1).normal(0, 1, (2, T, C)).astype(np.float32)
    f = lambda a: attn(tg.Tensor(a)).numpy()  # noqa: E731
    for i in (T - 1, window, 4):
        _check_locality(f, x, i, first_seen=max(0, i - window + 1))
    assert set(ran) == {"native-cpu" if kernel_impl == "native" else "reference"}


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_banded_block_is_local(kernel_impl, monkeypatch, norm):
    ran = _spy_attention(monkeypatch)
    T, C, w = 10, 8, 3
    cfg = GPTConfig(vocab_size=5, block_size=T, n_layer=1, n_head=2, n_embd=C, norm=norm, sparse_pattern="banded",
                    attention_window=w)
    block = _randomize(Block(cfg), seed=2).eval()
    x = np.random.default_rng(2).normal(0, 1, (1, T, C)).astype(np.float32)
    _check_locality(lambda a: block(tg.Tensor(a)).numpy(), x, T - 1, first_seen=T - w)
    assert set(ran) == {"native-cpu" if kernel_impl == "native" else "reference"}


@pytest.mark.parametrize("n_layer, window", [(1, 3), (2, 3), (3, 2)])
def test_banded_model_receptive_field(kernel_impl, monkeypatch, n_layer, window):
    """With every layer banded, logits at i depend on tokens i - n_layer (window - 1) .. i only."""
    ran = _spy_attention(monkeypatch)
    T, V = 12, 23
    cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=n_layer, n_head=2, n_embd=8,
                    sparse_pattern="banded", attention_window=window)
    model = _randomize(GPT(cfg), seed=n_layer).eval()
    idx = np.random.default_rng(3).integers(0, V, (1, T))
    base = model(idx)[0].numpy()[:, T - 1]
    first_seen = T - 1 - n_layer * (window - 1)
    for j in range(T):
        idx2 = idx.copy()
        idx2[0, j] = (idx2[0, j] + 1 + j) % V
        out = model(idx2)[0].numpy()[:, T - 1]
        if j < first_seen:
            np.testing.assert_array_equal(out, base, err_msg=f"token {j} outside the receptive field changed the output")
        else:
            assert np.abs(out - base).max() > 1e-4, f"token {j} inside the receptive field has no effect"
    assert set(ran) == {"native-cpu" if kernel_impl == "native" else "reference"}


def test_alternating_layers_see_everything():
    """One dense layer among banded ones already gives every earlier token a path to the last."""
    T, V = 10, 13
    cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=8,
                    sparse_pattern="alternating", attention_window=2)
    model = _randomize(GPT(cfg), seed=5).eval()
    idx = np.random.default_rng(4).integers(0, V, (1, T))
    base = model(idx)[0].numpy()[:, -1]
    idx[0, 0] = (idx[0, 0] + 1) % V
    assert np.abs(model(idx)[0].numpy()[:, -1] - base).max() > 1e-4


# ------------------------------------------------------------------ GPT-1 against transformers' OpenAIGPT
def test_gpt1_matches_transformers_openai_gpt():
    """The gpt1 preset's block (post-norm, no final LN, tanh GELU, tied head) against
    transformers' OpenAIGPTLMHeadModel on a small random model, and the full-size count."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        full = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig())
    assert GPTConfig.gpt1().num_params() == full.num_parameters() == 116_534_784

    small = dict(vocab_size=60, block_size=16, n_layer=2, n_head=4, n_embd=32)
    torch.manual_seed(0)
    ref = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(
        vocab_size=60, n_positions=16, n_layer=2, n_head=4, n_embd=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    model = GPT(GPTConfig.gpt1(**small))
    rename = {"tokens_embed": "wte", "positions_embed": "wpe"}
    sd = {}
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.normal_(1.0 if ".ln_" in name and name.endswith("weight") else 0.0, 0.1)
            a = p.numpy().copy()
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                a = a.T  # Conv1D (in, out) -> Linear (out, in)
            parts = name.split(".")
            sd[".".join(rename.get(x, x) for x in parts)] = a
    model.load_state_dict(sd, strict=True)
    idx = np.random.default_rng(0).integers(0, 60, (2, 16))
    with torch.no_grad():
        expected = ref(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(model(idx)[0].numpy(), expected, atol=1e-4, rtol=0)
