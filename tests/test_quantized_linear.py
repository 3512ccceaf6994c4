"""quantized_linear (csrc/cpu/quantized_linear.cpp, kernels/reference.py): y = x @ (q * s).T + b from int8
per-channel and packed int4 group weights, against a float64 evaluation of the dequantized product; on
the reference and on every native CPU instruction set this machine runs (avx512 skips without it).

Bounds (u = 2^-24, W = q * s exactly in float64, A = |x| @ |W|.T + |b|):
- Float paths (the reference; the CUDA kernel; the native CPU tiled path: rows > 8, or int4 groups
  other than 32): the
  weight is fl(q * s) (1 rounding) and the product any float32 summation of K terms, so
  |y - ref| <= (K + 20) u A: the standard gamma_K bound with slack for the bias, the weight and the
  output rounding. A wrong or missing term costs about A / K, far above it.
- The native GEMV (rows <= 8, int8 or int4 groups of 32) quantizes x per block of 32 to int8,
  x_k = d_b xq_k + e_k with d_b = amax_b / 127 and |e_k| <= d_b / 2 (round to nearest; the factor
  1 + 2^-10 covers the float rounding of x * 127 / amax and of d_b); the integer dots are exact, and
  the block sums see at most G + 20 float roundings (G blocks) of terms bounded by |w_k| (|x_k| + d_b);
  int4's q + 8 offset adds 8 s_g (|x_k| + d_b) per term to that float part. So
  |y - ref| <= sum_k |w_k| d_b(k) (1 + 2^-10) / 2 + (G + 20) u sum_k (|w_k| + 8 s_k [int4]) (|x_k| + d_b(k)) + u |b|.
  The first term is the activation quantization itself (what llama.cpp's q8_0 activations do too);
  a wrong block scale or index is off by O(A), far above it.
quantized_linear_gelu (the quantized MLP's c_fc + tanh GELU) is held to its saved h being the product
(the bounds above) and y, dx being exactly that implementation's own GELU and backward of h.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt import kernels
from tinygpt.kernels import reference as R
from tinygpt.quantize import QuantizedEmbedding, QuantizedLinear, quantize_absmax, quantize_int4, unpack_int4

cpu = getattr(kernels._native, "cpu", None)
HAS_NATIVE = hasattr(cpu, "quantized_linear_forward")
U = 2.0 ** -24
GEMV_ROWS = 8
IMPLS = ["reference", "avx512", "avx2", "baseline", "cuda"]


def _cuda_skip_reason():
    from tinygpt.kernels import cuda as K  # noqa: PLC0415

    if not tg.backend.cuda_available():
        return "no GPU (or TINYGPT_CUDA_EMULATOR unset)"
    if not K.has("quantized_linear"):
        return "tinygpt._C was built without the CUDA quantized_linear kernel"
    return None


def _on_gpu(fn):
    """fn over CuPy copies of its array arguments, the result back on the host."""
    cp = tg.backend.cupy()

    def run(*args):
        out = fn(*(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args))
        if isinstance(out, tuple):
            return (cp.asnumpy(out[0]),) + out[1:]
        return cp.asnumpy(out)
    return run


@contextlib.contextmanager
def implementation(name):
    """Yields (forward, backward, gemv_possible) of the reference or of one native ISA (skips if absent)."""
    if name == "reference":
        yield R.quantized_linear_forward, R.quantized_linear_backward, False
        return
    if name == "cuda":  # the GPU GEMV accumulates in float: the float bound holds for every row count
        reason = _cuda_skip_reason()
        if reason:
            pytest.skip(reason)
        from tinygpt.kernels.cuda import quantized_linear as KQ  # noqa: PLC0415

        yield _on_gpu(KQ.quantized_linear_forward), _on_gpu(KQ.quantized_linear_backward), False
        return
    if not HAS_NATIVE:
        pytest.skip("tinygpt._C is not built with quantized_linear")
    try:
        cpu.set_isa(name)
    except ValueError as exc:
        pytest.skip(str(exc))
    try:
        yield cpu.quantized_linear_forward, cpu.quantized_linear_backward, True
    finally:
        cpu.set_isa("auto")


def problem(seed, rows, n_in, n_out, bits, group, x_scale, outliers, bias=True):
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(4, (n_out, n_in)) * 0.02).astype(np.float32)
    x = (rng.standard_normal((rows, n_in)) * x_scale).astype(np.float32)
    if outliers and n_in > 1:  # GPT-2-like: a few channels much larger than the rest
        x[:, rng.integers(0, n_in, size=max(1, n_in // 64))] *= 20
    b = (rng.standard_normal(n_out) * 0.1).astype(np.float32) if bias else None
    q, s = quantize_int4(w, group) if bits == 4 else quantize_absmax(w, axis=1)
    return x, q, s, b


def dequant64(q, s):
    if q.dtype == np.uint8:
        qi = unpack_int4(q).astype(np.float64)
        G = s.shape[1]
        s_full = np.repeat(s.astype(np.float64), qi.shape[1] // G, axis=1)
        return qi * s_full, s_full
    s_full = np.repeat(s.astype(np.float64)[:, None], q.shape[1], axis=1)
    return q.astype(np.float64) * s_full, s_full


def block_scales(x):
    """d_b(k) = amax over k's block of 32 / 127, per element (rows, in)."""
    rows, n = x.shape
    nb = -(-n // 32)
    xp = np.zeros((rows, nb * 32))
    xp[:, :n] = np.abs(x.astype(np.float64))
    d = xp.reshape(rows, nb, 32).max(axis=2) / 127
    return np.repeat(d, 32, axis=1)[:, :n]


def check_forward(y, x, q, s, b, gemv):
    W, s_full = dequant64(q, s)
    x64 = x.astype(np.float64)
    ref = x64 @ W.T + (0 if b is None else b.astype(np.float64))
    absb = 0 if b is None else np.abs(b.astype(np.float64))
    K = x.shape[1]
    if gemv:
        d = block_scales(x)
        G = -(-K // 32)
        act = (d * 0.5 * (1 + 2.0 ** -10)) @ np.abs(W).T
        weights = np.abs(W) + (8 * s_full if q.dtype == np.uint8 else 0)
        flt = (G + 20) * U * ((np.abs(x64) + d) @ weights.T)
        bound = act + flt + U * absb
    else:
        bound = (K + 20) * U * (np.abs(x64) @ np.abs(W).T + absb)
    assert y.dtype == np.float32 and y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound + 1e-30), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


SHAPES = dict(rows=st.sampled_from([1, 2, 3, 5, 8, 9, 13]), n_out=st.integers(1, 40),
              x_scale=st.sampled_from([1e-3, 1.0, 50.0]), outliers=st.booleans(), seed=st.integers(0, 2 ** 16))


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 300), bias=st.booleans(), **SHAPES)
def test_int8_forward(impl, rows, n_in, n_out, x_scale, outliers, seed, bias):
    x, q, s, b = problem(seed, rows, n_in, n_out, 8, None, x_scale, outliers, bias)
    with implementation(impl) as (fwd, _, native):
        y, saved = fwd(x, q, s, b)
    assert saved == ()
    check_forward(y, x, q, s, b, gemv=native and rows <= GEMV_ROWS)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=25, deadline=None)
@given(groups=st.integers(1, 19), group=st.sampled_from([32, 32, 2, 8, 64]), **SHAPES)
def test_int4_forward(impl, rows, groups, group, n_out, x_scale, outliers, seed):
    n_in = groups * group
    x, q, s, b = problem(seed, rows, n_in, n_out, 4, group, x_scale, outliers)
    with implementation(impl) as (fwd, _, native):
        y, _ = fwd(x, q, s, b)
    check_forward(y, x, q, s, b, gemv=native and rows <= GEMV_ROWS and group == 32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bits", [8, 4])
def test_gpt2_shapes_and_leading_dims(impl, bits):
    """GPT-2's decode shapes (full runs of 8 blocks and leftovers), x (B, T, in), batch 8 and a prefill."""
    for seed, (lead, n_in, n_out) in enumerate([((1, 1), 768, 2304), ((8, 1), 3072, 65), ((2, 6), 768, 33),
                                                ((1,), 800, 7)]):
        x, q, s, b = problem(seed, int(np.prod(lead)), n_in, n_out, bits, 32, 1.0, True)
        with implementation(impl) as (fwd, _, native):
            y, _ = fwd(x.reshape(lead + (n_in,)), q, s, b)
        assert y.shape == lead + (n_out,)
        check_forward(y.reshape(-1, n_out), x, q, s, b, gemv=native and x.shape[0] <= GEMV_ROWS)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=15, deadline=None)
@given(rows=st.sampled_from([1, 4, 20]), groups=st.integers(1, 6), n_out=st.integers(1, 300),
       bits=st.sampled_from([8, 4]), seed=st.integers(0, 2 ** 16))
def test_backward_is_grad_times_weight(impl, rows, groups, n_out, bits, seed):
    """dx = g @ W: a float32 product over the n_out channels (the float bound with K = n_out)."""
    x, q, s, _ = problem(seed, 1, groups * 32, n_out, bits, 32, 1.0, False, bias=False)
    g = np.random.default_rng(seed + 1).standard_normal((rows, n_out)).astype(np.float32)
    with implementation(impl) as (_, bwd, _native):
        dx = bwd(g, q, s)
    W, _ = dequant64(q, s)
    ref = g.astype(np.float64) @ W
    bound = (n_out + 20) * U * (np.abs(g.astype(np.float64)) @ np.abs(W))
    assert dx.dtype == np.float32 and dx.shape == ref.shape
    assert np.all(np.abs(dx - ref) <= bound + 1e-30)


@pytest.mark.parametrize("impl", IMPLS[1:])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 5, 8, 12])
def test_non_finite_input_gives_non_finite_row(impl, bits, rows):
    """A NaN or inf in x never turns into a finite output: its row is non-finite, the others are not."""
    x, q, s, b = problem(0, rows, 96, 20, bits, 32, 1.0, False)
    x[0, 5] = np.nan
    if rows == 5:
        x[0, 5] = np.inf
    if rows > 1:
        x[rows - 1, 70] = np.inf
    with implementation(impl) as (fwd, _, _native):
        y, _ = fwd(x, q, s, b)
    assert not np.isfinite(y[0]).any()
    if rows > 1:
        assert not np.isfinite(y[rows - 1]).all()
        assert np.isfinite(y[1:rows - 1]).all()


@pytest.mark.parametrize("impl", IMPLS[1:])
def test_zero_rows_and_zero_x(impl):
    x, q, s, b = problem(1, 3, 64, 10, 8, None, 1.0, False)
    with implementation(impl) as (fwd, bwd, _native):
        y, _ = fwd(np.zeros((0, 64), np.float32), q, s, b)
        assert y.shape == (0, 10)
        y, _ = fwd(np.zeros((2, 64), np.float32), q, s, b)  # all-zero blocks: scale 0, y = b exactly
        np.testing.assert_array_equal(y, np.broadcast_to(b, (2, 10)))
        assert bwd(np.zeros((0, 10), np.float32), q, s).shape == (0, 64)
    with implementation(impl) as (fwd, _, _native):  # int4 at the GEMV's shape: all-zero x gives b exactly
        q4, s4 = quantize_int4(np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32), 32)
        np.testing.assert_array_equal(fwd(np.zeros((3, 64), np.float32), q4, s4, b)[0], np.broadcast_to(b, (3, 10)))


def test_native_errors_name_the_problem():
    if not HAS_NATIVE:
        pytest.skip("tinygpt._C is not built with quantized_linear")
    x, q, s, b = problem(0, 2, 64, 10, 8, None, 1.0, False)
    f = cpu.quantized_linear_forward
    with pytest.raises(ValueError, match="q must be int8"):
        f(x, q.astype(np.int16), s, b)
    with pytest.raises(ValueError, match="shape"):
        f(x[:, :32].copy(), q, s, b)
    with pytest.raises(ValueError, match="scale"):
        f(x, q, s[:5].copy(), b)
    with pytest.raises(ValueError, match="bias"):
        f(x, q, s, b[:3].copy())
    with pytest.raises(ValueError, match="x must be float32"):
        f(x.astype(np.float64), q, s, b)
    q4, s4 = quantize_int4(np.ones((10, 64), np.float32), 32)
    with pytest.raises(ValueError, match="int4 scale"):
        f(x, q4, np.ones((10, 3), np.float32), b)  # 3 groups do not divide 64 inputs
    with pytest.raises(ValueError, match="grad"):
        cpu.quantized_linear_backward(np.ones((2, 9), np.float32), q, s)


@pytest.mark.parametrize("bits", [8, 4])
def test_module_runs_the_op_and_matches_reference(bits):
    """QuantizedLinear goes through kernels.select('quantized_linear'); TINYGPT_NATIVE off gives the reference."""
    lin = tg.nn.Linear(96, 40)
    ql = QuantizedLinear.from_linear(lin, bits=bits, **({"group_size": 32} if bits == 4 else {})).eval()
    x = np.random.default_rng(3).standard_normal((2, 5, 96)).astype(np.float32)
    with tg.no_grad():
        y = ql(tg.Tensor(x)).numpy()
        with kernels.use_native(False):
            y_ref = ql(tg.Tensor(x)).numpy()
    check_forward(y.reshape(-1, 40), x.reshape(-1, 96), ql.qweight, ql.scale, ql.bias, gemv=False)
    check_forward(y_ref.reshape(-1, 40), x.reshape(-1, 96), ql.qweight, ql.scale, ql.bias, gemv=False)


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


@contextlib.contextmanager
def gelu_implementation(name):
    """(fused forward, fused backward, gelu forward, gelu backward of h, gemv_possible, unfused backward) of one
    implementation: the fused op must be exactly its own product followed by its own GELU."""
    if name == "reference":
        yield (R.quantized_linear_gelu_forward, R.quantized_linear_gelu_backward,
               lambda h: R.gelu_forward(h, "tanh")[0], lambda g, h, saved: R.gelu_backward(g, h, "tanh", saved[1:]),
               False, R.quantized_linear_backward)
        return
    with implementation(name) as (_, bwd, native):
        if name == "cuda":
            from tinygpt.kernels.cuda import gelu as KG  # noqa: PLC0415
            from tinygpt.kernels.cuda import quantized_linear as KQ  # noqa: PLC0415

            yield (_on_gpu(KQ.quantized_linear_gelu_forward), _on_gpu(KQ.quantized_linear_gelu_backward),
                   _on_gpu(lambda h: KG.gelu_forward(h, "tanh")[0]),
                   _on_gpu(lambda g, h, saved: KG.gelu_backward(g, h, "tanh", ())), False, bwd)
            return
        yield (cpu.quantized_linear_gelu_forward, cpu.quantized_linear_gelu_backward,
               lambda h: cpu.gelu_forward(h, "tanh")[0], lambda g, h, saved: cpu.gelu_backward(g, h, "tanh", ()),
               native, bwd)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=15, deadline=None)
@given(rows=st.sampled_from([1, 3, 8, 9, 20]), groups=st.integers(1, 12), n_out=st.integers(1, 70),
       bits=st.sampled_from([8, 4]), bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_gelu_fused_is_product_then_gelu(impl, rows, groups, n_out, bits, bias, seed):
    """quantized_linear_gelu: the saved h is the product (within check_forward's bound for the path taken),
    y is exactly that implementation's tanh GELU of h, dx exactly its backward through gelu'(h)."""
    n_in = groups * 32
    x, q, s, b = problem(seed, rows, n_in, n_out, bits, 32, 1.0, True, bias)
    g = np.random.default_rng(seed + 1).standard_normal((rows, n_out)).astype(np.float32)
    with gelu_implementation(impl) as (fwd, bwd, gelu_f, gelu_b, native, bwd_plain):
        y, saved = fwd(x, q, s, b)
        h = saved[0]
        check_forward(h, x, q, s, b, gemv=native and rows <= GEMV_ROWS)
        np.testing.assert_array_equal(y, gelu_f(h))
        dx = bwd(g, q, s, saved)
        np.testing.assert_array_equal(dx, bwd_plain(gelu_b(g, h, saved), q, s))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_mlp_runs_the_fused_op(bits, monkeypatch):
    """A quantized MLP's c_fc + tanh GELU is one quantized_linear_gelu call, equal to the unfused modules."""
    tg.manual_seed(0)
    mlp = tg.nn.MLP(64)
    mlp.c_fc = QuantizedLinear.from_linear(mlp.c_fc, bits=bits)
    mlp.c_proj = QuantizedLinear.from_linear(mlp.c_proj, bits=bits)
    mlp.eval()
    x = tg.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32))
    seen = []
    select = kernels.select
    monkeypatch.setattr(kernels, "select", lambda op, *a, **k: seen.append(op) or select(op, *a, **k))
    with tg.no_grad():
        y = mlp(x).numpy()
        unfused = mlp.c_proj(mlp.gelu(mlp.c_fc(x))).numpy()
    assert seen[0] == "quantized_linear_gelu" and seen[1] == "quantized_linear"
    np.testing.assert_allclose(y, unfused, rtol=1e-5, atol=1e-6)
