"""The GPT model on tiny configs: init, names, input checks, generation, training, finite
differences, and parity with a PyTorch re-implementation written here from the same weights.

Tolerances: float64 finite differences rtol 1e-5 / atol 1e-7; torch parity float64 1e-9,
float32 logits/loss rtol 1e-4, grads rtol 1e-3 + atol 1e-4 x the largest |grad| of that tensor.
"""
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import check_tensor_grads

import tinygpt as tg
from tinygpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("seeded")


def tiny(**kw):
    base = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    return GPTConfig(**{**base, **kw})


def tokens(cfg, B=2, T=None, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(B, T or cfg.block_size))


def randomize(model, seed=0, std=0.2):
    """Replace the (tiny) init with larger random weights so attention is far from uniform."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            p.data[...] = 1.0 + 0.1 * rng.standard_normal(p.shape)
        else:
            p.data[...] = rng.normal(0.0, std if p.ndim >= 2 else 0.1, p.shape)
    return model


CONFIGS = {
    "pre-learned": {},
    "post-norm": dict(norm="post"),
    "sinusoidal": dict(position="sinusoidal"),
    "alternating-banded": dict(sparse_pattern="alternating", attention_window=3),
    "no-bias-exact-gelu-untied": dict(bias=False, gelu="none", tie_weights=False),
}


# ------------------------------------------------------------------ structure and init
def expected_names(n_layer, learned=True, bias=True, final_norm=True, tied=True):
    names = ["transformer.wte.weight"] + (["transformer.wpe.weight"] if learned else [])
    suffixes = ["weight", "bias"] if bias else ["weight"]
    for i in range(n_layer):
        for mod in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names += [f"transformer.h.{i}.{mod}.{s}" for s in suffixes]
    names += [f"transformer.ln_f.{s}" for s in suffixes] if final_norm else []
    return names + ([] if tied else ["lm_head.weight"])


@pytest.mark.parametrize("kw, expect", [
    ({}, {}),
    (dict(position="sinusoidal"), dict(learned=False)),
    (dict(bias=False), dict(bias=False)),
    (dict(norm="post"), dict(final_norm=False)),
    (dict(tie_weights=False), dict(tied=False)),
])
def test_parameter_names(kw, expect):
    model = GPT(tiny(**kw))
    assert [n for n, _ in model.named_parameters()] == expected_names(2, **expect)
    assert list(model.state_dict()) == expected_names(2, **expect)
    tied = model.lm_head.weight is model.transformer.wte.weight
    assert tied == expect.get("tied", True)


def test_shapes():
    cfg = tiny()
    model = GPT(cfg)
    C, V = cfg.n_embd, cfg.vocab_size
    assert model.transformer.wte.weight.shape == (V, C) and model.transformer.wpe.weight.shape == (cfg.block_size, C)
    blk = model.transformer.h[0]
    assert blk.attn.c_attn.weight.shape == (3 * C, C) and blk.mlp.c_fc.weight.shape == (4 * C, C)
    logits, loss = model(tokens(cfg, 3, 5))
    assert logits.shape == (3, 5, V) and loss is None
    assert model.hidden_states(tokens(cfg, 3, 5)).shape == (3, 5, C)


def test_init_statistics():
    n_layer = 4
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=n_layer, n_head=2, n_embd=64))
    resid = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        a = p.numpy()
        if name.endswith("c_proj.weight"):
            assert abs(a.std() / resid - 1) < 0.05, name  # GPT-2's scaled residual projections
        elif a.ndim == 2:
            assert abs(a.std() / 0.02 - 1) < 0.05, name
        elif name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            np.testing.assert_array_equal(a, 1.0, err_msg=name)
        else:
            np.testing.assert_array_equal(a, 0.0, err_msg=name)  # biases


def test_loss_at_init_is_log_vocab():
    cfg = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    _, loss = model(tokens(cfg, 4), tokens(cfg, 4, seed=1))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_configure_optimizers_decays_only_matrices():
    from tinygpt.optim import AdamW

    model = GPT(tiny())
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.95))
    assert isinstance(opt, AdamW)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters() if p.ndim >= 2}
    assert len(decay["params"]) + len(no_decay["params"]) == len(model.parameters())
    assert all(g["lr"] == 3e-4 and tuple(g["betas"]) == (0.9, 0.95) for g in opt.param_groups)


# ------------------------------------------------------------------ input checks
@pytest.mark.parametrize("idx, exc, pattern", [
    (np.array([[1, 11, 2]]), ValueError, r"token id 11.*vocab"),
    (np.array([[1, -1, 2]]), ValueError, r"token id -1"),
    (np.array([[1.0, 2.0]]), TypeError, r"integers.*float64"),
    (np.zeros((1, 9), np.int64), ValueError, r"sequence length 9.*block_size 8"),
    (np.array([1, 2, 3]), ValueError, r"\(batch, time\)"),
    (np.zeros((0, 3), np.int64), ValueError, r"empty input.*\(0, 3\)"),
    (np.zeros((2, 0), np.int64), ValueError, r"empty input.*\(2, 0\)"),
])
def test_bad_inputs(idx, exc, pattern):
    model = GPT(tiny())
    with pytest.raises(exc, match=pattern):
        model(idx)
    with pytest.raises(exc, match=pattern):
        model(idx, idx)  # with targets too: no loss over an empty batch (it would be NaN)


def test_bad_targets():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="target 11"):
        model(np.zeros((1, 3), np.int64), np.array([[0, 11, 1]]))


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="attention_window"):
        GPTConfig(sparse_pattern="alternating")
    with pytest.raises(ValueError, match="norm"):
        GPTConfig(norm="sandwich")


@pytest.mark.parametrize("kw, field", [
    (dict(n_head=0), "n_head"),                        # head size 0 (was a ZeroDivisionError in the layers)
    (dict(n_embd=2, n_head=4), "divisible"),           # n_embd < n_head
    (dict(n_embd=0), "n_embd"),
    (dict(n_layer=True), "n_layer"),                   # a bool is not a size
    (dict(vocab_size=0), "vocab_size"),
    (dict(block_size=0), "block_size"),
    (dict(block_size=8.0), "block_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout="0.1"), "dropout"),                  # was a TypeError from the comparison
    (dict(dropout=float("nan")), "dropout"),
    (dict(bias="false"), "bias"),                      # a string would read as True
    (dict(tie_weights="false"), "tie_weights"),
    (dict(final_norm="no"), "final_norm"),
    (dict(layer_norm_eps=float("inf")), "layer_norm_eps"),
    (dict(layer_norm_eps="1e-5"), "layer_norm_eps"),
    (dict(gelu="relu"), "gelu"),
    (dict(position="rotary"), "position"),
    (dict(attention_window=4), "attention_window"),    # no layer banded: a silently dense model
    (dict(attention_window=4, sparse_pattern=("dense", 2)), "attention_window"),
    (dict(attention_window=0, sparse_pattern="banded"), "attention_window"),
    (dict(sparse_pattern=("dense",)), "sparse_pattern"),   # one entry per layer
    (dict(sparse_pattern=("dense", 0)), r"sparse_pattern\[1\]"),
    (dict(n_expert=-1), "n_expert"),
    (dict(n_expert=True), "n_expert"),
    (dict(n_expert=4, expert_top_k=3), "expert_top_k"),
    (dict(n_expert=4, expert_top_k=True), "expert_top_k"),
    (dict(n_expert=1, expert_top_k=2), "expert_top_k"),
    (dict(n_expert=4, moe_every=0), "moe_every"),
    (dict(n_expert=4, moe_every=3), "moe_every"),      # n_layer 2: no layer would be MoE
    (dict(n_expert=4, capacity_factor=float("inf")), "capacity_factor"),
    (dict(n_expert=4, capacity_factor=-1.0), "capacity_factor"),
    (dict(moe_aux_loss_coef=float("inf")), "moe_aux_loss_coef"),
    (dict(moe_aux_loss_coef=float("nan")), "moe_aux_loss_coef"),
])
def test_config_rejects_each_bad_field(kw, field):
    """Every field is checked when the config is made: a ValueError naming it, never a
    ZeroDivisionError, a TypeError from a comparison, or a silently different model."""
    with pytest.raises(ValueError, match=field):
        tiny(**kw)


def test_config_edge_values_that_are_valid():
    assert tiny(n_head=8).n_embd // 8 == 1  # head size 1
    assert tiny(dropout=0).dropout == 0 and tiny(capacity_factor=0, n_expert=2).capacity_factor == 0
    assert tiny(sparse_pattern=(3, "dense")).layer_window(0) == 3  # an int band needs no attention_window
    assert tiny(n_expert=2, moe_every=2).layer_moe(1) is not None
    assert GPTConfig.gpt3("125M", sparse_pattern="dense").attention_window is None  # the preset's band dropped
    assert GPTConfig.gpt3("125M", sparse_pattern="banded").attention_window == 256
    with pytest.raises(ValueError, match="attention_window"):
        GPTConfig.gpt3("125M", sparse_pattern="dense", attention_window=64)  # asked for, unused: an error


def test_package_exposes_the_modules_the_docs_use(tmp_path):
    """`import tinygpt as tg`, then tg.checkpoint.save_checkpoint and tg.lora.apply as the docs write
    them (docs/gpt4-style.md, README), in a fresh interpreter (here other tests import them)."""
    code = ("import tinygpt as tg; assert callable(tg.checkpoint.save_checkpoint) and callable(tg.lora.apply); "
            "assert tg.GenerationConfig is tg.models.GenerationConfig")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


# ------------------------------------------------------------------ generation
def greedy_by_hand(model, ids, n):
    ids = np.array(ids)
    for _ in range(n):
        logits, _ = model(ids[:, -model.config.block_size:])
        ids = np.concatenate([ids, logits.numpy()[:, -1].argmax(-1)[:, None]], axis=1)
    return ids


@pytest.fixture
def gen_model():
    cfg = tiny(vocab_size=17)
    return randomize(GPT(cfg), seed=1, std=0.5).eval(), cfg


def test_generate_shape_and_prefix(gen_model):
    model, cfg = gen_model
    idx = tokens(cfg, 2, 3)
    out = model.generate(idx, max_new_tokens=4)
    assert isinstance(out, np.ndarray) and out.shape == (2, 7)
    np.testing.assert_array_equal(out[:, :3], idx)
    assert out.min() >= 0 and out.max() < cfg.vocab_size
    t = model.generate(tg.Tensor(idx), 2)
    assert isinstance(t, tg.Tensor) and t.shape == (2, 5)


def test_generate_greedy(gen_model):
    model, cfg = gen_model
    idx = tokens(cfg, 2, 3)
    expected = greedy_by_hand(model, idx, 6)
    np.testing.assert_array_equal(model.generate(idx, 6, temperature=0), expected)
    np.testing.assert_array_equal(model.generate(idx, 6, temperature=0), expected)  # deterministic
    np.testing.assert_array_equal(model.generate(idx, 6, temperature=1.0, top_k=1), expected)
    np.testing.assert_array_equal(model.generate(idx, 6, temperature=0.7, top_p=1e-9), expected)


def test_generate_crops_long_context(gen_model):
    model, cfg = gen_model
    idx = tokens(cfg, 2, cfg.block_size + 3)
    with pytest.warns(UserWarning, match="cropped"):
        out = model.generate(idx, 5, temperature=0)
    assert out.shape == (2, cfg.block_size + 8)
    np.testing.assert_array_equal(out, greedy_by_hand(model, idx, 5))


def test_generate_seed_reproducible(gen_model):
    model, cfg = gen_model
    idx = tokens(cfg, 3, 2)
    a = model.generate(idx, 12, seed=5)
    np.testing.assert_array_equal(model.generate(idx, 12, seed=5), a)
    assert not np.array_equal(model.generate(idx, 12, seed=6), a)
    tg.manual_seed(42)
    b = model.generate(idx, 12)
    tg.manual_seed(42)
    np.testing.assert_array_equal(model.generate(idx, 12), b)


def test_generate_top_k_samples_only_top_tokens(gen_model):
    model, cfg = gen_model
    out = model.generate(tokens(cfg, 4, 2), 6, temperature=2.0, top_k=3, seed=0)
    for t in range(2, out.shape[1]):
        logits, _ = model(out[:, max(0, t - cfg.block_size):t])
        top3 = np.argsort(logits.numpy()[:, -1], axis=-1)[:, -3:]
        assert all(out[b, t] in top3[b] for b in range(out.shape[0]))


def test_generate_restores_mode_and_checks_args(gen_model):
    model, cfg = gen_model
    model.train()
    model.generate(tokens(cfg, 1, 2), 2)
    assert model.training and all(m.training for m in model.modules())
    for kw in (dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(max_new_tokens=-1)):
        args = {"max_new_tokens": 2, **kw}
        with pytest.raises(ValueError):
            model.generate(tokens(cfg, 1, 2), **args)


# ------------------------------------------------------------------ dropout in the model
def test_dropout_only_in_training():
    cfg = tiny(dropout=0.2)
    model = GPT(cfg)
    idx = tokens(cfg)
    model.eval()
    np.testing.assert_array_equal(model(idx)[0].numpy(), model(idx)[0].numpy())
    model.train()
    tg.manual_seed(1)
    a = model(idx)[0].numpy()
    tg.manual_seed(1)
    np.testing.assert_array_equal(model(idx)[0].numpy(), a)
    assert not np.array_equal(model(idx)[0].numpy(), a)


# ------------------------------------------------------------------ training
def test_overfits_one_batch():
    tg.manual_seed(0)
    cfg = GPTConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    x, y = tokens(cfg, 4, seed=1), tokens(cfg, 4, seed=2)
    opt = model.configure_optimizers(weight_decay=0.0, learning_rate=1e-2, betas=(0.9, 0.99))
    losses = []
    for _ in range(300):
        _, loss = model(x, y)
        model.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.05:
            break
    assert losses[0] > 2.0 and losses[-1] < 0.1, losses[::20]


def test_48_layer_forward_backward():
    cfg = GPTConfig(vocab_size=5, block_size=4, n_layer=48, n_head=1, n_embd=4)
    model = GPT(cfg)
    _, loss = model(tokens(cfg), tokens(cfg, seed=1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and np.isfinite(p.grad.numpy()).all(), name
    assert np.abs(model.transformer.h[0].attn.c_attn.weight.grad.numpy()).max() > 0


# ------------------------------------------------------------------ finite differences (float64)
@pytest.mark.parametrize("name", CONFIGS)
def test_finite_differences(name):
    cfg = tiny(vocab_size=7, block_size=6, **CONFIGS[name])
    model = randomize(GPT(cfg).to(dtype=np.float64), seed=3)
    idx = tokens(cfg, 2, 5)
    targets = tokens(cfg, 2, 5, seed=1)
    targets[0, 2] = -1  # ignored
    names, params = zip(*model.named_parameters())
    check_tensor_grads(lambda: model(idx, targets)[1], list(params), names=list(names), max_entries=8,
                       rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ parity with PyTorch
def torch_gpt(params, cfg, idx, targets):
    """GPT-2 written directly in torch from the parameter dict (names as DESIGN.md)."""
    import torch
    tf = torch.nn.functional
    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    wte = params["transformer.wte.weight"]
    x = tf.embedding(idx, wte)
    if cfg.position == "learned":
        x = x + params["transformer.wpe.weight"][:T]
    else:
        pos = torch.arange(T, dtype=torch.float64)[:, None]
        angle = pos / 10000 ** (torch.arange(0, C, 2, dtype=torch.float64) / C)
        pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(T, C)  # sin even, cos odd
        # tinygpt keeps the fixed table as a float32 buffer (cast, not recomputed, by .to(float64))
        x = x + pe.to(torch.float32).to(x.dtype)

    for i in range(cfg.n_layer):
        def p(n):
            return params.get(f"transformer.h.{i}.{n}")

        def ln(h, n):
            return tf.layer_norm(h, (C,), p(n + ".weight"), p(n + ".bias"), eps=1e-5)

        def attn(h):
            q, k, v = tf.linear(h, p("attn.c_attn.weight"), p("attn.c_attn.bias")).split(C, dim=2)
            q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
            qi, kj = torch.arange(T)[:, None], torch.arange(T)[None, :]
            mask = kj <= qi
            if cfg.sparse_pattern == "alternating" and i % 2 == 1:  # GPT-3: odd layers banded
                mask = mask & (qi - kj < cfg.attention_window)
            y = tf.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return tf.linear(y.transpose(1, 2).reshape(B, T, C), p("attn.c_proj.weight"), p("attn.c_proj.bias"))

        def mlp(h):
            h = tf.gelu(tf.linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias")), approximate=cfg.gelu)
            return tf.linear(h, p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))

        if cfg.norm == "pre":
            x = x + attn(ln(x, "ln_1"))
            x = x + mlp(ln(x, "ln_2"))
        else:
            x = ln(x + attn(x), "ln_1")
            x = ln(x + mlp(x), "ln_2")
    if cfg.final_norm:
        x = tf.layer_norm(x, (C,), params["transformer.ln_f.weight"], params.get("transformer.ln_f.bias"), eps=1e-5)
    logits = tf.linear(x, params.get("lm_head.weight", wte))
    loss = tf.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1), ignore_index=-1)
    return logits, loss


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_pytorch(kernel_impl, name, dtype):
    torch = pytest.importorskip("torch")
    cfg = tiny(vocab_size=13, n_layer=3, n_embd=16, **CONFIGS[name])
    model = randomize(GPT(cfg).to(dtype=dtype), seed=4)
    idx, targets = tokens(cfg, 3, 7), tokens(cfg, 3, 7, seed=5)
    targets[1, 4] = -1
    tparams = {n: torch.tensor(p.numpy(), requires_grad=True) for n, p in model.named_parameters()}

    logits, loss = model(idx, targets)
    loss.backward()
    t_logits, t_loss = torch_gpt(tparams, cfg, torch.from_numpy(idx), torch.from_numpy(targets))
    t_loss.backward()

    assert logits.dtype == dtype and loss.dtype == dtype
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), t_logits.detach().numpy(), **tol)
    np.testing.assert_allclose(loss.item(), t_loss.item(), **tol)
    for n, p in model.named_parameters():
        g, tg_ = p.grad.numpy(), tparams[n].grad.numpy()
        assert p.grad.dtype == dtype, n
        if dtype == np.float64:
            np.testing.assert_allclose(g, tg_, rtol=1e-8, atol=1e-12, err_msg=n)
        else:
            np.testing.assert_allclose(g, tg_, rtol=1e-3, atol=1e-4 * np.abs(tg_).max(), err_msg=n)


def test_config_options_reach_the_layers():
    model = GPT(tiny(n_layer=4, gelu="none", norm="post", sparse_pattern="alternating", attention_window=3))
    blocks = list(model.transformer.h)
    assert [b.attn.window for b in blocks] == [None, 3, None, 3]  # GPT-3: every other layer banded
    assert all(b.mlp.gelu.approximate == "none" and b.norm == "post" for b in blocks)
