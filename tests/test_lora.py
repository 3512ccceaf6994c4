"""LoRA adapters: values, grads, freezing, optimiser skipping, merge, adapter-only files, errors."""
import numpy as np
import pytest
from helpers import check_tensor_grads

import tinygpt as tg
from tinygpt import lora
from tinygpt.checkpoint import CheckpointError, save_checkpoint
from tinygpt.models import GPTClassifier
from tinygpt.nn import Linear

pytestmark = pytest.mark.usefixtures("seeded")

CFG = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def _gpt(seed=0, dtype=np.float32):
    tg.manual_seed(seed)
    model = tg.GPT(tg.GPTConfig(**CFG))
    return model.to(dtype=dtype) if dtype != np.float32 else model


def _ids(seed=1, shape=(2, 8)):
    return np.random.default_rng(seed).integers(0, 13, size=shape)


def _randomise_b(model, seed=2):
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, lora.LoRALinear):
            m.lora_B.data[...] = rng.standard_normal(m.lora_B.shape) * 0.3


def test_lora_linear_value_and_grads():
    tg.manual_seed(0)
    base = Linear(5, 4).to(dtype=np.float64)
    base.bias.data[...] = np.arange(4) * 0.1
    layer = lora.LoRALinear(base, rank=3, alpha=6.0)
    assert layer.weight is base.weight and layer.bias is base.bias and layer.scale == 2.0
    a = layer.lora_A.numpy()
    assert a.shape == (3, 5) and np.all(np.abs(a) <= 1 / np.sqrt(5)) and a.std() > 0
    np.testing.assert_array_equal(layer.lora_B.numpy(), np.zeros((4, 3)))
    layer.lora_B.data[...] = np.random.default_rng(0).standard_normal((4, 3))
    x = tg.Tensor(np.random.default_rng(1).standard_normal((2, 3, 5)), requires_grad=True)
    W, b, A, B = (p.numpy() for p in (layer.weight, layer.bias, layer.lora_A, layer.lora_B))
    expected = x.numpy() @ W.T + b + 2.0 * (x.numpy() @ A.T) @ B.T
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.delta_weight(), 2.0 * B @ A, rtol=1e-12)
    params = [x, layer.weight, layer.bias, layer.lora_A, layer.lora_B]
    check_tensor_grads(lambda: layer(x), params, names=["x", "W", "b", "A", "B"])


def test_initial_model_unchanged_and_frozen():
    model = _gpt()
    ids = _ids()
    before, _ = model(ids)
    base_names = [n for n, _ in model.named_parameters()]
    out = lora.apply(model, rank=4, alpha=8)
    assert out is model
    after, _ = model(ids)
    np.testing.assert_array_equal(after.numpy(), before.numpy())  # B = 0: exactly the same function
    names = [n for n, _ in model.named_parameters()]
    adapters = [n for n in names if n.endswith(("lora_A", "lora_B"))]
    assert adapters == [f"transformer.h.{i}.attn.c_attn.lora_{ab}" for i in range(2) for ab in "AB"]
    assert [n for n in names if n not in adapters] == base_names  # base names unchanged (checkpoints line up)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == adapters
    assert [id(p) for p in lora.trainable_parameters(model)] == \
        [id(p) for n, p in model.named_parameters() if n in adapters]
    assert model.lora_config == {"rank": 4, "alpha": 8.0, "targets": ["c_attn"], "dropout": 0.0, "trainable": []}


def test_only_adapters_get_grads_and_are_optimised():
    model = _gpt()
    lora.apply(model, rank=2, targets=("c_attn", "mlp.c_fc"))
    _randomise_b(model)
    frozen = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.requires_grad}
    adapters0 = {n: p.numpy().copy() for n, p in model.named_parameters() if p.requires_grad}
    assert len(adapters0) == 8  # 2 layers x (c_attn, c_fc) x (A, B)
    opt = tg.optim.AdamW(lora.trainable_parameters(model), lr=1e-2)
    assert sum(len(g["params"]) for g in opt.param_groups) == 8
    ids = _ids(shape=(3, 8))
    for _ in range(3):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == (n in adapters0), n
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            np.testing.assert_array_equal(p.numpy(), frozen[n], err_msg=n)
        else:
            assert not np.array_equal(p.numpy(), adapters0[n]), f"{n} did not move"


@pytest.mark.parametrize("opt_cls", [tg.optim.AdamW, tg.optim.SGD])
def test_optimisers_skip_frozen_parameters(opt_cls):
    """An optimiser over every parameter leaves frozen ones alone, even with a stale grad."""
    model = _gpt()
    lora.apply(model, rank=2)
    for p in model.parameters():
        p.grad = tg.Tensor(np.ones(p.shape, p.dtype))
    before = {id(p): p.numpy().copy() for p in model.parameters()}
    opt = opt_cls(model.parameters(), lr=0.1, momentum=0.9) if opt_cls is tg.optim.SGD else \
        opt_cls(model.parameters(), lr=0.1, weight_decay=0.1)
    opt.step()
    for p in model.parameters():
        if not p.requires_grad:
            np.testing.assert_array_equal(p.numpy(), before[id(p)])
            assert id(p) not in opt.state
        else:
            assert not np.array_equal(p.numpy(), before[id(p)])  # the adapters moved


def test_module_requires_grad_():
    model = _gpt()
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())
    ids = _ids()
    logits, loss = model(ids[:, :-1], ids[:, 1:])
    assert not loss.requires_grad
    model.requires_grad_(True)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("targets", [("c_attn",), ("c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")])
def test_merge_equals_adapted(targets):
    model = _gpt(dtype=np.float64)
    ids = _ids()
    base, _ = model(ids)
    lora.apply(model, rank=3, alpha=5.0, targets=targets)
    _randomise_b(model)
    adapted, _ = model(ids)
    assert np.abs(adapted.numpy() - base.numpy()).max() > 1e-3  # the adapters are in the path (c_fc too)
    lora.merge(model)
    merged, _ = model(ids)
    np.testing.assert_allclose(merged.numpy(), adapted.numpy(), rtol=1e-10, atol=1e-10)
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert all(type(m.attn.c_attn) is Linear and type(m.mlp.c_fc) is Linear for m in model.transformer.h)
    assert list(model.state_dict()) == list(_gpt().state_dict())
    assert not hasattr(model, "lora_config")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.merge(model)


def test_merge_in_float32_matches_closely():
    model = _gpt()
    ids = _ids()
    lora.apply(model, rank=4, alpha=4)
    _randomise_b(model)
    adapted, _ = model(ids)
    lora.merge(model)
    merged, _ = model(ids)
    np.testing.assert_allclose(merged.numpy(), adapted.numpy(), rtol=1e-4, atol=1e-5)


def test_save_holds_only_adapters_and_reloads(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    model = _gpt()
    lora.apply(model, rank=2, alpha=4, targets=("c_attn", "c_proj"))
    _randomise_b(model)
    ids = _ids()
    adapted, _ = model(ids)
    path = tmp_path / "adapters.safetensors"
    lora.save_lora(model, path)
    keys = sorted(safetensors.load_file(str(path)))
    expected = sorted(f"model/{n}" for n in lora.lora_state_dict(model))
    assert keys == expected and len(keys) == 2 * 2 * 3  # layers x (c_attn, attn.c_proj, mlp.c_proj) x (A, B)
    assert all(k.endswith(("lora_A", "lora_B")) for k in keys)
    fresh = _gpt()  # the same base weights (same seed), no adapters yet: load_lora applies them
    lora.load_lora(fresh, path)
    reloaded, _ = fresh(ids)
    np.testing.assert_array_equal(reloaded.numpy(), adapted.numpy())
    assert fresh.lora_config == model.lora_config
    other = _gpt()  # adapters applied with another rank: a clear shape error
    lora.apply(other, rank=3, alpha=4, targets=("c_attn", "c_proj"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        lora.load_lora(other, path)


def test_classifier_head_trainable_and_saved(tmp_path):
    clf = GPTClassifier(_gpt(), 3, dropout=0.0)
    lora.apply(clf, rank=2, trainable=("head",))
    trainable = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert trainable == ["gpt.transformer.h.0.attn.c_attn.lora_A", "gpt.transformer.h.0.attn.c_attn.lora_B",
                         "gpt.transformer.h.1.attn.c_attn.lora_A", "gpt.transformer.h.1.attn.c_attn.lora_B",
                         "head.weight", "head.bias"]
    assert list(lora.lora_state_dict(clf)) == trainable
    opt = clf.configure_optimizers(0.0, 1e-2)
    assert sum(len(g["params"]) for g in opt.param_groups) == 6
    ids = _ids()
    for _ in range(2):
        _, loss, _ = clf(ids, np.array([0, 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    logits, _, _ = clf(ids)
    path = tmp_path / "clf.safetensors"
    lora.save_lora(clf, path)
    fresh = GPTClassifier(_gpt(), 3, dropout=0.0).eval()
    lora.load_lora(fresh, path)
    np.testing.assert_array_equal(fresh(ids)[0].numpy(), logits.numpy())


def test_errors(tmp_path):
    model = _gpt()
    with pytest.raises(ValueError, match="no module matches targets"):
        lora.apply(model, rank=2, targets=("q_proj",))
    for rank in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="rank must be an int >= 1"):
            lora.apply(model, rank=rank)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        lora.apply(model, rank=2, alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        lora.apply(model, rank=2, dropout=1.0)
    with pytest.raises(ValueError, match="not Linear"):
        lora.apply(model, rank=2, targets=("attn",))
    with pytest.raises(ValueError, match="tied"):
        lora.apply(model, rank=2, targets=("lm_head",))
    with pytest.raises(ValueError, match="trainable"):
        lora.apply(model, rank=2, trainable=("nothing",))
    assert all(p.requires_grad for p in model.parameters())  # failed calls changed nothing
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.lora_state_dict(model)
    lora.apply(model, rank=2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        lora.apply(model, rank=2)
    plain = tmp_path / "plain.safetensors"
    save_checkpoint(plain, _gpt())
    with pytest.raises(CheckpointError, match="not a LoRA adapter file"):
        lora.load_lora(_gpt(), plain)


def test_generation_with_adapters_and_kv_cache():
    """Greedy decoding through the adapters: KV cache == no cache == the merged model."""
    model = _gpt(dtype=np.float64)
    lora.apply(model, rank=2, alpha=4, targets=("c_attn", "mlp.c_fc"))
    _randomise_b(model)
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            m.lora_B.data *= 30.0  # large enough to change greedy choices of this tiny random model
    prompt = _ids(shape=(2, 3))
    cached = model.generate(prompt, max_new_tokens=5, temperature=0, use_cache=True)
    plain = model.generate(prompt, max_new_tokens=5, temperature=0, use_cache=False)
    np.testing.assert_array_equal(cached, plain)
    lora.merge(model)
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=5, temperature=0), cached)
    base = _gpt(dtype=np.float64).generate(prompt, max_new_tokens=5, temperature=0)
    assert not np.array_equal(base, cached)  # the adapters changed the model
