"""Float64 references and error bounds shared by the per-op kernel tests (tests/ops/test_<family>.py).

Each check takes the kernel's outputs as host arrays and the constants of its own bound (stated
and justified in the test module that uses it), so the CPU and GPU suites test one definition of
"close to the reference" and differ only where the kernels' accumulations differ.
"""
import numpy as np

from tinygpt.kernels import reference as R

EPS32 = 2.0 ** -24  # float32 unit roundoff


def random_arrays(seed, shapes, mags):
    """float32 standard-normal arrays of the given shapes, each times its magnitude."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * m).astype(np.float32) for s, m in zip(shapes, mags)]


# ----------------------------------------------------------------------------- embedding
def embedding_problem(seed, V, ids_shape, C, dtype):
    """(ids of `dtype` in [0, V), weight (V, C), grad (*ids_shape, C) scaled by 10), all random."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(V, np.iinfo(dtype).max + 1), size=ids_shape).astype(dtype)
    w = rng.standard_normal((V, C)).astype(np.float32)
    g = (rng.standard_normal(tuple(ids_shape) + (C,)) * 10).astype(np.float32)
    return ids, w, g


# ----------------------------------------------------------------------------- attention
def attention_ref64(q, k, v, g, causal, window, p, seed, scale):
    """The reference in float64, plus the componentwise magnitudes `nat` of every output and Smax."""
    q64, k64, v64, g64 = (a.astype(np.float64) for a in (q, k, v, g))
    out, saved = R.attention_forward(q64, k64, v64, causal, window, p, seed, scale)
    dq, dk, dv = R.attention_backward(g64, q64, k64, v64, p, scale, saved)
    att, keep = saved
    kd = np.ones_like(att) if keep is None else keep / (1.0 - p)
    sw = np.swapaxes
    P, Pd = np.abs(att), np.abs(att) * kd
    dP = (np.abs(g64) @ sw(np.abs(v64), -1, -2)) * kd
    out_nat = Pd @ np.abs(v64)
    # D = rowsum(dO * O) is formed from the float32 O, whose error scales with out_nat, not with |O|:
    # |O| << out_nat when O cancels (many keys, v of both signs, Dv = 1), and D's error then does not
    Dn = (np.abs(g64) * out_nat).sum(-1, keepdims=True)
    dS = P * (dP + Dn) * abs(scale)
    nat = dict(out=out_nat, dq=dS @ np.abs(k64), dk=sw(dS, -1, -2) @ np.abs(q64), dv=sw(Pd, -1, -2) @ np.abs(g64))
    smax = float(np.abs(q64 @ sw(k64, -1, -2)).max() * abs(scale)) if q.size and k.size else 0.0
    return dict(out=out, dq=dq, dk=dk, dv=dv), nat, smax


def assert_attention_within_bound(got, q, k, v, g, causal, window, p, seed, scale, c1, c2, label):
    """got = dict(out, dq, dk, dv) (float32 host arrays): |got - ref| <= eps32 (c1 + c2 Smax) nat."""
    ref, nat, smax = attention_ref64(q, k, v, g, causal, window, p, seed, scale)
    for name, val in got.items():
        assert val.dtype == np.float32 and val.shape == ref[name].shape, name
        bound = EPS32 * (c1 + c2 * smax) * nat[name] + 1e-30
        err = np.abs(val - ref[name])
        worst = np.unravel_index(np.argmax(err / bound), err.shape) if err.size else None
        assert np.all(err <= bound), (
            f"{name}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
            f"(ref {ref[name][worst]:.6g}, {label} {val[worst]:.6g}, Smax {smax:.3g})")


# ----------------------------------------------------------------------------- cross-entropy
def cross_entropy_problem(seed, N, V, scale, ignore_index, ignore_frac):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((N, V)) * scale).astype(np.float32)
    targets = rng.integers(0, V, N).astype(np.int64)
    targets[rng.random(N) < ignore_frac] = ignore_index
    return logits, targets


def assert_cross_entropy_within_bound(loss, dx, logits, targets, ignore_index, grad, loss_terms, grad_terms):
    """The kernel's float32 loss and dx (host) against the float64 reference.

    Forward: |loss - ref| <= (loss_terms + 2 |ref|) eps32 (each row's log-sum-exp is off by
    <= loss_terms eps32). Backward, per element: scale * (rel * p + 4 eps32 [target]) with
    rel = (|x - m| + 2 |log s| + grad_terms) eps32; ignored rows exactly zero.
    """
    x64 = logits.astype(np.float64)
    loss64, saved64 = R.cross_entropy_forward(x64, targets, ignore_index)
    assert loss.dtype == np.float32 and loss.shape == ()
    valid = targets != ignore_index
    m = x64.max(axis=-1, keepdims=True)
    log_s = saved64[0] - m  # reference lse - m = log sum exp(x - m), (N, 1)
    bound = loss_terms * EPS32 + 2 * EPS32 * abs(float(loss64))
    assert abs(float(loss) - float(loss64)) <= bound, (float(loss), float(loss64), bound)

    dx64 = R.cross_entropy_backward(np.float64(np.float32(grad)), x64, targets, saved64)
    assert dx.dtype == np.float32 and dx.shape == logits.shape
    scale = abs(float(np.float32(grad))) / max(int(valid.sum()), 1)
    p = np.exp(x64 - m - log_s)
    rel = (np.abs(x64 - m) + 2 * np.abs(log_s) + grad_terms) * EPS32
    onehot = np.zeros_like(p)
    rows = np.nonzero(valid)[0]
    onehot[rows, targets[rows]] = 1.0
    dbound = scale * (rel * p + 4 * EPS32 * onehot) + 1e-37 * scale
    err = np.abs(dx.astype(np.float64) - dx64)
    worst = np.unravel_index(np.argmax(err / dbound), err.shape)
    assert np.all(err <= dbound), (worst, dx[worst], dx64[worst], dbound[worst])
    assert np.all(dx[~valid] == 0.0)  # ignored rows: exact zeros


# ----------------------------------------------------------------------------- layernorm
LN_EPS32 = float(np.finfo(np.float32).eps)  # 2^-23: the layernorm bounds are stated in these units
LN_K = 4.0


def layernorm_problem(seed, lead, C, scale, offset, affine):
    """rng, x (badly conditioned rows when offset is large), grad, weight and bias per `affine`."""
    rng = np.random.default_rng(seed)
    shape = lead + (C,)
    x = ((rng.standard_normal(shape) + offset * rng.standard_normal(lead + (1,))) * scale).astype(np.float32)
    g = (rng.standard_normal(shape) * rng.choice([1e-2, 1.0, 1e3])).astype(np.float32)
    w = (rng.standard_normal(C) * 2).astype(np.float32) if affine in ("wb", "w") else None
    b = rng.standard_normal(C).astype(np.float32) if affine in ("wb", "b") else None
    return rng, x, g, w, b


def f64(a):
    return None if a is None else a.astype(np.float64)


def layernorm_row_terms(s64, eps):
    """rstd and cond = max|x| * rstd per row, shaped (..., 1), from the float64 input."""
    mean = s64.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((s64 - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    return rstd, np.abs(s64).max(axis=-1, keepdims=True) * rstd


def assert_within(name, got, want, tol):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.isfinite(got).all(), f"{name}: non-finite values"
    err = np.abs(got - want)
    bad = err > tol
    assert not bad.any(), (
        f"{name}: {bad.sum()} of {bad.size} outside tolerance; worst err {err.max():.3e}, "
        f"err/tol {np.max(err / tol):.3g}")


def assert_layer_norm_forward(y, y_ref, s64, w, b, eps, floor=0.0):
    C = s64.shape[-1]
    rstd, cond = layernorm_row_terms(s64, eps)
    wmag = 1.0 if w is None else np.abs(w.astype(np.float64))
    bmag = 0.0 if b is None else np.abs(b.astype(np.float64))
    assert_within("y", y, y_ref, LN_K * LN_EPS32 * np.sqrt(C) * ((1 + cond) * wmag + bmag) + floor)


def assert_layer_norm_backward(dx, dw, db, ref_grads, s64, g, w, eps, extra_dx=None, floor=0.0, sum_terms=None):
    """sum_terms(N): the eps multiple of the dweight/dbias row sums (default LN_K: pairwise/blocked)."""
    dx_ref, dw_ref, db_ref = ref_grads
    C = s64.shape[-1]
    N = s64.size // C
    k_sum = LN_K if sum_terms is None else sum_terms(N)
    rstd, cond = layernorm_row_terms(s64, eps)
    g64 = g.astype(np.float64)
    dxhat = np.abs(g64 * (1.0 if w is None else w.astype(np.float64)))
    dx_scale = rstd * dxhat.max(axis=-1, keepdims=True) * (1 + cond)
    if extra_dx is not None:
        dx_scale = dx_scale + np.abs(extra_dx)
    assert_within("dx", dx, dx_ref, LN_K * LN_EPS32 * np.sqrt(C) * dx_scale + floor)
    g2, c2 = np.abs(g64).reshape(-1, C), (1 + cond).reshape(-1, 1)
    if w is None:
        assert dw is None
    else:
        assert_within("dweight", dw, dw_ref, k_sum * LN_EPS32 * (g2 * c2).sum(axis=0) + 1e-30)
    assert_within("dbias", db, db_ref, k_sum * LN_EPS32 * g2.sum(axis=0) + 1e-30)
