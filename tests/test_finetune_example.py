"""The fine-tuning program (tinygpt/cli/finetune.py = examples/finetune_classifier.py): speech parsing, splits,
cropping, an end-to-end run on a tiny model, the saved classifier labelling new text."""
import inspect
import json
import math
import os
from collections import Counter

import numpy as np
import pytest

import tinygpt as tg
from tinygpt import lora
from tinygpt.checkpoint import read_checkpoint_metadata
from tinygpt.cli import finetune as ft
from tinygpt.cli import train as train_shakespeare
from tinygpt.data import CharTokenizer

LINES = {"ROMEO": "The moon is bright tonight, my love.", "JULIET": "A rose by any other name.",
         "NURSE": "Madam, your mother calls.", "First Citizen": "Speak, speak, we are resolved."}


def _text(rng):
    """Speeches of four speakers in unequal numbers (ROMEO most), each line the speaker's own, shuffled."""
    counts = {"ROMEO": 14, "JULIET": 10, "NURSE": 7, "First Citizen": 5}
    speakers = [s for s, n in counts.items() for _ in range(n)]
    rng.shuffle(speakers)
    blocks = [f"{s}:\n" + "\n".join([LINES[s]] * int(rng.integers(1, 3))) for s in speakers]
    return "\n\n".join(blocks) + "\n", counts


def test_parse_speeches():
    text = ("First Citizen:\nBefore we proceed,\nhear me speak.\n\nAll:\nSpeak, speak.\n\n"
            "ROMEO:\nWhat say you:\nnothing.\n\nNOT A SPEAKER:\n\nJULIET:\nAy me!\n")
    assert ft.parse_speeches(text) == [("First Citizen", "Before we proceed,\nhear me speak."),
                                       ("All", "Speak, speak."), ("ROMEO", "What say you:\nnothing."),
                                       ("JULIET", "Ay me!")]  # 'NOT A SPEAKER:' has no lines: skipped


def test_splits_crop_and_pad():
    speeches = [("A", "x" * k) for k in range(1, 8)] + [("B", "y")] * 3 + [("C", "z")] * 2 + [("D", "w")]
    classes, train, val = ft.make_splits(speeches, 3, 0.25, seed=0)
    assert classes == ["A", "B", "C"] and len(train) + len(val) == 12 and len(val) == 3
    assert Counter(y for _, y in train + val) == Counter({0: 7, 1: 3, 2: 2})
    again = ft.make_splits(speeches, 3, 0.25, seed=0)
    assert again == (classes, train, val)  # seeded
    tok = CharTokenizer("abcdefgh")
    seqs, labels = ft.encode(tok, [("abcdefgh", 1), ("abc", 0)], 5, "start")
    assert [s.tolist() for s in seqs] == [[0, 1, 2, 3, 4], [0, 1, 2]] and labels.tolist() == [1, 0]
    seqs, _ = ft.encode(tok, [("abcdefgh", 1)], 5, "end")
    assert seqs[0].tolist() == [3, 4, 5, 6, 7]
    ids, lengths = ft.pad_batch([np.array([1, 2, 3]), np.array([4])])
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and lengths.tolist() == [3, 1]
    with pytest.raises(SystemExit, match="unknown character 'z'"):
        ft.encode(tok, [("az", 0)], 5, "start")
    with pytest.raises(SystemExit, match="only 4 speakers"):
        ft.make_splits(speeches, 5, 0.25, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    rng = np.random.default_rng(0)
    text, counts = _text(rng)
    path = tmp_path_factory.mktemp("data") / "speeches.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path_factory.mktemp("ckpt")
    train_shakespeare.main(["--data", str(path), "--out-dir", str(out), "--n-layer", "1", "--n-head", "2",
                            "--n-embd", "16", "--block-size", "24", "--batch-size", "4", "--max-iters", "6",
                            "--eval-interval", "6", "--eval-iters", "1", "--final-eval-iters", "1",
                            "--warmup-iters", "2", "--no-progress", "--sample-tokens", "0", "--seed", "3",
                            "--no-plot"])
    return path, out, counts


def test_end_to_end(checkpoint, tmp_path):
    data, ckpt_dir, counts = checkpoint
    out = tmp_path / "ft"
    s = ft.main(["--init-from", str(ckpt_dir), "--data", str(data), "--n-classes", "3", "--max-iters", "8",
                 "--batch-size", "4", "--eval-interval", "4", "--lora", "2", "--no-progress", "--seed", "5",
                 "--out-dir", str(out)])
    assert s["classes"] == ["ROMEO", "JULIET", "NURSE"]
    assert s["n_train"] + s["n_val"] == 14 + 10 + 7 and s["n_val"] == round(0.2 * 31)
    assert s["majority_class"] in s["classes"] and 0 < s["majority_val_accuracy"] <= 1
    assert set(s["runs"]) == {"fine-tuned", "lora-r2", "scratch"}
    for name, r in s["runs"].items():
        for key in ("val_accuracy", "train_accuracy"):
            assert 0.0 <= r[key] <= 1.0, (name, key)
            # accuracy is a count over the split
            n = s["n_val"] if key == "val_accuracy" else s["n_train"]
            assert math.isclose(r[key] * n, round(r[key] * n), abs_tol=1e-9)
        for key in ("val_loss", "train_loss", "first_task_loss", "last_task_loss", "time_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key)
        assert [e["iter"] for e in r["evals"]] == [4, 8]
    full, lo = s["runs"]["fine-tuned"]["trainable_params"], s["runs"]["lora-r2"]["trainable_params"]
    assert s["runs"]["scratch"]["trainable_params"] == full
    # LoRA trains A (2, 16) and B (48, 2) on the one layer's c_attn, plus the head (3, 16) and its bias
    assert lo == 2 * 16 + 48 * 2 + 16 * 3 + 3 and lo < full
    assert s["finetuned_val_accuracy"] == s["runs"]["fine-tuned"]["val_accuracy"]
    with open(out / "summary.json", encoding="utf-8") as f:
        assert json.load(f)["runs"]["scratch"]["val_accuracy"] == s["scratch_val_accuracy"]
    assert os.path.isfile(out / "lora.safetensors")
    # LoRA's alpha: the example's default is the API's (lora.apply(rank) without alpha)
    assert read_checkpoint_metadata(out / "lora.safetensors")["extra"]["lora"]["alpha"] == 2.0
    assert inspect.signature(lora.apply).parameters["alpha"].default is None  # None: alpha = rank


def test_saved_classifier_labels_new_text(checkpoint, tmp_path):
    """The fine-tuned classifier is kept whole (GPT + head + classes + tokenizer) and labels new text,
    with the same predictions as the model that was just trained."""
    data, ckpt_dir, _ = checkpoint
    out = tmp_path / "ft"
    texts = [LINES["ROMEO"], LINES["JULIET"] + "\n" + LINES["JULIET"], LINES["NURSE"]]
    s = ft.main(["--init-from", str(ckpt_dir), "--data", str(data), "--n-classes", "3", "--max-iters", "30",
                 "--batch-size", "8", "--lr", "1e-2", "--warmup-iters", "5", "--no-compare-scratch", "--no-progress",
                 "--out-dir", str(out), *sum((["--classify", t] for t in texts), [])])
    assert s["runs"]["fine-tuned"]["classifier"] == str(out / ft.CLASSIFIER_NAME)
    meta = read_checkpoint_metadata(out / ft.CLASSIFIER_NAME)
    assert meta["extra"]["classifier"]["classes"] == ["ROMEO", "JULIET", "NURSE"] and meta["tokenizer"]["type"] == "char"
    rng_before = tg.get_rng_state()
    again = ft.main(["--classifier", str(out), *sum((["--classify", t] for t in texts), [])])
    assert tg.get_rng_state() == rng_before  # loading draws nothing from the global RNG
    assert [p["label"] for p in again["predictions"]] == [p["label"] for p in s["predictions"]]
    for p, q in zip(again["predictions"], s["predictions"]):
        assert p["probs"] == pytest.approx(q["probs"], abs=1e-6) and sum(p["probs"].values()) == pytest.approx(1.0)
    # each speaker has its own line: a fine-tuned classifier tells them apart
    assert [p["label"] for p in again["predictions"]] == ["ROMEO", "JULIET", "NURSE"]
    blocks = tmp_path / "speeches.txt"
    blocks.write_text("\n\n".join(texts) + "\n")
    from_file = ft.main(["--classifier", str(out / ft.CLASSIFIER_NAME), "--classify-file", str(blocks)])
    assert [p["text"] for p in from_file["predictions"]] == texts
    with pytest.raises(SystemExit, match="needs text to label"):
        ft.main(["--classifier", str(out)])
    with pytest.raises(SystemExit, match="not a saved classifier"):
        ft.main(["--classifier", str(ckpt_dir / "ckpt.safetensors"), "--classify", "x"])


def test_pretrained_beats_majority_on_an_easy_task(checkpoint):
    """Each speaker has its own line: a short fine-tune should separate them well above the majority rate."""
    data, ckpt_dir, _ = checkpoint
    s = ft.main(["--init-from", str(ckpt_dir / "ckpt.safetensors"), "--data", str(data), "--n-classes", "3",
                 "--max-iters", "40", "--batch-size", "8", "--lr", "1e-2", "--warmup-iters", "5",
                 "--no-compare-scratch", "--no-progress", "--val-fraction", "0.3"])
    assert "scratch" not in s["runs"] and s["scratch_val_accuracy"] is None
    r = s["runs"]["fine-tuned"]
    assert r["last_task_loss"] < r["first_task_loss"]
    assert r["val_accuracy"] > s["majority_val_accuracy"] + 0.2


def test_bad_arguments(checkpoint, tmp_path):
    data, ckpt_dir, _ = checkpoint
    with pytest.raises(SystemExit, match="no such file"):
        ft.main(["--init-from", str(tmp_path / "none.safetensors"), "--data", str(data)])
    with pytest.raises(SystemExit, match="--n-classes must be >= 2"):
        ft.main(["--init-from", str(ckpt_dir), "--data", str(data), "--n-classes", "1"])
    with pytest.raises(SystemExit, match="only 4 speakers"):
        ft.main(["--init-from", str(ckpt_dir), "--data", str(data), "--n-classes", "9"])
    with pytest.raises(SystemExit, match="no training text at"):
        ft.main(["--init-from", str(ckpt_dir), "--data", str(tmp_path / "missing.txt")])
    with pytest.raises(SystemExit, match="--init-from is required"):
        ft.main(["--data", str(data)])
