"""Mixture-of-experts MLP: values vs an independent per-token NumPy float64 loop, finite-difference
gradients (experts, router, inputs), the load-balancing loss, capacity dropping, cost (rows in
the expert matmuls), GPT integration (parameter count, training, aux loss in the loss), config errors.

Tolerances: float64 values 1e-12 (same maths, different summation order); finite differences
as tests/helpers.py (rtol 1e-5, atol 1e-6) with random data far from routing ties.
"""
import math

import numpy as np
import pytest
from helpers import check_tensor_grads

import tinygpt as tg
from tinygpt import GPT, GPTConfig, ops
from tinygpt.nn import MoE
from tinygpt.nn.moe import expert_capacity, route

pytestmark = pytest.mark.usefixtures("seeded")


# ------------------------------------------------------------------ independent reference
def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def reference_moe(x, wr, w1, b1, w2, b2, k, capacity_factor):
    """One token at a time: route, apply its experts, weight by gates, drop by capacity order.

    x (N, C); wr (E, C) router; w1 (E, C, 4C), b1 (E, 4C), w2 (E, 4C, C), b2 (E, C).
    Returns (y (N, C), aux loss, dropped count, tokens per expert).
    """
    N, C = x.shape
    E = wr.shape[0]
    probs = []
    for n in range(N):
        z = wr @ x[n]
        e = np.exp(z - z.max())
        probs.append(e / e.sum())
    probs = np.array(probs)
    cap = max(1, math.ceil(capacity_factor * N * k / E)) if capacity_factor else N  # 0: dropless
    choices = [sorted(range(E), key=lambda i: (-probs[n, i], i))[:k] for n in range(N)]
    used = [0] * E
    kept = {}
    for j in range(k):  # all first choices, then all second choices, tokens in order
        for n in range(N):
            e = choices[n][j]
            kept[n, j] = used[e] < cap
            used[e] += kept[n, j]
    y = np.zeros((N, C))
    for n in range(N):
        sel = probs[n, choices[n]]
        gates = sel / sel.sum() if k == 2 else sel
        for j in range(k):
            if kept[n, j]:
                e = choices[n][j]
                h = gelu_tanh(x[n] @ w1[e] + b1[e])
                y[n] += gates[j] * (h @ w2[e] + b2[e])
    counts = np.zeros(E)
    for n in range(N):
        for e in choices[n]:
            counts[e] += 1
    aux = E * np.sum(counts / (N * k) * probs.mean(axis=0))
    return y, aux, sum(not v for v in kept.values()), counts


def make_moe(C=6, E=4, k=2, cf=1.25, bias=True, seed=0):
    moe = MoE(C, E, top_k=k, capacity_factor=cf, bias=bias)
    moe.to(dtype=np.float64)
    rng = np.random.default_rng(seed)
    for p in moe.parameters():  # larger than the 0.02 init so routing and outputs are far from trivial
        p.data[...] = rng.normal(0.0, 0.5, p.shape)
    return moe


def moe_arrays(moe):
    b1 = moe.c_fc.bias.numpy() if moe.c_fc.bias is not None else np.zeros(moe.c_fc.weight.shape[::2])
    b2 = moe.c_proj.bias.numpy() if moe.c_proj.bias is not None else np.zeros(moe.c_proj.weight.shape[::2])
    return moe.router.weight.numpy(), moe.c_fc.weight.numpy(), b1, moe.c_proj.weight.numpy(), b2


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("cf", [0.3, 1.0, 1.25, 4.0, 0])
@pytest.mark.parametrize("B, T, C, E", [(2, 5, 6, 4), (1, 7, 4, 3), (3, 1, 5, 2), (2, 8, 4, 8)])
def test_values_match_per_token_loop(k, cf, B, T, C, E):
    if k > E:
        pytest.skip("k > E is a config error")
    moe = make_moe(C, E, k, cf, seed=B * 100 + T)
    x = np.random.default_rng(T).normal(size=(B, T, C))
    y = moe(tg.Tensor(x))
    ref, aux, dropped, counts = reference_moe(x.reshape(-1, C), *moe_arrays(moe), k, cf)
    np.testing.assert_allclose(y.numpy().reshape(-1, C), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(moe.aux_loss.item(), aux, rtol=1e-12)
    assert moe.stats["dropped"] == dropped
    np.testing.assert_array_equal(moe.stats["tokens_per_expert"], counts)
    if cf:
        assert moe.stats["capacity"] == expert_capacity(B * T, E, k, cf)
    else:  # dropless: as many slots as the busiest expert needs
        assert dropped == 0 and moe.stats["capacity"] == counts.max()


def test_no_bias():
    moe = make_moe(bias=False)
    assert moe.c_fc.bias is None and moe.c_proj.bias is None
    x = np.random.default_rng(1).normal(size=(2, 4, 6))
    ref, *_ = reference_moe(x.reshape(-1, 6), *moe_arrays(moe), 2, 1.25)
    np.testing.assert_allclose(moe(tg.Tensor(x)).numpy().reshape(-1, 6), ref, rtol=1e-12, atol=1e-12)


def test_capacity_drops_tokens_and_residual_carries_them():
    """With a tiny capacity most choices are dropped; a token whose choices are all dropped gets 0."""
    moe = make_moe(C=4, E=2, k=1, cf=0.25)
    moe.router.weight.data[...] = 0.0  # uniform router: every token's top choice is expert 0 (tie -> lowest)
    x = np.random.default_rng(0).normal(size=(1, 8, 4))
    y = moe(tg.Tensor(x)).numpy()[0]
    assert moe.stats["capacity"] == 1 and moe.stats["dropped"] == 7
    assert np.abs(y[0]).max() > 0  # the first token (highest priority) keeps its slot
    np.testing.assert_array_equal(y[1:], 0.0)
    # inside a Block the dropped tokens pass through on the residual
    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=4, n_expert=2, expert_top_k=1,
                    capacity_factor=0.25)
    blk = tg.nn.Block(cfg).to(dtype=np.float64)
    blk.mlp = moe
    xt = tg.Tensor(x)
    h = xt + blk.attn(blk.ln_1(xt))
    out = blk(xt).numpy()[0]
    np.testing.assert_allclose(out[1:], h.numpy()[0, 1:], rtol=1e-12, atol=1e-12)
    assert np.abs(out[0] - h.numpy()[0, 0]).max() > 0


@pytest.mark.parametrize("k", [1, 2])
def test_dropless_token_output_does_not_depend_on_the_batch(k):
    """capacity_factor=0: each token's output is the same alone or in a batch (not so with dropping)."""
    x = np.random.default_rng(4).normal(size=(2, 6, 5))
    for cf, independent in [(0, True), (0.3, False)]:
        moe = make_moe(C=5, E=3, k=k, cf=cf, seed=9)
        whole = moe(tg.Tensor(x)).numpy()
        alone = np.stack([[moe(tg.Tensor(x[b:b + 1, t:t + 1])).numpy()[0, 0] for t in range(6)] for b in range(2)])
        assert np.allclose(whole, alone, rtol=1e-12, atol=1e-12) == independent


def test_route_priority_first_choices_before_second():
    # 3 tokens, 2 experts, k = 2, capacity 2: token 0's and 1's first choices are expert 0,
    # token 2's first choice is expert 1. Second choices (rank 1) come after all first choices.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    experts, slots, keep, cap = route(probs, 2, capacity=2)
    np.testing.assert_array_equal(experts, [[0, 1], [0, 1], [1, 0]])
    # expert 0 gets token 0 (slot 0), token 1 (slot 1); token 2's second choice is over capacity
    # expert 1 gets token 2 (first choice, slot 0), token 0 (second choice, slot 1); token 1 dropped
    np.testing.assert_array_equal(keep, [[True, True], [True, False], [True, False]])
    np.testing.assert_array_equal(slots[keep], [0, 1, 1, 0])  # row-major over (n, j)
    # ties go to the lower expert index
    experts, _, _, _ = route(np.array([[0.25, 0.25, 0.25, 0.25]]), 2, capacity=1)
    np.testing.assert_array_equal(experts, [[0, 1]])
    # dropless: the capacity is the busiest expert's load (expert 0 and 1: 3 choices each)
    experts, slots, keep, cap = route(probs, 2, capacity=None)
    assert cap == 3 and keep.all()
    np.testing.assert_array_equal(slots, [[0, 1], [1, 2], [0, 2]])


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("k, cf", [(1, 1.25), (2, 1.25), (2, 0.5), (1, 0.4), (2, 0)])
def test_gradients_finite_differences(k, cf):
    moe = make_moe(C=4, E=3, k=k, cf=cf, seed=7)
    x = tg.Tensor(np.random.default_rng(3).normal(size=(2, 5, 4)), requires_grad=True)
    params = dict(moe.named_parameters())

    def forward():
        y = moe(x)
        return y, moe.aux_loss

    check_tensor_grads(forward, [x, *params.values()], names=["x", *params])
    assert np.abs(moe.router.weight.grad.numpy()).max() > 0  # the router learns through gates and aux


def test_aux_loss_gradient_alone():
    """d aux / d router: only P (mean probabilities) carries gradient; f is a constant."""
    moe = make_moe(C=4, E=4, k=2, seed=11)
    x = np.random.default_rng(5).normal(size=(1, 9, 4))
    wr = moe.router.weight
    check_tensor_grads(lambda: (moe(tg.Tensor(x)), moe.aux_loss)[1], [wr], names=["router"])
    # analytic: aux = E sum_i f_i mean_n p_ni  ->  d/dz_nj = E/N p_nj (f_j - sum_i f_i p_ni)
    _, _, _, counts = reference_moe(x.reshape(-1, 4), *moe_arrays(moe), 2, 1.25)
    f = counts / (9 * 2)
    z = x.reshape(-1, 4) @ wr.numpy().T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = 4 / 9 * p * (f[None, :] - (p * f).sum(1, keepdims=True))
    wr.grad = None
    moe(tg.Tensor(x))
    moe.aux_loss.backward()
    np.testing.assert_allclose(wr.grad.numpy(), dz.T @ x.reshape(-1, 4), rtol=1e-10, atol=1e-12)


def test_aux_loss_extremes():
    moe = make_moe(C=4, E=4, k=1, seed=2)
    moe.router.weight.data[...] = 0.0  # uniform router: P_i = 1/E -> aux = E * sum f_i / E = 1
    moe(tg.Tensor(np.random.default_rng(0).normal(size=(2, 6, 4))))
    assert moe.aux_loss.item() == pytest.approx(1.0, abs=1e-12)
    moe.router.weight.data[...] = 0.0
    moe.router.weight.data[2, 0] = 50.0  # everything to expert 2 with p ~ 1 -> aux ~ E
    moe(tg.Tensor(np.abs(np.random.default_rng(0).normal(size=(2, 6, 4))) + 0.5))
    assert moe.aux_loss.item() == pytest.approx(4.0, rel=1e-6)


# ------------------------------------------------------------------ cost
def _matmul_shapes(monkeypatch):
    seen = []
    original = ops.MatMul.forward

    def spy(ctx, a, b):
        seen.append((a.shape, b.shape))
        return original(ctx, a, b)

    monkeypatch.setattr(ops.MatMul, "forward", staticmethod(spy))
    return seen


@pytest.mark.parametrize("E", [4, 16, 64])
@pytest.mark.parametrize("k", [1, 2])
def test_expert_matmuls_get_tokens_times_k_rows(monkeypatch, E, k):
    N, C, cf = 128, 8, 1.25
    moe = MoE(C, E, top_k=k, capacity_factor=cf)
    seen = _matmul_shapes(monkeypatch)
    moe(tg.randn(2, N // 2, C))
    expert = [(a, b) for a, b in seen if len(a) == 3]  # the batched expert projections
    assert len(expert) == 2, seen
    for a, _ in expert:
        rows = a[0] * a[1]
        assert a[0] == E and rows <= cf * N * k + E  # E * ceil(cf N k / E): ~cf * tokens * k
        assert rows < N * E or E <= cf * k  # never one row per (token, expert) pair
    assert expert[0][1] == (E, C, 4 * C) and expert[1][1] == (E, 4 * C, C)


# ------------------------------------------------------------------ GPT integration
def moe_cfg(**kw):
    base = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, n_expert=4)
    return GPTConfig(**{**base, **kw})


@pytest.mark.parametrize("moe_every, k", [(1, 2), (2, 1), (3, 2)])
def test_parameter_count_and_names(moe_every, k):
    cfg = moe_cfg(n_layer=4, moe_every=moe_every, expert_top_k=k)
    model = GPT(cfg)
    dense = GPT(moe_cfg(n_layer=4, n_expert=0))
    C, E = 8, 4
    mlp = 4 * C * C + 4 * C + 4 * C * C + C
    moe = C * E + E * (C * 4 * C + 4 * C) + E * (4 * C * C + C)
    n_moe = sum(1 for i in range(4) if i % moe_every == moe_every - 1)
    assert model.num_params() == dense.num_params() - n_moe * mlp + n_moe * moe
    names = [n for n, _ in model.named_parameters()]
    for i in range(4):
        is_moe = i % moe_every == moe_every - 1
        assert isinstance(model.transformer.h[i].mlp, MoE) == is_moe
        assert (f"transformer.h.{i}.mlp.router.weight" in names) == is_moe
    if n_moe:
        i = moe_every - 1
        sd = model.state_dict()
        assert sd[f"transformer.h.{i}.mlp.c_fc.weight"].shape == (E, C, 4 * C)
        assert sd[f"transformer.h.{i}.mlp.c_proj.bias"].shape == (E, C)


def test_dense_config_unchanged():
    model = GPT(moe_cfg(n_expert=0))
    assert not any(isinstance(m, MoE) for m in model.modules())
    _, loss = model(np.zeros((1, 8), dtype=np.int64), np.zeros((1, 8), dtype=np.int64))
    assert model.moe_aux_loss is None


def test_gpt_loss_includes_aux_in_training_only():
    model = GPT(moe_cfg(moe_aux_loss_coef=0.5)).to(dtype=np.float64)
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    tgt = np.random.default_rng(1).integers(0, 11, (2, 8))
    logits, loss = model(idx, tgt)
    aux_layers = [b.mlp.aux_loss.item() for b in model.transformer.h]
    assert model.moe_aux_loss.item() == pytest.approx(np.mean(aux_layers), rel=1e-12)
    assert model.moe_aux_loss.requires_grad is False  # the stored value holds no graph
    ce = tg.functional.cross_entropy(logits, tgt).item()
    assert loss.item() == pytest.approx(ce + 0.5 * model.moe_aux_loss.item(), rel=1e-12)
    model.eval()
    _, loss_eval = model(idx, tgt)
    assert loss_eval.item() == pytest.approx(ce, rel=1e-12)
    assert model.moe_aux_loss is not None


def test_gpt_gradients_finite_differences():
    model = GPT(moe_cfg(n_embd=4, n_head=1, n_layer=1, expert_top_k=2, capacity_factor=1.0,
                        moe_aux_loss_coef=0.3)).to(dtype=np.float64)
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.data[...] += rng.normal(0.0, 0.3, p.shape)
    idx = rng.integers(0, 11, (2, 6))
    tgt = rng.integers(0, 11, (2, 6))
    params = dict(model.named_parameters())
    check_tensor_grads(lambda: model(idx, tgt)[1], list(params.values()), names=list(params), max_entries=12)


def test_gpt_with_moe_trains():
    text = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 20)
    cfg = moe_cfg(vocab_size=10, block_size=8, n_layer=2, n_embd=16, n_head=2, n_expert=4, moe_every=1)
    model = GPT(cfg)
    opt = model.configure_optimizers(weight_decay=0.0, learning_rate=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(60):
        starts = rng.integers(0, len(text) - 9, 8)
        x = np.stack([text[s:s + 8] for s in starts])
        y = np.stack([text[s + 1:s + 9] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    assert 0.9 < model.moe_aux_loss.item() < 4.0
    for b in model.transformer.h:
        assert b.mlp.router.weight.grad is not None and np.abs(b.mlp.router.weight.grad.numpy()).max() > 0


def test_post_norm_and_state_dict_round_trip():
    cfg = moe_cfg(norm="post", moe_every=2)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    np.testing.assert_array_equal(a(idx)[0].numpy(), b(idx)[0].numpy())


@pytest.mark.parametrize("kw, match", [
    (dict(n_expert=-1), "n_expert"),
    (dict(n_expert=2.5), "n_expert"),
    (dict(expert_top_k=3), "expert_top_k"),
    (dict(expert_top_k=0), "expert_top_k"),
    (dict(n_expert=1, expert_top_k=2), "exceeds n_expert"),
    (dict(capacity_factor=-1.0), "capacity_factor"),
    (dict(moe_aux_loss_coef=-0.1), "moe_aux_loss_coef"),
    (dict(moe_every=0), "moe_every"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        moe_cfg(**kw)


def test_module_errors():
    with pytest.raises(ValueError, match="n_expert"):
        MoE(8, 0)
    with pytest.raises(ValueError, match="top_k"):
        MoE(8, 4, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoE(8, 4, capacity_factor=-0.5)
    with pytest.raises(ValueError, match="ExpertLinear"):
        MoE(8, 4).c_fc(tg.randn(3, 2, 8))


def test_config_dict_round_trip():
    cfg = moe_cfg(expert_top_k=1, capacity_factor=2.0, moe_every=2)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.gpu
@pytest.mark.parametrize("k, cf", [(1, 1.25), (2, 0.5), (2, 0)])
def test_cuda_matches_cpu(k, cf):
    moe = make_moe(C=6, E=4, k=k, cf=cf, seed=3)
    x = np.random.default_rng(0).normal(size=(2, 7, 6))
    xc = tg.Tensor(x, requires_grad=True)
    y = moe(xc)
    y.sum().backward()
    grads = {n: p.grad.numpy() for n, p in moe.named_parameters()}
    moe.zero_grad()
    moe.to("cuda")
    xg = tg.Tensor(x, requires_grad=True, device="cuda")
    yg = moe(xg)
    yg.sum().backward()
    np.testing.assert_allclose(yg.numpy(), y.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xg.grad.numpy(), xc.grad.numpy(), rtol=1e-10, atol=1e-12)
    for n, p in moe.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), grads[n], rtol=1e-10, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("n_expert, moe_every, bias", [(4, 1, True), (8, 2, False), (2, 3, True)])
def test_config_num_params_counts_experts(n_expert, moe_every, bias):
    """GPTConfig.num_params (analytic) equals the built MoE model's count."""
    cfg = tg.GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=16, bias=bias,
                       n_expert=n_expert, expert_top_k=1, moe_every=moe_every)
    assert cfg.num_params() == tg.GPT(cfg).num_params()
