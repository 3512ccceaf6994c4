"""Optimisers, LR schedule and grad clipping: against torch where installed, and on their own."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygpt as tg
from tinygpt.nn import Parameter
from tinygpt.nn.utils import clip_grad_norm_
from tinygpt.optim import SGD, AdamW, CosineWarmupScheduler, cosine_with_warmup

SHAPES = [(3, 4), (5,), (2, 2)]


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def grads_for(step, dtype, seed=1):
    rng = np.random.default_rng(seed * 1000 + step)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def set_grads(params, grads, skip=()):
    for i, (p, g) in enumerate(zip(params, grads)):
        p.grad = None if i in skip else tg.Tensor(g.copy())


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- AdamW vs torch


def adamw_groups(params, torch_params=None):
    p = torch_params or params
    return [{"params": [p[0], p[2]], "lr": 1e-2, "weight_decay": 0.1},
            {"params": [p[1]], "lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)}]


def skipped(step):
    """Parameter 2 never has a grad; parameter 1 has none at step 3 (its state must not advance)."""
    return {2, 1} if step == 3 else {2}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamw_matches_torch_two_groups(dtype):
    torch = pytest.importorskip("torch")
    params = make_params(dtype)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = AdamW(adamw_groups(params), lr=1.0, eps=1e-8)
    topt = torch.optim.AdamW(adamw_groups(params, tparams), lr=1.0, eps=1e-8)
    start = params[2].data.copy()
    for step in range(6):
        grads = grads_for(step, dtype)
        set_grads(params, grads, skip=skipped(step))
        for i, (tp, g) in enumerate(zip(tparams, grads)):
            tp.grad = None if i in skipped(step) else torch.tensor(g.copy())
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, tp.detach().numpy(), **tol(dtype))
    np.testing.assert_array_equal(params[2].data, start)  # never had a grad
    assert id(params[2]) not in opt.state
    assert opt.state[id(params[1])]["step"] == 5


@settings(max_examples=25, deadline=None)
@given(lr=st.floats(1e-5, 1.0), b1=st.floats(0.0, 0.99), b2=st.floats(0.0, 0.9999),
       eps=st.floats(1e-10, 1e-2), wd=st.floats(0.0, 0.5))
def test_adamw_hyperparameters_match_torch(lr, b1, b2, eps, wd):
    torch = pytest.importorskip("torch")
    params = make_params(np.float64)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    topt = torch.optim.AdamW(tparams, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for step in range(3):
        grads = grads_for(step, np.float64)
        set_grads(params, grads)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "learning rate"),
    (dict(eps=-1e-8), "epsilon"),
    (dict(betas=(1.0, 0.999)), "beta parameter at index 0"),
    (dict(betas=(0.9, -0.1)), "beta parameter at index 1"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW(make_params(np.float32), **kwargs)


def test_adamw_rejects_bad_group_option_and_bad_params():
    p = make_params(np.float32)
    with pytest.raises(ValueError, match="learning rate"):
        AdamW([{"params": p[:1]}, {"params": p[1:], "lr": -0.1}])
    with pytest.raises(ValueError, match="more than one parameter group"):
        AdamW([{"params": p[:2]}, {"params": p[1:]}])
    with pytest.raises(ValueError, match="empty"):
        AdamW([])
    with pytest.raises(TypeError, match="Tensors"):
        AdamW([np.zeros(3)])
    with pytest.raises(TypeError, match="iterable"):
        AdamW(p[0])


def test_adamw_group_defaults_and_single_tensor_group():
    p = make_params(np.float32)
    opt = AdamW([{"params": p[0]}, {"params": p[1:], "lr": 0.5, "name": "no_decay"}], lr=0.1, weight_decay=0.2)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["weight_decay"] == 0.2
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["name"] == "no_decay"
    assert len(opt.param_groups[0]["params"]) == 1 and opt.param_groups[0]["params"][0] is p[0]


def test_adamw_uses_the_fused_kernel_once_per_param_with_grad(monkeypatch):
    import tinygpt.kernels

    calls = []
    monkeypatch.setattr(tinygpt.kernels, "adamw_step", lambda *a, **kw: calls.append(kw["step"]))
    params = make_params(np.float32)
    opt = AdamW(params)
    for step in range(2):
        set_grads(params, grads_for(step, np.float32), skip={2})
        opt.step()
    assert calls == [1, 1, 2, 2]


def test_zero_grad():
    params = make_params(np.float32)
    opt = AdamW(params)
    set_grads(params, grads_for(0, np.float32))
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.data.any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


# ---------------------------------------------------------------- SGD vs torch


@pytest.mark.parametrize("momentum, dampening, nesterov, wd", [
    (0.0, 0.0, False, 0.0), (0.0, 0.0, False, 0.1), (0.9, 0.0, False, 0.0),
    (0.9, 0.1, False, 0.01), (0.9, 0.0, True, 0.0), (0.5, 0.0, True, 0.05)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sgd_matches_torch(momentum, dampening, nesterov, wd, dtype):
    torch = pytest.importorskip("torch")
    params = make_params(dtype)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    kw = dict(momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd)
    opt = SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], lr=0.1, **kw)
    topt = torch.optim.SGD([{"params": tparams[:2]}, {"params": tparams[2:], "lr": 0.01}], lr=0.1, **kw)
    for step in range(5):
        grads = grads_for(step, dtype)
        skip = {0} if step == 2 else set()
        set_grads(params, grads, skip)
        for i, (tp, g) in enumerate(zip(tparams, grads)):
            tp.grad = None if i in skip else torch.tensor(g.copy())
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), **tol(dtype))


def test_sgd_rejects_bad_hyperparameters():
    p = make_params(np.float32)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    for kw in (dict(lr=-1), dict(lr=0.1, momentum=-0.1), dict(lr=0.1, weight_decay=-1)):
        with pytest.raises(ValueError, match="Invalid"):
            SGD(p, **kw)


# ---------------------------------------------------------------- state_dict round trip


def json_round_trip(sd):
    """What a checkpoint does to the non-array parts: JSON (tuples -> lists, int keys -> str)."""
    groups = json.loads(json.dumps(sd["param_groups"]))
    state = {str(i): {k: v for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": groups}


@pytest.mark.parametrize("make", [
    lambda ps: AdamW(adamw_groups(ps), lr=0.1),
    lambda ps: SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], lr=0.1, momentum=0.9, nesterov=True),
])
def test_state_dict_round_trip_gives_identical_next_step(make):
    params = make_params(np.float32)
    opt = make(params)
    for step in range(3):
        set_grads(params, grads_for(step, np.float32), skip={2})
        opt.step()
    sd = opt.state_dict()
    snapshot = {i: {k: np.copy(v) for k, v in s.items()} for i, s in sd["state"].items()}

    clone = [Parameter(p.data.copy()) for p in params]
    opt2 = make(clone)
    opt2.param_groups[0]["lr"] = 123.0  # overwritten by the load
    opt2.load_state_dict(json_round_trip(sd))
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    if "betas" in opt.param_groups[1]:
        assert opt2.param_groups[1]["betas"] == (0.8, 0.99)

    for step in range(3, 5):
        grads = grads_for(step, np.float32)
        set_grads(params, grads, skip={2})
        set_grads(clone, grads, skip={2})
        opt.step()
        opt2.step()
        for p, q in zip(params, clone):
            np.testing.assert_array_equal(p.data, q.data)
    for i, s in sd["state"].items():  # state_dict() is a copy, not a view of live state
        for k, v in s.items():
            np.testing.assert_array_equal(v, snapshot[i][k])


def test_load_state_dict_mismatch_errors():
    params = make_params(np.float32)
    opt = AdamW(adamw_groups(params))
    set_grads(params, grads_for(0, np.float32))
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameter groups.*has 1"):
        AdamW(make_params(np.float32)).load_state_dict(sd)
    ps = make_params(np.float32)
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the state, 1 in the optimiser"):
        AdamW([{"params": ps[:1]}, {"params": ps[1:]}]).load_state_dict(sd)
    wrong = [Parameter(np.zeros((4, 3), np.float32)), Parameter(np.zeros(5, np.float32)),
             Parameter(np.zeros((2, 2), np.float32))]
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*\(4, 3\)"):
        AdamW(adamw_groups(wrong)).load_state_dict(sd)


def test_load_state_dict_casts_to_param_dtype():
    params = make_params(np.float64)
    opt = AdamW(params)
    set_grads(params, grads_for(0, np.float64))
    opt.step()
    sd = opt.state_dict()
    sd["state"] = {i: {k: (v.astype(np.float32) if hasattr(v, "dtype") else v) for k, v in s.items()}
                   for i, s in sd["state"].items()}
    opt2 = AdamW(params)
    opt2.load_state_dict(sd)
    assert all(s["exp_avg"].dtype == np.float64 for s in opt2.state.values())


# ---------------------------------------------------------------- LR schedule

SCHED = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)


def test_cosine_schedule_key_points():
    lr = lambda s: cosine_with_warmup(s, **SCHED)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)            # max_lr * 1 / warmup
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)            # warmup - 1: the top
    assert lr(10) == pytest.approx(1.0)           # warmup: cosine starts at max_lr
    assert lr(60) == pytest.approx(0.55)          # half way: the mean of max and min
    assert lr(110) == pytest.approx(0.1)          # decay_steps: min_lr
    assert lr(10_000) == 0.1
    ref = lambda s: 0.1 + 0.5 * (1 + math.cos(math.pi * (s - 10) / 100)) * 0.9  # noqa: E731
    for s in range(10, 111):
        assert lr(s) == pytest.approx(ref(s), abs=1e-12)
    decay = [lr(s) for s in range(10, 200)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_cosine_schedule_edge_cases():
    assert cosine_with_warmup(0, max_lr=1.0, min_lr=0.0, warmup_steps=0, decay_steps=4) == 1.0
    assert cosine_with_warmup(5, max_lr=1.0, min_lr=0.2, warmup_steps=5, decay_steps=5) == 0.2
    with pytest.raises(ValueError, match="warmup_steps <= decay_steps"):
        cosine_with_warmup(0, max_lr=1.0, min_lr=0.0, warmup_steps=10, decay_steps=5)
    with pytest.raises(ValueError, match="step"):
        cosine_with_warmup(-1, **SCHED)


def test_scheduler_sets_every_group_and_round_trips():
    params = make_params(np.float32)
    opt = AdamW(adamw_groups(params))
    sched = CosineWarmupScheduler(opt, **SCHED)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1)] * 2
    for _ in range(30):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [cosine_with_warmup(30, **SCHED)] * 2
    state = json.loads(json.dumps(sched.state_dict()))
    opt2 = AdamW(adamw_groups(make_params(np.float32)))
    sched2 = CosineWarmupScheduler(opt2, **SCHED)
    sched2.load_state_dict(state)
    assert opt2.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    assert sched2.step() == sched.step() == cosine_with_warmup(31, **SCHED)


# ---------------------------------------------------------------- grad clipping


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype):
    torch = pytest.importorskip("torch")
    params = make_params(dtype)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    grads = grads_for(0, dtype)
    set_grads(params, grads, skip={1})
    for i, (tp, g) in enumerate(zip(tparams, grads)):
        tp.grad = None if i == 1 else torch.tensor(g.copy())
    total = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type)
    assert isinstance(total, tg.Tensor) and total.shape == () and total.device == "cpu"  # as torch: a tensor
    assert float(total) == pytest.approx(ttotal.item(), rel=1e-6)
    for p, tp in zip(params, tparams):
        if tp.grad is None:
            assert p.grad is None
        else:
            assert p.grad.data.dtype == dtype
            np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), **tol(dtype) if dtype == np.float32
                                       else dict(rtol=1e-10))


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 10.0))
def test_clip_grad_norm_bounds_the_norm(scale, max_norm):
    params = make_params(np.float64)
    set_grads(params, [g * scale for g in grads_for(0, np.float64)])
    before = np.sqrt(sum(float((p.grad.data ** 2).sum()) for p in params))
    total = float(clip_grad_norm_(params, max_norm))
    after = np.sqrt(sum(float((p.grad.data ** 2).sum()) for p in params))
    assert total == pytest.approx(before, rel=1e-12)
    assert after <= max_norm * (1 + 1e-9)
    if before <= max_norm:
        assert after == pytest.approx(before, rel=1e-12)


def test_clip_grad_norm_edge_cases():
    p = Parameter(np.ones(3, np.float32))
    assert float(clip_grad_norm_([p], 1.0)) == 0.0  # no grads at all
    p.grad = tg.Tensor(np.array([3.0, 4.0, 0.0], np.float32))
    assert float(clip_grad_norm_(p, 1.0)) == pytest.approx(5.0)  # a single tensor works too
    np.testing.assert_allclose(p.grad.data, [0.6, 0.8, 0.0], rtol=1e-5)
    p.grad = tg.Tensor(np.array([np.nan, 1.0, 0.0], np.float32))
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert math.isnan(float(clip_grad_norm_([p], 1.0)))
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_([p], 1.0, norm_type=0)
