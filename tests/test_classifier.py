"""GPTClassifier (GPT-1 fine-tuning): last-token pooling with padding, L = L_task + lambda L_LM, grads, learning."""
import numpy as np
import pytest
from helpers import check_tensor_grads

import tinygpt as tg
from tinygpt.models import GPTClassifier

pytestmark = pytest.mark.usefixtures("seeded")

CFG = dict(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def _model(dtype=np.float32, n_classes=3, lm_weight=0.5, **cfg):
    gpt = tg.GPT(tg.GPTConfig(**{**CFG, **cfg}))
    if dtype != np.float32:
        gpt.to(dtype=dtype)
    clf = GPTClassifier(gpt, n_classes, lm_weight=lm_weight, dropout=0.0)
    clf.head.bias.data[...] = np.random.default_rng(5).standard_normal(n_classes)  # a nonzero bias is checked too
    return clf


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _reference(clf, ids, lengths, labels):
    """Per row, the unpadded sequence alone: class logits from its last hidden state, and the losses (float64)."""
    W, b = clf.head.weight.numpy().astype(np.float64), clf.head.bias.numpy().astype(np.float64)
    logits, lm_terms = [], []
    with tg.no_grad():
        for row, n in zip(ids, lengths):
            seq = row[None, :n]
            h = clf.gpt.hidden_states(seq).numpy()[0].astype(np.float64)  # (n, C)
            logits.append(h[-1] @ W.T + b)
            lm_logits, _ = clf.gpt(seq)
            lp = _log_softmax(lm_logits.numpy()[0].astype(np.float64))  # (n, V)
            lm_terms += [-lp[t, row[t + 1]] for t in range(n - 1)]
    logits = np.array(logits)
    task = -_log_softmax(logits)[np.arange(len(labels)), labels].mean()
    return logits, task, float(np.mean(lm_terms))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_last_real_token_and_padding_content(norm):
    clf = _model(norm=norm).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 11, size=(4, 9))
    lengths = np.array([9, 4, 1, 6])
    labels = np.array([0, 2, 1, 2])
    logits, loss, parts = clf(ids, labels, lengths=lengths)
    ref_logits, ref_task, ref_lm = _reference(clf, ids, lengths, labels)
    np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(parts["task"].item(), ref_task, rtol=1e-5)
    np.testing.assert_allclose(parts["lm"].item(), ref_lm, rtol=1e-5)
    # other padding content: bit-for-bit the same logits and losses
    noisy = ids.copy()
    for r, n in enumerate(lengths):
        noisy[r, n:] = rng.integers(0, 11, size=9 - n)
    assert not np.array_equal(noisy, ids)
    logits2, loss2, _ = clf(noisy, labels, lengths=lengths)
    np.testing.assert_array_equal(logits2.numpy(), logits.numpy())
    assert loss2.item() == loss.item()
    # an attention mask says the same thing as lengths
    mask = (np.arange(9)[None, :] < lengths[:, None]).astype(np.int64)
    logits3, loss3, _ = clf(noisy, labels, attention_mask=mask)
    np.testing.assert_array_equal(logits3.numpy(), logits.numpy())
    assert loss3.item() == loss.item()
    # without lengths every token is real: the last column is pooled
    full, _, _ = clf(ids)
    np.testing.assert_allclose(full.numpy()[0], ref_logits[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(clf.predict(ids, lengths=lengths), logits.numpy().argmax(-1))


@pytest.mark.parametrize("lm_weight", [0.5, 0.25, 2.0])
def test_loss_is_task_plus_lambda_lm(lm_weight):
    clf = _model(np.float64, lm_weight=lm_weight)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 11, size=(3, 7))
    lengths = np.array([7, 2, 5])
    labels = np.array([1, 0, 2])
    logits, loss, parts = clf(ids, labels, lengths=lengths)
    ref_logits, task, lm = _reference(clf, ids, lengths, labels)
    np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(parts["task"].item(), task, rtol=1e-10)
    np.testing.assert_allclose(parts["lm"].item(), lm, rtol=1e-10)
    np.testing.assert_allclose(loss.item(), task + lm_weight * lm, rtol=1e-10)


def test_lm_weight_zero_and_single_tokens():
    clf = _model(np.float64, lm_weight=0.0)
    ids = np.random.default_rng(2).integers(0, 11, size=(2, 5))
    _, loss, parts = clf(ids, np.array([0, 1]), lengths=np.array([5, 3]))
    assert parts["lm"] is None and loss.item() == parts["task"].item()
    clf = _model(np.float64, lm_weight=0.5)  # every row one token long: no next-token targets, task loss only
    _, loss, parts = clf(ids, np.array([0, 1]), lengths=np.array([1, 1]))
    assert parts["lm"] is None and loss.item() == parts["task"].item()
    logits, loss, parts = clf(ids)
    assert loss is None and parts == {} and logits.shape == (2, 3)


def test_gradients_match_finite_differences():
    clf = _model(np.float64, n_classes=3, lm_weight=0.5, vocab_size=7, block_size=6, n_layer=1, n_embd=8)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 7, size=(3, 6))
    lengths, labels = np.array([6, 3, 1]), np.array([2, 0, 1])
    names, params = zip(*clf.named_parameters())
    check_tensor_grads(lambda: clf(ids, labels, lengths=lengths)[1], list(params), names=list(names),
                       max_entries=8, seed=4)


def test_learns_a_toy_task():
    """Label = is token 1 anywhere in the (variable-length) sequence; needs attention back from the last token."""
    tg.manual_seed(0)
    clf = _model(n_classes=2, vocab_size=6, block_size=10, n_layer=1, n_embd=16)
    rng = np.random.default_rng(7)

    def batch(n):
        lengths = rng.integers(3, 11, size=n)
        ids = rng.integers(2, 6, size=(n, 10))
        labels = rng.integers(0, 2, size=n)
        for r in range(n):
            if labels[r]:
                ids[r, rng.integers(0, lengths[r] - 1)] = 1  # never the last token itself
        ids[np.arange(10)[None, :] >= lengths[:, None]] = 0
        return ids, labels, lengths

    opt = clf.configure_optimizers(weight_decay=0.0, learning_rate=1e-2)
    ids, labels, lengths = batch(256)
    clf.eval()
    acc0 = (clf.predict(ids, lengths=lengths) == labels).mean()
    clf.train()
    for _ in range(80):
        x, y, n = batch(32)
        _, loss, _ = clf(x, y, lengths=n)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    acc = (clf.predict(ids, lengths=lengths) == labels).mean()
    assert acc > 0.9 and acc > acc0 + 0.25, (acc0, acc)


def test_bad_inputs():
    clf = _model()
    ids = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="outside"):
        clf(ids, lengths=np.array([4, 0]))
    with pytest.raises(ValueError, match="outside"):
        clf(ids, lengths=np.array([5, 1]))
    with pytest.raises(ValueError, match="one per row"):
        clf(ids, lengths=np.array([4]))
    with pytest.raises(ValueError, match="right padding"):
        clf(ids, attention_mask=np.array([[1, 1, 1, 1], [0, 1, 1, 1]]))
    with pytest.raises(ValueError, match="not both"):
        clf(ids, lengths=np.array([4, 4]), attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"labels must be ints in \[0, 3\)"):
        clf(ids, np.array([0, 3]))
    with pytest.raises(ValueError, match="labels must have shape"):
        clf(ids, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="n_classes"):
        GPTClassifier(clf.gpt, 1)
    with pytest.raises(ValueError, match="lm_weight"):
        GPTClassifier(clf.gpt, 2, lm_weight=-1.0)
    with pytest.raises(TypeError, match="GPT"):
        GPTClassifier(tg.nn.Linear(2, 2), 2)
