"""Weight-only int8 quantization: the per-channel error bound, QuantizedLinear vs a float64
reference and vs its worst-case bound, GPT logits close to full precision, memory accounting,
state_dict / checkpoint round trips, inference-only errors.

Why the logits bound (relative L2 error < 5%) holds: rounding error per weight is at most
s/2 and behaves like uniform noise of RMS s/sqrt(12), s = absmax_row/127. For Gaussian-like
rows of a few hundred entries absmax/RMS ~ 3-4, so each matmul's weights are perturbed by a
relative ~ 3.5/(127 sqrt 12) ~ 0.8%; independent errors over the ~3L+1 matmuls (L = 2..4)
add in quadrature to a few % at most (measured here: ~2%, with the test's deliberately wide
std-0.15 weights). MoE layers are the exception: a token whose top-k routing is nearly tied can
switch experts, and that token's logits then change discretely (measured: 2 of 32 tokens flip in
one config), so MoE models are held to the bound per token for all but a few tokens.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
from tinygpt import GPT, GPTConfig
from tinygpt.checkpoint import load_checkpoint, save_checkpoint
from tinygpt.nn import Linear, MoE
from tinygpt.quantize import (QuantizedEmbedding, QuantizedExpertLinear, QuantizedLinear, dequantize,
                              dequantize_int4, pack_int4, quantize_absmax, quantize_int4, unpack_int4)

pytestmark = pytest.mark.usefixtures("seeded")


# ------------------------------------------------------------------ per-channel quantization
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=3, max_side=9),
                  elements=st.floats(-1e3, 1e3).filter(lambda v: v == 0 or abs(v) > 1e-20)))
def test_quantize_dequantize_error_bound(w):
    q, s = quantize_absmax(w, axis=1)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert s.shape == w.shape[:1] + w.shape[2:]
    assert np.abs(q.astype(np.int32)).max() <= 127
    deq = q.astype(np.float64) * np.expand_dims(s.astype(np.float64), 1)
    bound = np.expand_dims(s.astype(np.float64), 1) / 2
    # s is stored in float32: |w - q s32| <= s/2 + 127 |s - s32| <= s/2 (1 + 254 * 2^-24)
    assert np.all(np.abs(w - deq) <= bound * (1 + 1e-5) + 1e-300)
    # the largest |w| of each channel maps to +-127 (no range wasted)
    nonzero = np.abs(w).max(axis=1) > 0
    np.testing.assert_array_equal(np.abs(q.astype(np.int32)).max(axis=1)[nonzero], 127)
    np.testing.assert_allclose(dequantize(q, s, 1), deq.astype(np.float32), rtol=1e-6)


def test_zero_channel():
    w = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    q, s = quantize_absmax(w, axis=1)
    np.testing.assert_array_equal(q[0], 0)
    assert s[0] == 0 and s[1] == pytest.approx(2 / 127)
    np.testing.assert_array_equal(q[1], [64, -127, 32])  # rint(127 * [0.5, -1, 0.25]) (63.5 -> 64, 31.75 -> 32)


# ------------------------------------------------------------------ QuantizedLinear
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block_rows", [1, 3, 4096])
def test_quantized_linear_matches_dequantized_reference_and_bound(bias, block_rows):
    lin = Linear(13, 10, bias=bias)
    rng = np.random.default_rng(0)
    lin.weight.data[...] = rng.normal(size=lin.weight.shape)
    if bias:
        lin.bias.data[...] = rng.normal(size=10)
    x = rng.normal(size=(2, 5, 13)).astype(np.float32)
    ql = QuantizedLinear.from_linear(lin, block_rows=block_rows).eval()
    y = ql(tg.Tensor(x)).numpy()
    assert y.shape == (2, 5, 10) and y.dtype == np.float32
    q, s = ql.qweight.astype(np.float64), ql.scale.astype(np.float64)
    b = lin.bias.numpy().astype(np.float64) if bias else 0.0
    ref = x.astype(np.float64) @ (q * s[:, None]).T + b
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # worst case vs the float layer: |dy_o| <= ||x||_1 s_o / 2
    exact = x.astype(np.float64) @ lin.weight.numpy().astype(np.float64).T + b
    bound = np.abs(x.astype(np.float64)).sum(-1, keepdims=True) * s / 2
    assert np.all(np.abs(y - exact) <= bound * (1 + 1e-5) + 1e-4)


def test_quantized_linear_float64_input_is_computed_in_float64():
    lin = Linear(6, 4)
    ql = QuantizedLinear.from_linear(lin).eval()
    x = np.random.default_rng(1).normal(size=(3, 6))
    y = ql(tg.Tensor(x))
    assert y.dtype == np.float64
    ref = x @ (ql.qweight.astype(np.float64) * ql.scale.astype(np.float64)[:, None]).T
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_quantized_expert_linear():
    moe = MoE(6, 3, top_k=2)
    rng = np.random.default_rng(2)
    for p in moe.parameters():
        p.data[...] = rng.normal(size=p.shape)
    qe = QuantizedExpertLinear.from_expert_linear(moe.c_fc).eval()
    assert qe.qweight.shape == (3, 6, 24) and qe.scale.shape == (3, 24)
    x = rng.normal(size=(3, 5, 6))
    w = qe.qweight.astype(np.float64) * qe.scale.astype(np.float64)[:, None, :]
    ref = x @ w + moe.c_fc.bias.numpy().astype(np.float64)[:, None, :]
    np.testing.assert_allclose(qe(tg.Tensor(x)).numpy(), ref, rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(w - moe.c_fc.weight.numpy()) <= qe.scale[:, None, :] / 2 * (1 + 1e-5))


# ------------------------------------------------------------------ whole models
def tiny(**kw):
    base = dict(vocab_size=50, block_size=16, n_layer=3, n_head=4, n_embd=64)
    return GPTConfig(**{**base, **kw})


def randomize(model, seed=0):
    """Weights of a realistic spread (std 0.1-0.2) instead of the 0.02 init, so logits are not ~0."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.data[...] = rng.normal(0.0, 0.15, p.shape)
    return model


def ids(cfg, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, cfg.block_size))


def _rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("kw", [{}, dict(tie_weights=False), dict(n_expert=4, moe_every=2),
                                dict(n_expert=3, expert_top_k=1, bias=False), dict(position="sinusoidal")])
@pytest.mark.parametrize("embeddings", [True, False])
def test_quantized_logits_close_to_float(kw, embeddings):
    cfg = tiny(**kw)
    model = randomize(GPT(cfg)).eval()
    idx = ids(cfg)
    ref = model(idx)[0].numpy()
    tg.quantize(model, embeddings=embeddings)
    assert not model.training
    out = model(idx)[0].numpy()
    per_token = np.linalg.norm(out - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert 0 < np.median(per_token) < 0.05, per_token
    if cfg.n_expert:  # a near-tied routing decision can flip: that token (and a little of its future) jumps
        assert np.mean(per_token > 0.1) <= 0.2, per_token
    else:
        assert _rel_err(out, ref) < 0.05, _rel_err(out, ref)
    assert np.mean(out.argmax(-1) == ref.argmax(-1)) > 0.85
    assert not any(type(m) is Linear and n.split(".")[-1] != "router" for n, m in model.named_modules())


def test_tied_head_shares_the_embedding_table():
    model = randomize(GPT(tiny()))
    tg.quantize(model)
    wte, head = model.transformer.wte, model.lm_head
    assert isinstance(wte, QuantizedEmbedding) and isinstance(head, QuantizedLinear)
    assert head._table()[0] is wte.qweight and head._table()[1] is wte.scale
    sd = model.state_dict()
    assert not any(k.startswith("lm_head") for k in sd)
    assert sd["transformer.wte.qweight"].dtype == np.int8 and sd["transformer.wte.scale"].shape == (50,)
    assert [k for k in sd if "wte" in k or "wpe" in k] == ["transformer.wte.qweight", "transformer.wte.scale",
                                                          "transformer.wpe.qweight", "transformer.wpe.scale"]


def test_untied_head_or_float_embedding_keeps_own_copy():
    model = randomize(GPT(tiny()))
    tg.quantize(model, embeddings=False)
    assert type(model.transformer.wte).__name__ == "Embedding"
    assert model.lm_head.qweight.shape == (50, 64)
    assert "lm_head.qweight" in model.state_dict() and "transformer.wte.weight" in model.state_dict()


def expected_bytes(model, embeddings=True):
    """int8 bytes (every quantized weight) and float32 bytes (scales, biases, norms, routers), from the float model."""
    i8 = f32 = 0
    emb = {id(m.weight) for m in model.modules() if type(m).__name__ == "Embedding"}
    for name, p in model.named_parameters():
        if p.ndim == 1 or name.endswith((".bias", "router.weight")) or (id(p) in emb and not embeddings
                                                              and name != "lm_head.weight"):
            f32 += 4 * p.size
        elif p.ndim == 2:
            i8, f32 = i8 + p.size, f32 + 4 * p.shape[0]
        else:  # (E, in, out) experts: one scale per (expert, output channel)
            i8, f32 = i8 + p.size, f32 + 4 * p.shape[0] * p.shape[2]
    if not embeddings and model.config.tie_weights:  # the head's own int8 copy of the tied table
        V, C = model.lm_head.weight.shape
        i8, f32 = i8 + V * C, f32 + 4 * V
    return i8, f32


@pytest.mark.parametrize("kw", [{}, dict(n_expert=4, moe_every=2), dict(tie_weights=False)])
@pytest.mark.parametrize("embeddings", [True, False])
def test_weight_memory(kw, embeddings):
    model = GPT(tiny(**kw))
    before = tg.weight_memory(model)
    assert before == {"total": 4 * model.num_params(), "float32": 4 * model.num_params()}
    i8, f32 = expected_bytes(model, embeddings)
    tg.quantize(model, embeddings=embeddings)
    after = tg.weight_memory(model)
    assert after == {"total": i8 + f32, "float32": f32, "int8": i8}
    assert after["total"] < 0.5 * before["total"]


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    cfg = tiny(n_expert=4, moe_every=2)
    a = tg.quantize(randomize(GPT(cfg), seed=1))
    b = tg.quantize(randomize(GPT(cfg), seed=2))
    idx = ids(cfg)
    assert not np.allclose(a(idx)[0].numpy(), b(idx)[0].numpy())
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(idx)[0].numpy(), b(idx)[0].numpy())
    c = tg.quantize(GPT(cfg))
    save_checkpoint(tmp_path / "q.safetensors", a, config=cfg)
    load_checkpoint(tmp_path / "q.safetensors", c)
    np.testing.assert_array_equal(a(idx)[0].numpy(), c(idx)[0].numpy())
    assert c.state_dict()["transformer.h.0.attn.c_attn.qweight"].dtype == np.int8
    with pytest.raises(ValueError, match="missing keys"):
        GPT(cfg).load_state_dict(a.state_dict())  # a float model cannot take an int8 state_dict


def test_generate_and_dequantized_weight_view():
    cfg = tiny()
    model = tg.quantize(randomize(GPT(cfg)))
    out = model.generate(ids(cfg)[:1, :4], max_new_tokens=5, temperature=0)
    assert out.shape == (1, 9)
    w = model.lm_head.weight
    assert w.shape == (50, 64) and w.dtype == np.float32
    np.testing.assert_array_equal(w.numpy(), model.transformer.wte.weight.numpy())


def test_quantized_model_never_dequantizes_the_embedding_table(monkeypatch):
    """Decoding with an int8 wte / tied head reads the int8 table only: the dequantizing .weight is never used
    (KVCache.for_model, GPT.device, the position ids)."""
    cfg = tg.GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32)
    tg.manual_seed(0)
    model = tg.quantize(tg.GPT(cfg))

    def boom(self):
        raise AssertionError("the whole quantized table was dequantized")

    monkeypatch.setattr(QuantizedEmbedding, "weight", property(boom))
    monkeypatch.setattr(QuantizedLinear, "weight", property(boom))
    out = model.generate(np.array([[1, 2, 3]]), max_new_tokens=4, temperature=0)
    assert out.shape == (1, 7)


# ------------------------------------------------------------------ errors
def test_errors():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="bits must be 8"):
        tg.quantize(model, bits=3)
    with pytest.raises(ValueError, match="group_size applies to bits=4"):
        tg.quantize(model, bits=8, group_size=32)
    with pytest.raises(ValueError, match="even"):
        tg.quantize(model, bits=4, group_size=7)
    with pytest.raises(ValueError, match="not a multiple of group_size 128"):
        tg.quantize(model, bits=4, group_size=128)  # n_embd 64
    with pytest.raises(TypeError, match="Module"):
        tg.quantize(np.zeros(3))
    with pytest.raises(ValueError, match="block_rows"):
        tg.quantize(model, block_rows=0)
    tg.quantize(model)
    idx = ids(model.config)
    model.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        model(idx, idx)
    model.eval()
    _, loss = model(idx, idx)  # eval mode under grad: the float LayerNorms still record a graph
    with pytest.raises(RuntimeError, match="inference-only"):
        loss.backward()
    with pytest.raises(ValueError, match="does not match"):
        model.lm_head(tg.randn(2, 3))
    with pytest.raises(ValueError, match="out of range"):
        model.transformer.wte(np.array([[50]]))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    cfg = tiny(n_expert=4, moe_every=2)
    model = tg.quantize(randomize(GPT(cfg)))
    idx = ids(cfg)
    ref = model(idx)[0].numpy()
    model.to("cuda")
    np.testing.assert_allclose(model(tg.Tensor(idx, device="cuda"))[0].numpy(), ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ int4 (groups, two per byte)
@given(hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6).map(lambda s: s[:-1] + (2 * s[-1],)),
                  elements=st.integers(-8, 7)))
def test_int4_pack_unpack_round_trip(q):
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.shape == q.shape[:-1] + (q.shape[-1] // 2,)
    np.testing.assert_array_equal(unpack_int4(packed), q)
    # element 2i in the low nibble, 2i+1 in the high nibble (two's complement)
    lo, hi = packed & 0xF, packed >> 4
    np.testing.assert_array_equal(np.where(lo >= 8, lo.astype(int) - 16, lo), q[..., 0::2])
    np.testing.assert_array_equal(np.where(hi >= 8, hi.astype(int) - 16, hi), q[..., 1::2])


@pytest.mark.parametrize("group_size", [2, 4, 8])
@given(w=hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 3)).map(lambda s: (s[0], 8 * s[1])),
                    elements=st.floats(-1e3, 1e3).filter(lambda v: v == 0 or abs(v) > 1e-20)))
def test_int4_error_bound(group_size, w):
    packed, s = quantize_int4(w, group_size)
    assert s.shape == (w.shape[0], w.shape[1] // group_size) and s.dtype == np.float32
    q = unpack_int4(packed)
    assert np.abs(q.astype(int)).max() <= 7
    scale = np.repeat(s.astype(np.float64), group_size, axis=1)  # (out, in): each weight's group scale
    deq = q * scale
    assert np.all(np.abs(w - deq) <= scale / 2 * (1 + 1e-5) + 1e-300)
    np.testing.assert_allclose(dequantize_int4(packed, s), deq.astype(np.float32), rtol=1e-6)
    # the largest |w| of each group maps to +-7
    groups = np.abs(q.astype(int)).reshape(w.shape[0], -1, group_size).max(-1)
    np.testing.assert_array_equal(groups[np.abs(w).reshape(w.shape[0], -1, group_size).max(-1) > 0], 7)


@pytest.mark.parametrize("block_rows", [1, 4096])
def test_int4_linear_and_experts_match_dequantized_reference(block_rows):
    rng = np.random.default_rng(0)
    lin = Linear(16, 6)
    lin.weight.data[...] = rng.normal(size=lin.weight.shape)
    lin.bias.data[...] = rng.normal(size=6)
    ql = QuantizedLinear.from_linear(lin, block_rows, bits=4, group_size=4).eval()
    assert ql.bits == 4 and ql.qweight.shape == (6, 8) and ql.scale.shape == (6, 4) and ql.in_features == 16
    x = rng.normal(size=(3, 16))
    w = np.repeat(ql.scale.astype(np.float64), 4, axis=1) * unpack_int4(ql.qweight)
    b = lin.bias.numpy().astype(np.float64)
    y = ql(tg.Tensor(x)).numpy()
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-12, atol=1e-12)
    bound = np.abs(x) @ np.repeat(ql.scale.astype(np.float64), 4, axis=1).T / 2  # sum_i |x_i| s_g(i) / 2
    assert np.all(np.abs(y - (x @ lin.weight.numpy().astype(np.float64).T + b)) <= bound * (1 + 1e-5))
    np.testing.assert_allclose(ql.weight.numpy(), w, rtol=1e-6)

    moe = MoE(8, 3, top_k=2)
    for p in moe.parameters():
        p.data[...] = rng.normal(size=p.shape)
    qe = QuantizedExpertLinear.from_expert_linear(moe.c_fc, bits=4, group_size=4).eval()
    assert qe.qweight.shape == (3, 32, 4) and qe.scale.shape == (3, 32, 2) and qe.in_features == 8
    xe = rng.normal(size=(3, 5, 8))
    we = (np.repeat(qe.scale.astype(np.float64), 4, axis=2) * unpack_int4(qe.qweight)).swapaxes(1, 2)  # (E, in, out)
    ref = xe @ we + moe.c_fc.bias.numpy().astype(np.float64)[:, None, :]
    np.testing.assert_allclose(qe(tg.Tensor(xe)).numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(qe.weight.numpy(), we, rtol=1e-6)


@pytest.mark.parametrize("kw", [{}, dict(n_expert=4, moe_every=2), dict(tie_weights=False)])
def test_int4_model(kw, tmp_path):
    """int4 logits: a coarser grid (7 levels a side), so errors ~ 10x int8's on these wide random weights;
    the measured quality is in benchmarks/quantize.py. Memory: 0.5 byte a weight + 4 bytes a group."""
    cfg = tiny(**kw)
    model = randomize(GPT(cfg)).eval()
    idx = ids(cfg)
    ref = model(idx)[0].numpy()
    before = tg.weight_memory(model)["total"]
    i8, f32 = expected_bytes(model)
    n_quantized = i8  # one int8 byte per quantized weight -> half a byte, plus one float32 scale per 32
    n_rows_scale = f32  # float bytes in the int8 layout: scales of the int8 rows + float tensors
    model8 = randomize(GPT(cfg)).eval()
    err8 = _rel_err(tg.quantize(model8)(idx)[0].numpy(), ref)
    tg.quantize(model, bits=4)
    out = model(idx)[0].numpy()
    err4 = _rel_err(out, ref)
    assert err8 < err4 < 0.6, (err8, err4)
    mem = tg.weight_memory(model)
    rows = sum(m.qweight.shape[0] * (m.qweight.shape[1] if m.qweight.ndim == 3 else 1)
               for m in model.modules() if isinstance(m, (QuantizedLinear, QuantizedEmbedding, QuantizedExpertLinear))
               and m._tied is None)
    assert mem["uint8"] == n_quantized // 2
    assert mem["float32"] == n_rows_scale - 4 * rows + 4 * (n_quantized // 32)
    assert mem["total"] < 0.2 * before
    other = tg.quantize(randomize(GPT(cfg), seed=3), bits=4)
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(other(idx)[0].numpy(), out)
    with pytest.raises(ValueError, match="shape mismatch"):
        tg.quantize(GPT(cfg)).load_state_dict(model.state_dict())  # int8 layout cannot take int4 tensors


# ------------------------------------------------------------------ quantized checkpoints (safetensors)
@pytest.mark.parametrize("kw", [{}, dict(tie_weights=False), dict(n_expert=4, moe_every=2), dict(position="sinusoidal")])
@pytest.mark.parametrize("bits,embeddings", [(8, True), (8, False), (4, True), (4, False)])
def test_quantized_checkpoint_round_trip(kw, bits, embeddings, tmp_path):
    """save_checkpoint stores the int8 / packed int4 tables and scales and records the quantization;
    load_model rebuilds the quantized model from them alone: bit-identical logits and tokens."""
    from tinygpt.checkpoint import load_model, read_checkpoint_metadata, tensor_shapes

    cfg = tiny(**kw)
    model = tg.quantize(randomize(GPT(cfg)), bits=bits, embeddings=embeddings,
                        group_size=16 if bits == 4 else None)
    path = tmp_path / "q.safetensors"
    save_checkpoint(path, model, step=7, config=cfg, tokenizer={"type": "char", "chars": "ab"})
    meta = read_checkpoint_metadata(path)
    assert meta["quantization"] == {"bits": bits, "group_size": 16 if bits == 4 else None, "embeddings": embeddings}
    shapes = tensor_shapes(path)
    table = "u8" if bits == 4 else "i8"
    assert shapes["model/transformer.h.0.attn.c_attn.qweight"] == (table.upper(), (192, 64 // (2 if bits == 4 else 1)))
    assert not any(k.endswith(".weight") and "ln_" not in k and "router" not in k
                   and (embeddings or "wte" not in k and "wpe" not in k) for k in shapes)  # no float weight tables
    loaded, meta2 = load_model(path)
    assert meta2["step"] == 7 and not loaded.training
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=k)
    idx = ids(cfg)
    np.testing.assert_array_equal(loaded(idx)[0].numpy(), model(idx)[0].numpy())
    np.testing.assert_array_equal(loaded.generate(idx[:1, :4], 6, temperature=0),
                                  model.generate(idx[:1, :4], 6, temperature=0))


def test_loading_a_quantized_checkpoint_does_not_allocate_the_float_weights(tmp_path):
    """tracemalloc's peak while loading, over the float32 weights' bytes: an int8 checkpoint needs about 2
    bytes per weight (the tensors read from the file, then the model's tables), never the 4 of the float
    weights (building the float model first would alone reach 1.0); loading the float checkpoint of the same
    model needs about 8 (the model, the file's tensors). Measured: 0.58 (int8), 0.37 (int4), 2.04 (float)."""
    import tracemalloc

    from tinygpt.checkpoint import load_model

    cfg = tiny(vocab_size=512, n_layer=4, n_embd=128, block_size=64)
    model = GPT(cfg)
    float_bytes = 4 * model.num_params()
    save_checkpoint(tmp_path / "f.safetensors", model, config=cfg)
    for bits in (8, 4):
        save_checkpoint(tmp_path / f"q{bits}.safetensors", tg.quantize(GPT(cfg), bits=bits), config=cfg)
    peaks = {}
    for name in ("q8", "q4", "f"):
        tracemalloc.start()
        loaded, _ = load_model(tmp_path / f"{name}.safetensors")
        peaks[name] = tracemalloc.get_traced_memory()[1] / float_bytes
        tracemalloc.stop()
        del loaded
    assert peaks["q8"] < 0.75 and peaks["q4"] < 0.5 and peaks["f"] > 1.5, peaks


def test_float_init_placeholders_stay_in_the_building_thread():
    """build_quantized's zero-memory placeholder weights are for its own thread: a model built meanwhile
    in another thread gets real random weights, and after the build every new model does."""
    import importlib
    import threading

    q = importlib.import_module("tinygpt.quantize")  # the module (tinygpt.quantize is also the function)

    seen = {}
    with q._no_float_init():
        inside = Linear(8, 8)
        worker = threading.Thread(target=lambda: seen.setdefault("w", Linear(8, 8).weight.data))
        worker.start()
        worker.join()
    assert q._is_placeholder(inside.weight.data)
    assert not q._is_placeholder(seen["w"]) and np.abs(seen["w"]).max() > 0
    assert not q._is_placeholder(Linear(8, 8).weight.data)


def test_quantized_checkpoint_errors(tmp_path):
    from tinygpt.checkpoint import CheckpointError, load_model
    from tinygpt.optim import AdamW

    cfg = tiny()
    q8 = tg.quantize(GPT(cfg))
    with pytest.raises(ValueError, match="inference-only"):
        save_checkpoint(tmp_path / "x.safetensors", q8, AdamW(GPT(cfg).parameters()), config=cfg)
    save_checkpoint(tmp_path / "q.safetensors", q8, config=cfg)
    with pytest.raises(CheckpointError, match="already quantized \\(int8"):
        load_model(tmp_path / "q.safetensors", quantize=4)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(tmp_path / "q.safetensors", tg.quantize(GPT(cfg), bits=4))
    save_checkpoint(tmp_path / "f.safetensors", GPT(cfg), config=cfg)
    m, _ = load_model(tmp_path / "f.safetensors", quantize=4, group_size=16)  # quantize on load
    assert isinstance(m.lm_head, QuantizedLinear) and m.lm_head.bits == 4
