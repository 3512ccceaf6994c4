"""A GPU training step reads nothing back from the device until the whole step is queued.

Every device -> host copy (cupy's .get / .item / int() / float() / bool() ...) makes the host wait
for the GPU, so a read in the middle of a step stops Python from queueing the rest of it while the
GPU works. These tests count the reads of one `tinygpt.cli.train.train_step` on the NumPy-backed
CuPy stand-in (tests/fake_cupy.py), on the reference array code and on the CUDA kernels (the CPU
emulator), and check that they all come after the optimiser's launch: the token-id and target range
checks stay on the device (read with the loss), the clip norm and its scale stay on the device, and
the multi-tensor launch tables are built once and reused.
"""
import numpy as np
import pytest

import fake_cupy
import tinygpt as tg
from tinygpt import kernels
from tinygpt.cli.train import micro_batches, train_step
from tinygpt.data import BatchSampler
from tinygpt.kernels import cuda as kcuda

pytestmark = pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2,
                                reason="the stand-in needs NumPy 2 (0-d results through __array_wrap__)")

READS = ("get", "item", "tolist", "__int__", "__float__", "__bool__", "__index__")


@pytest.fixture(params=["reference", "emulator"])
def gpu(request, monkeypatch):
    """The stand-in GPU, with the reference array code or the CUDA kernels (emulated); yields the event log."""
    if tg.backend.cuda_available() and not isinstance(tg.backend._cupy, fake_cupy.FakeCupy):
        pytest.skip("a real GPU is present: the count needs the stand-in's instrumented arrays")
    if request.param == "emulator":
        fake_cupy.install_emulator(monkeypatch)
    else:
        fake_cupy.install(monkeypatch)
    monkeypatch.setattr(tg.backend, "_pending", [])
    events = []
    for name in READS:
        real = getattr(fake_cupy.GpuArray, name)
        monkeypatch.setattr(fake_cupy.GpuArray, name,
                            lambda self, *a, _real=real, _name=name: events.append(f"read:{_name}") or _real(self, *a))
    real_asnumpy = fake_cupy.FakeCupy.asnumpy
    monkeypatch.setattr(fake_cupy.FakeCupy, "asnumpy",
                        staticmethod(lambda x: events.append("read:asnumpy") or real_asnumpy(x)))
    real_step = kernels.adamw_multi_step
    monkeypatch.setattr(kernels, "adamw_multi_step", lambda *a, **k: events.append("optimizer") or real_step(*a, **k))
    tables = []
    real_asarray = fake_cupy.FakeCupy.asarray
    monkeypatch.setattr(kcuda, "_tables", {})

    def asarray(x, dtype=None):  # a launch table copied up: a 2-D int64 host array
        if (isinstance(x, np.ndarray) and not isinstance(x, fake_cupy.GpuArray) and x.dtype == np.int64 and x.ndim == 2
                and x.shape[1] in (2, 5)):  # (pointer, size) or AdamW's 4 pointers and size per tensor
            tables.append(x.shape)
        return real_asarray(x, dtype)

    monkeypatch.setattr(fake_cupy.FakeCupy, "asarray", staticmethod(asarray))
    yield request.param, events, tables


def _setup(vocab=17):
    tg.manual_seed(0)
    config = tg.GPTConfig(vocab_size=vocab, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    model = tg.GPT(config).to("cuda")
    optimizer = model.configure_optimizers(0.1, 1e-3, betas=(0.9, 0.99))
    tokens = np.random.default_rng(0).integers(0, vocab, 500)
    sampler = BatchSampler(tokens, 4, config.block_size, seed=0)
    return model, optimizer, sampler, lambda a: tg.Tensor(a, device="cuda")


def test_a_training_step_reads_the_gpu_only_after_queueing_it(gpu):
    impl, events, tables = gpu
    if impl == "reference":
        pytest.skip("the reference indexes with the token ids, so it checks their range first (a read)")
    model, optimizer, sampler, to_device = _setup()
    params = model.parameters()
    for step in range(3):
        events.clear()
        stats = train_step(model, optimizer, micro_batches(sampler, 2), lr=1e-3, grad_clip=1.0, to_device=to_device,
                           params=params)
        assert np.isfinite(stats["loss"])
        # the optimiser (one update per param group: decayed and not) is the step's last work; then the
        # reads: the deferred range checks' flags (one copy) and the loss of each micro-batch (2)
        assert events == ["optimizer"] * 2 + ["read:get"] + ["read:item"] * 2, events
        if step == 0:
            n_tables = len(tables)
            # the CUDA kernels: the grad_norm/grad_clip table and one AdamW table per param group (the
            # reference builds none)
            assert n_tables == 3
    # every step builds them afresh here only because the stand-in's gradients get new addresses each
    # step (CuPy's pool hands a repeating pattern of allocations the same ones): same arrays, same table
    assert len(tables) == 3 * n_tables
    grads = [p for p in params if p.grad is not None]
    tg.nn.utils.clip_grad_norm_(grads, 1.0)
    tg.nn.utils.clip_grad_norm_(grads, 1.0)
    assert len(tables) == 3 * n_tables  # the last step's norm table serves both clips' 4 launches


def test_an_out_of_range_token_still_raises_by_the_loss_read(gpu):
    model, optimizer, sampler, to_device = _setup()
    x, y = sampler.sample()
    x[1, 3] = 17  # vocab 17: one past the end
    with pytest.raises(ValueError, match=r"embedding: token id 17 at position \(1, 3\) is out of range \[0, 17\)"):
        train_step(model, optimizer, [(x, y)], lr=1e-3, grad_clip=1.0, to_device=to_device)
    x, y = sampler.sample()
    y[0, 5] = -3
    with pytest.raises(ValueError, match=r"cross_entropy: target -3 at flat position 5 is out of range \[0, 17\)"):
        train_step(model, optimizer, [(x, y)], lr=1e-3, grad_clip=1.0, to_device=to_device)
    tg.backend.check_pending()  # each failure was reported once
    # (the step was queued before the check was read: its update went through, as on the GPU)


def test_clip_norm_stays_on_the_device(gpu):
    _, events, _ = gpu
    g = tg.nn.Parameter(np.zeros(5, np.float32)).to("cuda")
    g.grad = tg.Tensor(np.array([3, 4, 0, 0, 0], np.float32), device="cuda")
    events.clear()
    total = tg.nn.utils.clip_grad_norm_([g], 1.0)
    assert events == [] and total.device == "cuda"  # no read: the scale was computed on the device
    assert float(total) == pytest.approx(5.0)
    np.testing.assert_allclose(g.grad.numpy(), [0.6, 0.8, 0, 0, 0], rtol=1e-6)
