"""quantized_linear and quantized_linear_gelu (reference.py, csrc/cpu/quantized_linear.cpp,
csrc/cuda/quantized_linear.cu + kernels/cuda/quantized_linear.py): y = x @ (q * s).T + b from int8
per-channel and packed int4 group weights, against a float64 evaluation of the dequantized product, on
every implementation present; argument errors, non-finite inputs and the modules that call the ops on top.

Bounds (u = 2^-24, W = q * s exactly in float64, A = |x| @ |W|.T + |b|):
- Float paths (the reference; CUDA, whose GEMV accumulates in float at every row count; the native CPU
  tiled path: rows > 8, or int4 groups other than 32): the weight is fl(q * s) (1 rounding) and the
  product any float32 summation of K terms, so |y - ref| <= (K + 20) u A: the standard gamma_K bound
  with slack for the bias, the weight and the output rounding. A wrong or missing term costs about
  A / K, far above it.
- The native CPU GEMV (rows <= 8, int8 or int4 groups of 32) quantizes x per block of 32 to int8,
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
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt import kernels
from tinygpt.quantize import QuantizedLinear, quantize_absmax, quantize_int4, unpack_int4

pytestmark = pytest.mark.usefixtures("seeded")  # every test starts from tg.manual_seed(0)

U = 2.0 ** -24
# The most rows the activation-quantizing GEMV takes (module doc), per implementation: only the
# native CPU has it; the reference and CUDA compute in float at every row count.
GEMV_ROWS = {"reference": 0, "cpu": 8, "cuda": 0}
# The backward and fused-op properties run 3/5 of the profile's examples (15 in ci, as before the move).
FEWER = settings(max_examples=max(1, settings.default.max_examples * 3 // 5))


class Case(NamedTuple):
    seed: int
    rows: int
    n_in: int
    n_out: int
    bits: int
    group: int | None  # int4's group size; None for int8 (one scale per output channel)
    x_scale: float
    outliers: bool
    bias: bool


@st.composite
def cases(draw, bits=st.sampled_from([8, 4]), rows=st.sampled_from([1, 2, 3, 5, 8, 9, 13]),
          n_out=st.integers(1, 40), groups=st.integers(1, 19), group=st.sampled_from([32, 32, 2, 8, 64]),
          n_in=None, x_scale=st.sampled_from([1e-3, 1.0, 50.0]), outliers=st.booleans(), bias=st.just(True)):
    """One problem of either op: n_in drawn directly where given, else groups * group (int8 too)."""
    bits, rows, n_out, group = draw(bits), draw(rows), draw(n_out), draw(group)
    n_in = draw(n_in) if n_in is not None else draw(groups) * group
    return Case(draw(st.integers(0, 2 ** 16)), rows, n_in, n_out, bits, group if bits == 4 else None,
                draw(x_scale), draw(outliers), draw(bias))


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


def gemv(impl, rows, q, s):
    """Whether impl runs this product on its activation-quantizing GEMV (int8, or int4 groups of 32)."""
    return rows <= impl.limit(GEMV_ROWS) and (q.dtype == np.int8 or q.shape[1] * 2 // s.shape[1] == 32)


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


def forward(impl, op, x, q, s, b):
    """op's forward on impl: (y, saved) with y on the host, saved as the implementation returned it."""
    y, saved = impl.kernel(op).forward(impl.to(x), impl.to(q), impl.to(s), impl.to(b))
    return impl.host(y), saved


def backward(impl, g, q, s):
    return impl.host(impl.kernel("quantized_linear").backward(impl.to(g), impl.to(q), impl.to(s)))


def _run_and_check(impl, case):
    x, q, s, b = problem(*case)
    y, saved = forward(impl, "quantized_linear", x, q, s, b)
    assert saved == ()
    check_forward(y, x, q, s, b, gemv=gemv(impl, case.rows, q, s))


@given(case=cases(bits=st.just(8), n_in=st.integers(1, 300), bias=st.booleans()))
def test_int8_forward(impl, case):
    _run_and_check(impl, case)


@given(case=cases(bits=st.just(4)))
def test_int4_forward(impl, case):
    _run_and_check(impl, case)


@pytest.mark.parametrize("bits", [8, 4])
def test_gpt2_shapes_and_leading_dims(impl, bits):
    """GPT-2's decode shapes (full runs of 8 blocks and leftovers), x (B, T, in), batch 8 and a prefill."""
    for seed, (lead, n_in, n_out) in enumerate([((1, 1), 768, 2304), ((8, 1), 3072, 65), ((2, 6), 768, 33),
                                                ((1,), 800, 7)]):
        x, q, s, b = problem(seed, int(np.prod(lead)), n_in, n_out, bits, 32, 1.0, True)
        y, _ = forward(impl, "quantized_linear", x.reshape(lead + (n_in,)), q, s, b)
        assert y.shape == lead + (n_out,)
        check_forward(y.reshape(-1, n_out), x, q, s, b, gemv=gemv(impl, x.shape[0], q, s))


@FEWER
@given(case=cases(rows=st.sampled_from([1, 4, 20]), n_out=st.integers(1, 300), groups=st.integers(1, 6),
                  group=st.just(32), x_scale=st.just(1.0), outliers=st.just(False), bias=st.just(False)))
def test_backward_is_grad_times_weight(impl, case):
    """dx = g @ W: a float32 product over the n_out channels (the float bound with K = n_out)."""
    _, q, s, _ = problem(*case._replace(rows=1))
    g = np.random.default_rng(case.seed + 1).standard_normal((case.rows, case.n_out)).astype(np.float32)
    dx = backward(impl, g, q, s)
    W, _ = dequant64(q, s)
    ref = g.astype(np.float64) @ W
    bound = (case.n_out + 20) * U * (np.abs(g.astype(np.float64)) @ np.abs(W))
    assert dx.dtype == np.float32 and dx.shape == ref.shape
    assert np.all(np.abs(dx - ref) <= bound + 1e-30)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 5, 8, 12])
def test_non_finite_input_gives_non_finite_row(native_impl, bits, rows):
    """A NaN or inf in x never turns into a finite output: its row is non-finite, the others are not."""
    x, q, s, b = problem(0, rows, 96, 20, bits, 32, 1.0, False)
    x[0, 5] = np.nan
    if rows == 5:
        x[0, 5] = np.inf
    if rows > 1:
        x[rows - 1, 70] = np.inf
    y, _ = forward(native_impl, "quantized_linear", x, q, s, b)
    assert not np.isfinite(y[0]).any()
    if rows > 1:
        assert not np.isfinite(y[rows - 1]).all()
        assert np.isfinite(y[1:rows - 1]).all()


def test_zero_rows_and_zero_x(native_impl):
    impl = native_impl
    x, q, s, b = problem(1, 3, 64, 10, 8, None, 1.0, False)
    y, _ = forward(impl, "quantized_linear", np.zeros((0, 64), np.float32), q, s, b)
    assert y.shape == (0, 10)
    y, _ = forward(impl, "quantized_linear", np.zeros((2, 64), np.float32), q, s, b)  # all-zero blocks: y = b
    np.testing.assert_array_equal(y, np.broadcast_to(b, (2, 10)))
    assert backward(impl, np.zeros((0, 10), np.float32), q, s).shape == (0, 64)
    # int4 at the GEMV's shape: all-zero x gives b exactly
    q4, s4 = quantize_int4(np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32), 32)
    np.testing.assert_array_equal(forward(impl, "quantized_linear", np.zeros((3, 64), np.float32), q4, s4, b)[0],
                                  np.broadcast_to(b, (3, 10)))


@pytest.mark.parametrize("bits", [8, 4])
def test_cuda_misaligned_x(cuda_impl, bits):
    """CUDA: x 4 bytes off a 16-byte boundary (the GEMV reads it in float4) is still within the float bound."""
    x, q, s, b = problem(2, 3, 96, 20, bits, 32, 1.0, True)
    xd = cuda_impl.to(x, offset=1)
    assert xd.data.ptr % 16
    y, _ = cuda_impl.kernel("quantized_linear").forward(xd, cuda_impl.to(q), cuda_impl.to(s), cuda_impl.to(b))
    check_forward(cuda_impl.host(y), x, q, s, b, gemv=False)


def test_native_errors_name_the_problem(cpu_impl):
    x, q, s, b = problem(0, 2, 64, 10, 8, None, 1.0, False)
    k = cpu_impl.kernel("quantized_linear")
    f = k.forward
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
        k.backward(np.ones((2, 9), np.float32), q, s)


@FEWER
@given(case=cases(rows=st.sampled_from([1, 3, 8, 9, 20]), n_out=st.integers(1, 70), groups=st.integers(1, 12),
                  group=st.just(32), x_scale=st.just(1.0), outliers=st.just(True), bias=st.booleans()))
def test_gelu_fused_is_product_then_gelu(impl, case):
    """quantized_linear_gelu: the saved h is the product (within check_forward's bound for the path taken),
    y is exactly that implementation's tanh GELU of h, dx exactly its backward through gelu'(h).
    saved is (h,) natively and (h, tanh(u(h))) on the reference, whose gelu backward takes the tanh."""
    x, q, s, b = problem(*case)
    g = np.random.default_rng(case.seed + 1).standard_normal((case.rows, case.n_out)).astype(np.float32)
    gelu = impl.kernel("gelu")
    y, saved = forward(impl, "quantized_linear_gelu", x, q, s, b)
    h = saved[0]
    check_forward(impl.host(h), x, q, s, b, gemv=gemv(impl, case.rows, q, s))
    np.testing.assert_array_equal(y, impl.host(gelu.forward(h, "tanh")[0]))
    dx = impl.host(impl.kernel("quantized_linear_gelu").backward(impl.to(g), impl.to(q), impl.to(s), saved))
    dh = gelu.backward(impl.to(g), h, "tanh", saved[1:])
    np.testing.assert_array_equal(dx, impl.host(impl.kernel("quantized_linear").backward(dh, impl.to(q), impl.to(s))))


# ------------------------------------------------------------------ the modules that call the ops
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
