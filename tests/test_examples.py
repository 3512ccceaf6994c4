"""The example programs, run in-process on a small synthetic text (no network, a few seconds)."""
import json
import math
import os
import urllib.request

import pytest

import tinygpt as tg
import tinygpt.checkpoint  # noqa: F401 - tg.checkpoint below

from helpers import load_example as _load


train_shakespeare = _load("train_shakespeare")
sample = _load("sample")

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
        "--eval-interval", "5", "--eval-iters", "2", "--final-eval-iters", "3", "--warmup-iters", "3",
        "--no-progress", "--log-interval", "100", "--seed", "7", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    lines = [f"{name}:\nThou art {adj} as the {thing}, and {adj} is thy {thing}.\n"
             for name in ("ROMEO", "JULIET", "FRIAR", "NURSE")
             for adj in ("fair", "sweet", "bold", "true")
             for thing in ("moon", "rose", "night", "sword")]
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text("\n".join(lines * 3), encoding="utf-8")
    return str(path)


def _train(text_file, out_dir, *extra):
    return train_shakespeare.main(["--data", str(text_file), "--out-dir", str(out_dir), *TINY, *extra])


@pytest.fixture(scope="module")
def trained(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = _train(text_file, out, "--max-iters", "20", "--sample-tokens", "30")
    return out, summary


def test_train_summary_and_checkpoint(trained):
    out, s = trained
    assert s["iterations"] == 20 and s["iterations_this_run"] == 20 and not s["resumed"]
    assert len(s["train_losses"]) == 20
    for key in ("final_train_loss", "final_val_loss", "best_val_loss", "median_ms_per_iter", "tokens_per_s"):
        assert math.isfinite(s[key]) and s[key] > 0, key
    # the model learns: from ~ln(vocab) at the start to clearly below it
    first = s["train_losses"]["0"]
    assert first == pytest.approx(math.log(s["config"]["vocab_size"]), abs=0.3)
    assert s["final_train_loss"] < first - 0.3
    assert s["params"] == tg.GPT(tg.GPTConfig(**s["config"])).num_params()
    assert len(s["sample"]) == 30
    assert os.path.isfile(out / "ckpt.safetensors") and s["checkpoint"] == str(out / "ckpt.safetensors")
    with open(out / "summary.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["final_val_loss"] == s["final_val_loss"] and saved["sample"] == s["sample"]
    meta = tg.checkpoint.read_checkpoint_metadata(out / "ckpt.safetensors")
    assert meta["config"]["n_layer"] == 2 and meta["tokenizer"]["type"] == "char"
    assert meta["extra"]["best_val_loss"] == s["best_val_loss"]


def test_resume_is_bit_for_bit(text_file, tmp_path):
    """20 iterations in one go == 10, then --resume to 20 (dropout on: masks must match too)."""
    common = ["--dropout", "0.2", "--lr-decay-iters", "20", "--sample-tokens", "0"]
    whole = _train(text_file, tmp_path / "a", "--max-iters", "20", *common)
    first = _train(text_file, tmp_path / "b", "--max-iters", "10", "--always-save-checkpoint", *common)
    assert tg.checkpoint.read_checkpoint_metadata(tmp_path / "b" / "ckpt.safetensors")["step"] == 10
    second = _train(text_file, tmp_path / "b", "--max-iters", "20", "--resume", *common)
    assert second["resumed"] and second["start_iter"] == 10 and second["iterations_this_run"] == 10
    assert {**first["train_losses"], **second["train_losses"]} == whole["train_losses"]  # exact floats
    assert second["final_train_loss"] == whole["final_train_loss"]
    assert second["final_val_loss"] == whole["final_val_loss"]
    assert second["best_val_loss"] == whole["best_val_loss"]


def test_train_gpt3_banded_and_moe_flags(text_file, tmp_path):
    """--sparse-pattern/--attention-window (GPT-3) and --n-expert (MoE) reach the model and checkpoint."""
    s = _train(text_file, tmp_path / "g3", "--max-iters", "4", "--sample-tokens", "0", "--sparse-pattern",
               "alternating", "--attention-window", "8", "--n-expert", "2", "--expert-top-k", "1")
    cfg = tg.checkpoint.read_checkpoint_metadata(tmp_path / "g3" / "ckpt.safetensors")["config"]
    assert (cfg["sparse_pattern"], cfg["attention_window"], cfg["n_expert"], cfg["expert_top_k"]) == \
        ("alternating", 8, 2, 1)
    model = tg.GPT(tg.GPTConfig(**s["config"]))
    assert s["params"] == model.num_params() > tg.GPT(tg.GPTConfig(**{**s["config"], "n_expert": 0})).num_params()
    assert model.config.layer_window(1) == 8 and model.config.layer_window(0) is None
    with pytest.raises(SystemExit, match="needs attention_window"):
        _train(text_file, tmp_path / "bad", "--max-iters", "2", "--sparse-pattern", "banded")


def test_resume_without_checkpoint_fails_clearly(text_file, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        _train(text_file, tmp_path / "nothing", "--max-iters", "2", "--resume")


def test_sample_from_checkpoint(trained, capsys):
    out, _ = trained
    texts = sample.main(["--out-dir", str(out), "--prompt", "ROMEO:", "--num-samples", "2",
                         "--max-new-tokens", "25", "--seed", "3"])
    assert len(texts) == 2 and all(t.startswith("ROMEO:") and len(t) == 6 + 25 for t in texts)
    assert "ROMEO:" in capsys.readouterr().out
    again = sample.main(["--out-dir", str(out), "--prompt", "ROMEO:", "--num-samples", "2",
                         "--max-new-tokens", "25", "--seed", "3", "--quiet"])
    assert again == texts  # seeded
    greedy = sample.main(["--ckpt", str(out / "ckpt.safetensors"), "--prompt", "Thou", "--temperature", "0",
                          "--num-samples", "2", "--max-new-tokens", "10", "--top-p", "0.9", "--quiet"])
    assert greedy[0] == greedy[1]
    streamed = sample.main(["--out-dir", str(out), "--prompt", "ROMEO:", "--num-samples", "2",
                            "--max-new-tokens", "25", "--seed", "3", "--stream"])
    assert streamed == texts  # the stream yields the tokens generate returns
    assert texts[0] in capsys.readouterr().out
    uncached = sample.main(["--out-dir", str(out), "--prompt", "ROMEO:", "--num-samples", "2",
                            "--max-new-tokens", "25", "--seed", "3", "--no-cache", "--quiet"])
    assert uncached == texts
    penalised = sample.main(["--out-dir", str(out), "--prompt", "ROMEO:", "--num-samples", "2",
                             "--max-new-tokens", "25", "--seed", "3", "--repetition-penalty", "1.3", "--quiet"])
    assert all(t.startswith("ROMEO:") and len(t) == 6 + 25 for t in penalised)


def test_sample_unknown_prompt_character(trained):
    out, _ = trained
    with pytest.raises(SystemExit, match="unknown character 'Z'"):
        sample.main(["--out-dir", str(out), "--prompt", "Zebra", "--quiet"])


def test_sample_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        sample.main(["--out-dir", str(tmp_path), "--quiet"])


@pytest.mark.skipif(tg.backend.cuda_available(), reason="a CUDA GPU is available here")
def test_device_cuda_without_gpu_exits_clearly(text_file, tmp_path):
    with pytest.raises(SystemExit, match="use --device cpu") as info:
        _train(text_file, tmp_path, "--max-iters", "1", "--device", "cuda")
    assert "--device cuda" in str(info.value)


def test_missing_data_with_failing_download(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    missing = tmp_path / "data" / "tinyshakespeare.txt"
    url = "https://example.org/tinyshakespeare.txt"
    with pytest.raises(SystemExit) as info:
        train_shakespeare.main(["--data", str(missing), "--data-url", url, "--out-dir", str(tmp_path / "out"),
                                "--max-iters", "1"])
    message = str(info.value)
    assert str(missing) in message and "download" in message.lower() and url in message
    assert not missing.exists()


def test_no_data_flag_trains_offline_on_the_packaged_text(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("no download may be attempted")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)  # no data/tinyshakespeare.txt here
    summary = train_shakespeare.main(["--out-dir", "out", "--max-iters", "2", "--eval-interval", "2",
                                      "--eval-iters", "1", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                                      "--block-size", "16", "--batch-size", "2", "--sample-tokens", "0", "--no-progress"])
    assert summary["vocab_size"] == 65  # Tiny Shakespeare's 65 characters
    assert not (tmp_path / "data").exists()


def test_missing_custom_data_file(tmp_path):
    missing = tmp_path / "mine.txt"
    with pytest.raises(SystemExit, match="no training text at"):
        train_shakespeare.main(["--data", str(missing), "--out-dir", str(tmp_path / "out"), "--max-iters", "1"])


# ---------------------------------------------------------------- --tokenizer bpe

BPE = ["--tokenizer", "bpe", "--vocab-size", "300"]


@pytest.fixture(scope="module")
def trained_bpe(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_bpe")
    summary = _train(text_file, out, *BPE, "--max-iters", "10", "--sample-tokens", "12")
    return out, summary


def test_bpe_run_saves_tokenizer_files_and_metadata(trained_bpe, text_file):
    from tinygpt.tokenizers import ByteLevelBPE, from_dict

    out, s = trained_bpe
    assert s["tokenizer"] == "bpe" and s["vocab_size"] == 300 == s["config"]["vocab_size"]
    assert s["args"]["tokenizer"] == "bpe" and s["args"]["vocab_size"] == 300
    meta = tg.checkpoint.read_checkpoint_metadata(out / "ckpt.safetensors")
    assert meta["tokenizer"]["type"] == "bpe" and len(meta["tokenizer"]["vocab"]) == 300
    tok = ByteLevelBPE.load(out)  # vocab.json + merges.txt beside the checkpoint
    assert tok == from_dict(meta["tokenizer"]) and tok.special_tokens == {"<|endoftext|>": 299}
    with open(text_file, encoding="utf-8") as f:
        text = f.read()
    n = int(len(text) * 0.9)
    assert tok == ByteLevelBPE.train(text[:n], 300)  # trained on the training split only
    assert s["tokens"] == len(tok.encode(text[:n])) + len(tok.encode(text[n:])) < 0.5 * len(text)
    assert s["train_losses"]["0"] == pytest.approx(math.log(300), abs=0.3)
    assert isinstance(s["sample"], str) and s["sample"]


def test_bpe_resume_is_bit_for_bit(text_file, tmp_path, capsys):
    common = [*BPE, "--dropout", "0.1", "--lr-decay-iters", "8", "--sample-tokens", "0"]
    whole = _train(text_file, tmp_path / "a", "--max-iters", "8", *common)
    first = _train(text_file, tmp_path / "b", "--max-iters", "4", "--always-save-checkpoint", *common)
    # the tokenizer comes from the checkpoint: other tokenizer flags are reported and ignored
    second = _train(text_file, tmp_path / "b", "--max-iters", "8", "--resume", *common[:2], "--vocab-size", "400",
                    *common[4:])
    assert "ignoring --vocab-size" in capsys.readouterr().out
    assert second["resumed"] and second["vocab_size"] == 300
    assert {**first["train_losses"], **second["train_losses"]} == whole["train_losses"]  # exact floats
    assert second["final_val_loss"] == whole["final_val_loss"]


def test_sample_from_bpe_checkpoint(trained_bpe):
    out, _ = trained_bpe
    args = ["--out-dir", str(out), "--num-samples", "2", "--max-new-tokens", "15", "--seed", "3", "--quiet"]
    texts = sample.main([*args, "--prompt", "ROMEO:"])
    assert len(texts) == 2 and all(t.startswith("ROMEO:") and len(t) > 6 for t in texts)
    assert sample.main([*args, "--prompt", "ROMEO:"]) == texts  # seeded
    # byte-level: any prompt is encodable, even characters the training text never had
    assert all(t.startswith("Zebra 🦓") for t in sample.main([*args, "--prompt", "Zebra 🦓"]))


def test_tokenizer_flag_errors(text_file, tmp_path):
    with pytest.raises(SystemExit, match="--vocab-size is for --tokenizer bpe"):
        _train(text_file, tmp_path / "c", "--max-iters", "1", "--vocab-size", "300")
    with pytest.raises(SystemExit, match="--vocab-size: .*vocab_size must be an int >= 256"):
        _train(text_file, tmp_path / "d", "--max-iters", "1", "--tokenizer", "bpe", "--vocab-size", "100")
