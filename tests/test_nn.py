"""Modules: registration, names, tying, state_dict, train/eval, dtype moves, the GPT layers."""
import math

import numpy as np
import pytest
from helpers import check_tensor_grads, compare_with_torch, rng_arrays

import tinygpt as tg
from tinygpt import GPTConfig, nn
from tinygpt.nn import Block, CausalSelfAttention, Linear, Module, ModuleList, Parameter

pytestmark = pytest.mark.usefixtures("seeded")


class Net(Module):
    def __init__(self):
        super().__init__()
        self.fc1 = Linear(3, 4)
        self.scale = Parameter(np.ones(4, np.float32))
        self.act = nn.GELU()
        self.blocks = ModuleList([Linear(4, 4, bias=False), nn.LayerNorm(4)])
        self.fc2 = Linear(4, 2)
        self.fc2_alias = self.fc2  # the same module twice: its parameters appear once
        self.drop = nn.Dropout(0.5)
        self.register_buffer("running", np.zeros(4, np.float32))
        self.register_buffer("scratch", np.zeros(2, np.float32), persistent=False)

    def forward(self, x):
        x = self.act(self.fc1(x)) * self.scale
        for m in self.blocks:
            x = m(x)
        return self.fc2(self.drop(x))


# as torch: a module's own parameters first, then each child's, in registration order
NET_PARAMS = ["scale", "fc1.weight", "fc1.bias", "blocks.0.weight", "blocks.1.weight", "blocks.1.bias",
              "fc2.weight", "fc2.bias"]


def test_parameter_registration_order_and_names():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == NET_PARAMS
    assert net.parameters() == [p for _, p in net.named_parameters()]
    assert all(isinstance(p, Parameter) and p.requires_grad for p in net.parameters())
    assert net.num_parameters() == 12 + 4 + 4 + 16 + 4 + 4 + 8 + 2


def test_tied_parameter_appears_once():
    a = Module()
    a.emb = nn.Embedding(5, 3)
    a.head = Linear(3, 5, bias=False)
    a.head.weight = a.emb.weight
    names = [n for n, _ in a.named_parameters()]
    assert names == ["emb.weight"]
    assert list(a.state_dict()) == ["emb.weight"]


def test_reassigning_an_attribute_replaces_the_registration():
    m = Module()
    m.w = Parameter(np.ones(2, np.float32))
    m.w = np.zeros(2)  # a plain array is not a parameter
    assert list(m.named_parameters()) == []
    with pytest.raises(RuntimeError, match="super"):
        class Bad(Module):
            def __init__(self):
                self.x = 1
        Bad()


def test_state_dict_round_trip():
    a, b = Net(), Net()
    a.running[:] = 3.0
    sd = a.state_dict()
    assert list(sd) == NET_PARAMS + ["running"]  # persistent buffers only
    ids_before = [id(p) for p in b.parameters()]
    missing, unexpected = b.load_state_dict(sd)
    assert missing == [] and unexpected == []
    assert [id(p) for p in b.parameters()] == ids_before  # loaded in place
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=n)
        assert not np.shares_memory(p.data, q.data)
    np.testing.assert_array_equal(b.running, 3.0)
    x = tg.randn(2, 3)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_load_state_dict_errors_name_keys():
    net = Net()
    sd = dict(net.state_dict())
    del sd["fc1.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["fc2.weight"] = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError) as exc:
        net.load_state_dict(sd)
    msg = str(exc.value)
    assert "fc1.bias" in msg and "extra.weight" in msg and "missing" in msg and "unexpected" in msg
    assert "fc2.weight" in msg and "(5, 4)" in msg and "(2, 4)" in msg


def test_load_state_dict_non_strict():
    net = Net()
    before = net.fc1.bias.numpy().copy()
    sd = {k: v for k, v in Net().state_dict().items() if k != "fc1.bias"}
    sd["extra"] = np.zeros(1)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["fc1.bias"] and unexpected == ["extra"]
    np.testing.assert_array_equal(net.fc1.bias.numpy(), before)


def test_train_eval_propagates():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    x = tg.randn(4, 3)
    np.testing.assert_array_equal(net(x).numpy(), net(x).numpy())  # dropout off
    net.train()
    assert all(m.training for m in net.modules())
    assert not np.array_equal(net(x).numpy(), net(x).numpy())  # dropout on


def test_module_to_float64():
    net = Net()
    params = net.parameters()
    (x,) = rng_arrays(0, (2, 3))
    net.eval()
    y32 = net(tg.Tensor(x.astype(np.float32))).numpy()
    net.fc1.weight.grad = tg.zeros(4, 3)
    assert net.to(dtype=np.float64) is net
    assert net.parameters() == params and all(a is b for a, b in zip(net.parameters(), params))
    assert all(p.dtype == np.float64 and p.grad is None for p in net.parameters())
    assert net.running.dtype == np.float64 and net.scratch.dtype == np.float64
    y64 = net(tg.Tensor(x))
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64.numpy(), y32, rtol=1e-4, atol=1e-5)


def test_module_zero_grad():
    net = Net()
    net(tg.randn(2, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_module_list():
    layers = ModuleList([Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and [type(m) for m in layers] == [Linear] * 3
    layers.append(nn.LayerNorm(2))
    assert isinstance(layers[3], nn.LayerNorm) and layers[-1] is layers[3]
    assert [m for m in layers[1:3]] == [layers[1], layers[2]]
    assert [n for n, _ in layers.named_parameters()][-2:] == ["3.weight", "3.bias"]
    assert "(0): Linear(2, 2, bias=True)" in repr(layers)


def test_forward_not_defined():
    with pytest.raises(NotImplementedError):
        Module()(1)


# ------------------------------------------------------------------ layers
def test_linear_layer():
    lin = Linear(300, 200)
    assert lin.weight.shape == (200, 300) and lin.bias.shape == (200,)  # (out, in) as PyTorch
    assert abs(lin.weight.numpy().std() - 0.02) < 0.001 and abs(lin.weight.numpy().mean()) < 0.001
    np.testing.assert_array_equal(lin.bias.numpy(), 0.0)
    assert Linear(3, 2, bias=False).bias is None
    assert [n for n, _ in Linear(3, 2, bias=False).named_parameters()] == ["weight"]
    x = tg.randn(4, 300)
    np.testing.assert_allclose(lin(x).numpy(), x.numpy() @ lin.weight.numpy().T, rtol=1e-5, atol=1e-6)


def test_embedding_and_layernorm_layers():
    emb = nn.Embedding(10, 4)
    assert emb.weight.shape == (10, 4)
    np.testing.assert_array_equal(emb(np.array([[3, 3]])).numpy()[0], emb.weight.numpy()[[3, 3]])
    ln = nn.LayerNorm(6)
    np.testing.assert_array_equal(ln.weight.numpy(), 1.0)
    np.testing.assert_array_equal(ln.bias.numpy(), 0.0)
    assert nn.LayerNorm(6, bias=False).bias is None
    y = ln(tg.randn(3, 6) * 4.0 + 2.0).numpy()
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-3)


def test_dropout_and_gelu_layers():
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(1.5)
    x = tg.randn(10)
    assert nn.Dropout(0.5).eval()(x) is x
    np.testing.assert_allclose(nn.GELU("none")(x).numpy(), tg.functional.gelu(x, "none").numpy())


def test_sinusoidal_positions():
    n, d = 7, 6
    table = nn.sinusoidal_positions(n, d, dtype=np.float64)
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert math.isclose(table[pos, 2 * i], math.sin(angle), abs_tol=1e-14)
            assert math.isclose(table[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-14)


# ------------------------------------------------------------------ attention, MLP, Block
def test_attention_module_is_causal():
    """Output at position t does not change when inputs after t change."""
    attn = CausalSelfAttention(8, 2)
    x = np.random.default_rng(0).standard_normal((1, 5, 8)).astype(np.float32)
    base = attn(tg.Tensor(x)).numpy()
    x2 = x.copy()
    x2[:, 3:] += 1.0
    out = attn(tg.Tensor(x2)).numpy()
    np.testing.assert_array_equal(out[:, :3], base[:, :3])
    assert np.abs(out[:, 3:] - base[:, 3:]).max() > 1e-4
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(8, 3)


def test_attention_module_matches_numpy():
    """CausalSelfAttention = c_proj(concat_h softmax(q_h k_h^T / sqrt(hs) + causal mask) v_h), in NumPy."""
    C, nh, T, B = 8, 2, 5, 2
    hs = C // nh
    attn = CausalSelfAttention(C, nh).to(dtype=np.float64)
    for p in attn.parameters():
        p.data[...] = np.random.default_rng(p.size).normal(0.0, 0.4, p.shape)
    wa, ba, wp, bp = (p.numpy() for p in attn.parameters())
    (x,) = rng_arrays(1, (B, T, C))
    qkv = x @ wa.T + ba
    y = np.zeros((B, T, C))
    for h in range(nh):
        q, k, v = (qkv[..., j * C + h * hs: j * C + (h + 1) * hs] for j in range(3))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hs) + np.triu(np.full((T, T), -np.inf), k=1)
        p_ = np.exp(s - s.max(-1, keepdims=True))
        y[..., h * hs:(h + 1) * hs] = (p_ / p_.sum(-1, keepdims=True)) @ v
    np.testing.assert_allclose(attn(tg.Tensor(x)).numpy(), y @ wp.T + bp, rtol=1e-10, atol=1e-12)


def test_attention_module_matches_torch_mha_math():
    """CausalSelfAttention = c_proj(concat_h softmax(q_h k_h^T / sqrt(hs) + causal) v_h), vs torch."""
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    C, nh, T = 8, 2, 5
    attn = CausalSelfAttention(C, nh, window=None).to(dtype=np.float64)
    (x,) = rng_arrays(1, (2, T, C))
    wa, ba, wp, bp = (p.numpy() for p in attn.parameters())

    def ref(xt):
        qkv = tf.linear(xt, torch.from_numpy(wa), torch.from_numpy(ba))
        q, k, v = (t.view(2, T, nh, C // nh).transpose(1, 2) for t in qkv.split(C, dim=-1))
        y = tf.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, T, C)
        return tf.linear(y, torch.from_numpy(wp), torch.from_numpy(bp))

    compare_with_torch(attn, ref, x)


def test_mlp_shapes():
    mlp = nn.MLP(6)
    assert mlp.c_fc.weight.shape == (24, 6) and mlp.c_proj.weight.shape == (6, 24)
    assert mlp(tg.randn(2, 3, 6)).shape == (2, 3, 6)


def block_config(**kw):
    """A one-layer GPTConfig for Block(config) with n_embd 8, 2 heads."""
    return GPTConfig(**{**dict(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8), **kw})


def _block(norm):
    blk = Block(block_config(norm=norm)).to(dtype=np.float64)
    for p in blk.parameters():  # non-trivial weights so every sub-layer matters
        p.data[...] = np.random.default_rng(p.size).normal(0.0, 0.3, p.shape)
    return blk


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_block_norm_order(norm):
    blk = _block(norm)
    (xa,) = rng_arrays(2, (2, 5, 8))
    x = tg.Tensor(xa)
    if norm == "pre":  # x + attn(ln_1(x)), then + mlp(ln_2(.))
        h = x + blk.attn(blk.ln_1(x))
        expected = h + blk.mlp(blk.ln_2(h))
    else:  # ln_1(x + attn(x)), then ln_2(. + mlp(.))
        h = blk.ln_1(x + blk.attn(x))
        expected = blk.ln_2(h + blk.mlp(h))
    np.testing.assert_allclose(blk(x).numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


def test_block_post_norm_output_is_normalized():
    """With LN weight 1 and bias 0 (their init) a post-norm block ends in a LayerNorm; pre-norm does not."""
    x = tg.Tensor(np.random.default_rng(3).normal(2.0, 3.0, (2, 5, 8)))
    post = Block(block_config(norm="post")).to(dtype=np.float64)(x).numpy()
    np.testing.assert_allclose(post.mean(-1), 0.0, atol=1e-10)
    np.testing.assert_allclose(post.var(-1), 1.0, atol=1e-4)  # var/(var + eps), var ~ 9
    pre = Block(block_config(norm="pre")).to(dtype=np.float64)(x).numpy()
    assert np.abs(pre.mean(-1)).max() > 0.1
    with pytest.raises(ValueError, match="norm"):
        Block(block_config(norm="middle"))


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("window", [None, 2])
def test_block_finite_differences(norm, window):
    blk = _block(norm)
    for a in blk.modules():
        if isinstance(a, CausalSelfAttention):
            a.window = window
    (xa,) = rng_arrays(4, (1, 4, 8))
    x = tg.Tensor(xa, requires_grad=True)
    names, params = zip(*blk.named_parameters())
    check_tensor_grads(lambda: blk(x), [x, *params], names=["x", *names], max_entries=12)


def test_block_reads_its_layer_from_the_config():
    """Block(config, layer): the layer's band (config.layer_window), MoE or dense MLP (config.layer_moe),
    GPT-2's 0.02/sqrt(2 n_layer) residual projections; GPT builds its stack the same way."""
    cfg = block_config(n_layer=3, n_embd=16, attention_window=3, sparse_pattern=("dense", 2, "banded"),
                       n_expert=2, expert_top_k=1, moe_every=2)
    blocks = [Block(cfg, layer=i) for i in range(3)]
    assert [b.attn.window for b in blocks] == [None, 2, 3]
    assert [type(b.mlp).__name__ for b in blocks] == ["MLP", "MoE", "MLP"]
    assert blocks[1].mlp.n_expert == 2 and blocks[1].mlp.top_k == 1
    big = Block(block_config(n_layer=50, n_embd=64, block_size=4), layer=49)
    assert abs(big.attn.c_proj.weight.numpy().std() / (0.02 / math.sqrt(100)) - 1) < 0.05
    stack = tg.GPT(cfg).transformer.h
    assert [b.attn.window for b in stack] == [None, 2, 3]
    assert [type(b.mlp).__name__ for b in stack] == ["MLP", "MoE", "MLP"]
    with pytest.raises(ValueError, match="layer"):
        Block(cfg, layer=3)
    with pytest.raises(TypeError, match="GPTConfig"):
        Block(8, 2)  # the old positional form


@pytest.mark.parametrize("make, field", [
    (lambda: CausalSelfAttention(8, 0), "n_head"),  # head size 0: was a ZeroDivisionError
    (lambda: CausalSelfAttention(0, 2), "n_embd"),  # was accepted (empty weights)
    (lambda: CausalSelfAttention(2, 4), "divisible"),
    (lambda: CausalSelfAttention(8, 2.0), "n_head"),
    (lambda: CausalSelfAttention(8, 2, window=0), "window"),
    (lambda: nn.MLP(0), "n_embd"),
])
def test_layer_sizes_are_checked(make, field):
    with pytest.raises(ValueError, match=field):
        make()
