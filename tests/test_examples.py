"""The training and sampling programs (tinygpt/cli, run by examples/*.py and the `tinygpt` command),
in-process on a small synthetic text (no network, a few seconds each), plus one real Ctrl-C."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request

import numpy as np
import pytest

import tinygpt as tg
import tinygpt.checkpoint  # noqa: F401 - tg.checkpoint below
from tinygpt.cli import finetune as cli_finetune
from tinygpt.cli import metrics as cli_metrics
from tinygpt.cli import quantize as cli_quantize
from tinygpt.cli import sample
from tinygpt.cli import train as train_shakespeare

from helpers import ROOT, load_example

SRC = os.path.dirname(os.path.dirname(os.path.abspath(tg.__file__)))  # the tinygpt under test
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
        "--eval-interval", "5", "--eval-iters", "2", "--final-eval-iters", "3", "--warmup-iters", "3",
        "--no-progress", "--log-interval", "100", "--seed", "7", "--lr", "3e-3", "--no-plot"]


def strict_json(path):
    """Parse a JSON file, failing on NaN / Infinity (not JSON)."""
    def refuse(token):
        raise AssertionError(f"{path} holds {token}")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=refuse)


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
    summary = _train(text_file, out, "--max-iters", "20", "--sample-tokens", "30", "--plot")
    return out, summary


def test_examples_run_the_package_programs():
    """examples/*.py are thin wrappers: the same main() as `tinygpt <command>`."""
    assert load_example("train_shakespeare").main is train_shakespeare.main
    assert load_example("sample").main is sample.main
    assert load_example("finetune_classifier").main is cli_finetune.main
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"] == {"tinygpt": "tinygpt.cli:main"}
    assert project["optional-dependencies"]["plot"] == ["matplotlib"]


def test_console_entry_point_and_python_m(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-m", "tinygpt", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and all(c in out.stdout for c in ("train", "sample", "finetune", "plot", "quantize"))
    out = subprocess.run([sys.executable, "-m", "tinygpt", "train", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: tinygpt train") and "--grad-accum" in out.stdout
    out = subprocess.run([sys.executable, "-m", "tinygpt", "nope"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2 and "unknown command 'nope'" in out.stderr
    from tinygpt.cli import main as cli_main

    assert cli_main(["--version"]) == 0


def test_train_summary_checkpoint_metrics_and_plot(trained):
    out, s = trained
    assert s["iterations"] == 20 and s["iterations_this_run"] == 20 and not s["resumed"] and not s["interrupted"]
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
    saved = strict_json(out / "summary.json")
    assert saved["final_val_loss"] == s["final_val_loss"] and saved["sample"] == s["sample"]
    meta = tg.checkpoint.read_checkpoint_metadata(out / "ckpt.safetensors")
    assert meta["config"]["n_layer"] == 2 and meta["tokenizer"]["type"] == "char"
    assert meta["extra"]["best_val_loss"] == s["best_val_loss"]
    # the metrics log: a start record, one record per step, the evaluations with ppl and bits
    records = cli_metrics.read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    assert [r["iter"] for r in train] == list(range(20))
    assert [r["loss"] for r in train] == [s["train_losses"][str(i)] for i in range(20)]
    for r in train:
        assert r["lr"] > 0 and r["ms_per_iter"] > 0
        assert r["tokens_per_s"] == pytest.approx(4 * 16 / (r["ms_per_iter"] / 1e3))
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 5, 10, 15, 20, 20] and evals[-1]["final"]
    for r in evals:
        for split in ("train", "val"):
            loss = r[f"{split}_loss"]
            assert r[f"{split}_ppl"] == pytest.approx(math.exp(loss))
            assert r[f"{split}_bits_per_token"] == pytest.approx(loss / math.log(2))
            assert r[f"{split}_bits_per_char"] == pytest.approx(loss / math.log(2))  # char tokenizer: 1 char a token
    assert evals[-1]["val_loss"] == s["final_val_loss"] and evals[-1]["eval_iters"] == 3
    assert s["plot"] == str(out / "loss.png")
    with open(out / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_is_bit_for_bit_and_appends_the_log(text_file, tmp_path):
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
    records = cli_metrics.read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["resumed"] for r in records if r["type"] == "start"] == [False, True]
    assert [r["iter"] for r in records if r["type"] == "train"] == list(range(20))
    assert cli_metrics.curves(records)["train"] == {int(k): v for k, v in whole["train_losses"].items()}


def test_resume_with_larger_max_iters_keeps_the_schedule(text_file, tmp_path):
    """The cosine's end is fixed when the run starts (here --max-iters 10): resuming to 20 continues at
    --min-lr instead of restarting the decay (which made the lr climb back towards the peak)."""
    common = ["--sample-tokens", "0", "--min-lr", "1e-4"]
    _train(text_file, tmp_path, "--max-iters", "10", "--always-save-checkpoint", *common)
    s = _train(text_file, tmp_path, "--max-iters", "20", "--resume", *common)
    assert s["args"]["lr_decay_iters"] == 10
    lrs = {r["iter"]: r["lr"] for r in cli_metrics.read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "train"}
    assert [lrs[i] for i in range(10, 20)] == [1e-4] * 10
    assert all(lrs[i + 1] <= lrs[i] for i in range(3, 19))  # never climbs after the warmup
    # --lr-decay-iters given explicitly stretches the schedule (the user's choice)
    s = _train(text_file, tmp_path, "--max-iters", "24", "--resume", "--lr-decay-iters", "40", *common)
    lrs = [r["lr"] for r in cli_metrics.read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "train"][-4:]
    assert all(lr > 1e-4 for lr in lrs) and s["args"]["lr_decay_iters"] == 40


def test_resume_restores_the_run_settings(text_file, tmp_path):
    """Settings not given on the command line come from the checkpoint: a bare --resume continues the run
    as it was started (here: its --max-iters, --lr and --eval-interval)."""
    _train(text_file, tmp_path, "--max-iters", "12", "--lr", "2e-3", "--eval-interval", "4", "--sample-tokens", "0")
    meta = tg.checkpoint.read_checkpoint_metadata(tmp_path / "ckpt.safetensors")
    assert meta["step"] == 12
    with pytest.raises(SystemExit, match="nothing to train: the checkpoint is at iteration 12 and --max-iters is 12"):
        train_shakespeare.main(["--data", text_file, "--out-dir", str(tmp_path), "--resume", "--no-plot"])
    s = train_shakespeare.main(["--data", text_file, "--out-dir", str(tmp_path), "--resume", "--max-iters", "14",
                                "--no-plot", "--no-progress", "--sample-tokens", "0"])
    assert (s["args"]["lr"], s["args"]["eval_interval"], s["args"]["n_embd"], s["iterations"]) == (2e-3, 4, 32, 14)


def test_max_iters_below_the_checkpoint_is_an_error_not_nan(text_file, tmp_path):
    _train(text_file, tmp_path, "--max-iters", "10", "--always-save-checkpoint", "--sample-tokens", "0")
    with pytest.raises(SystemExit, match="nothing to train: the checkpoint is at iteration 10 and --max-iters is 5"):
        _train(text_file, tmp_path, "--max-iters", "5", "--resume")
    strict_json(tmp_path / "summary.json")  # the first run's summary: valid JSON, no NaN anywhere


def test_refuses_to_overwrite_a_checkpoint_without_force(text_file, tmp_path):
    _train(text_file, tmp_path, "--max-iters", "5", "--sample-tokens", "0")
    before = (tmp_path / "ckpt.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="already holds a checkpoint \\(iteration 5\\): pass --resume .* or --force"):
        _train(text_file, tmp_path, "--max-iters", "5", "--sample-tokens", "0")
    assert (tmp_path / "ckpt.safetensors").read_bytes() == before
    s = _train(text_file, tmp_path, "--max-iters", "3", "--sample-tokens", "0", "--force", "--always-save-checkpoint")
    assert s["iterations"] == 3 and tg.checkpoint.read_checkpoint_metadata(tmp_path / "ckpt.safetensors")["step"] == 3
    records = cli_metrics.read_metrics(tmp_path / "metrics.jsonl")  # a new run starts a new log
    assert [r["type"] for r in records].count("start") == 1
    with pytest.raises(SystemExit, match="give one"):
        _train(text_file, tmp_path, "--resume", "--force")


def test_time_limit_stops_training_then_evaluates_and_summarises(text_file, tmp_path):
    s = _train(text_file, tmp_path, "--max-iters", "500", "--sample-tokens", "0", "--time-limit", "1e-9")
    assert s["time_limited"] and s["iterations"] < 500 and not s["interrupted"]
    assert s["final"] is not None and s["best_val_loss"] is not None  # the final evaluation still ran
    assert not _train(text_file, tmp_path / "b", "--max-iters", "2", "--sample-tokens", "0")["time_limited"]
    with pytest.raises(SystemExit, match="--time-limit must be > 0"):
        _train(text_file, tmp_path / "c", "--time-limit", "0")


def test_eval_only(trained, text_file, capsys):
    out, s = trained
    ev = train_shakespeare.main(["--data", text_file, "--out-dir", str(out), "--eval-only", "--final-eval-iters", "3"])
    assert ev["eval_only"] and ev["iter"] == 20
    # the run's own settings (split, seed, batch) are used, so this is the final evaluation again
    assert ev["val"]["loss"] == s["final_val_loss"] and ev["train"]["loss"] == s["final_train_loss"]
    assert ev["val"]["ppl"] == pytest.approx(math.exp(ev["val"]["loss"]))
    assert ev["val"]["bits_per_char"] == pytest.approx(ev["val"]["loss"] / math.log(2))
    assert "perplexity" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such file"):
        train_shakespeare.main(["--data", text_file, "--out-dir", str(out / "none"), "--eval-only"])


def _trajectory(text_file, out, batch, accum):
    s = _train(text_file, out, "--max-iters", "6", "--batch-size", str(batch), "--grad-accum", str(accum),
               "--sample-tokens", "0", "--eval-interval", "100")
    return np.array([s["train_losses"][str(i)] for i in range(6)]), s


def test_grad_accum_equals_a_larger_batch(text_file, tmp_path):
    """--batch-size 2 --grad-accum 4 == --batch-size 4 --grad-accum 2 == --batch-size 8, to float32 rounding:
    the same sequences (one draw of 8, cut in micro-batches), each micro-loss scaled by 1/N.
    Measured here: losses agree to 4e-8 relative over 6 steps (eval: 6e-9); the bound asserted is 1e-5."""
    ref, s8 = _trajectory(text_file, tmp_path / "b8", 8, 1)
    for batch, accum in ((4, 2), (2, 4)):
        losses, s = _trajectory(text_file, tmp_path / f"b{batch}", batch, accum)
        print(f"batch {batch} x {accum}: max relative loss difference {np.max(np.abs(losses / ref - 1)):.2e}, "
              f"final val {abs(s['final_val_loss'] / s8['final_val_loss'] - 1):.2e}")
        np.testing.assert_allclose(losses, ref, rtol=1e-5, atol=0)
        assert s["final_val_loss"] == pytest.approx(s8["final_val_loss"], rel=1e-5)  # the same eval windows too
    assert s["args"]["grad_accum"] == 4


def test_train_step_accumulated_gradient_matches_one_batch():
    """train_step over N micro-batches gives the gradient of the whole batch in float32: measured max |diff| /
    max |g| 4.7e-7 (2 micro-batches), 5.4e-7 (4); asserted < 1e-5."""
    cfg = tg.GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (8, 8))
    y = rng.integers(0, 20, (8, 8))
    grads = {}
    for n in (1, 2, 4):
        tg.manual_seed(0)
        model = tg.GPT(cfg)
        opt = tg.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights, grads stay
        b = 8 // n
        out = train_shakespeare.train_step(model, opt, [(x[k * b:(k + 1) * b], y[k * b:(k + 1) * b]) for k in range(n)],
                                           lr=0.0, grad_clip=0.0, to_device=lambda a: a)
        grads[n] = [p.grad.numpy() for p in model.parameters()]
        assert out["moe_aux_loss"] is None
    for n in (2, 4):
        worst = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(grads[n], grads[1]))
        print(f"{n} micro-batches: max |grad diff| / max |grad| = {worst:.2e}")
        assert worst < 1e-5, worst


def test_help_shows_every_flag_with_its_real_default():
    """Every option of every program shows its default in --help; none shows a wrong '(default: None)'."""
    parsers = {"train": train_shakespeare.build_parser(), "sample": sample.build_parser(),
               "finetune": cli_finetune.build_parser(), "plot": cli_metrics.build_parser(),
               "quantize": cli_quantize.build_parser()}
    for name, parser in parsers.items():
        text = parser.format_help()
        assert "(default: None)" not in text, name
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            # the option's entry in the rendered help: from its flag to the next option
            start = re.search(rf"^  {re.escape(action.option_strings[0])}\b", text, re.M).start()
            nxt = [text.find("\n  -", start + 1), len(text)]
            entry = " ".join(text[start:min(n for n in nxt if n > 0)].split())
            assert "default" in entry, (name, entry)
    train_help = " ".join(parsers["train"].format_help().split())
    assert "else the copy of Tiny Shakespeare shipped inside the package" in train_help
    assert "default: 1024)" in train_help and "--temperature TEMPERATURE sampling temperature" in train_help


def test_train_gpt3_banded_and_moe_flags(text_file, tmp_path):
    """--sparse-pattern/--attention-window (GPT-3) and the MoE flags reach the model and checkpoint; the MoE
    aux loss and dropped fraction are logged."""
    s = _train(text_file, tmp_path / "g3", "--max-iters", "4", "--sample-tokens", "0", "--sparse-pattern",
               "alternating", "--attention-window", "8", "--n-expert", "2", "--expert-top-k", "1",
               "--capacity-factor", "0.5", "--moe-aux-loss-coef", "0.05")
    cfg = tg.checkpoint.read_checkpoint_metadata(tmp_path / "g3" / "ckpt.safetensors")["config"]
    assert (cfg["sparse_pattern"], cfg["attention_window"], cfg["n_expert"], cfg["expert_top_k"]) == \
        ("alternating", 8, 2, 1)
    assert (cfg["capacity_factor"], cfg["moe_aux_loss_coef"]) == (0.5, 0.05)
    model = tg.GPT(tg.GPTConfig(**s["config"]))
    assert s["params"] == model.num_params() > tg.GPT(tg.GPTConfig(**{**s["config"], "n_expert": 0})).num_params()
    assert model.config.layer_window(1) == 8 and model.config.layer_window(0) is None
    train = [r for r in cli_metrics.read_metrics(tmp_path / "g3" / "metrics.jsonl") if r["type"] == "train"]
    for r in train:
        assert r["moe_aux_loss"] >= 1.0 - 1e-6  # E * sum f_i P_i >= 1 (1 when balanced)
        assert 0.5 - 1e-9 <= r["moe_dropped_frac"] < 1  # capacity 0.5 x tokens / 2 experts: half or more dropped
    with pytest.raises(SystemExit, match="needs attention_window"):
        _train(text_file, tmp_path / "bad", "--max-iters", "2", "--sparse-pattern", "banded")


def test_attention_window_without_a_sparse_pattern_is_an_error(text_file, tmp_path):
    with pytest.raises(SystemExit, match="--attention-window 8 has no effect with --sparse-pattern dense"):
        _train(text_file, tmp_path, "--max-iters", "2", "--attention-window", "8")
    assert not (tmp_path / "ckpt.safetensors").exists()


def test_resume_without_checkpoint_fails_clearly(text_file, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        _train(text_file, tmp_path / "nothing", "--max-iters", "2", "--resume")


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(text_file, tmp_path):
    """A real SIGINT to `python examples/train_shakespeare.py`: the step in progress finishes, the
    checkpoint and log are written, exit status 130, no traceback; --resume continues from there."""
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "examples", "train_shakespeare.py"), "--data", text_file,
           "--out-dir", str(out), *TINY, "--max-iters", "100000", "--eval-interval", "100000", "--sample-tokens", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC})
    log = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and sum(1 for line in log.read_text().splitlines() if '"train"' in line) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted at iteration" in stdout
    records = cli_metrics.read_metrics(log)
    done = [r["iter"] for r in records if r["type"] == "train"]
    assert done == list(range(len(done))) and len(done) >= 3
    assert records[-1] == {"type": "interrupted", "iter": len(done), "checkpoint": str(out / "ckpt.safetensors")}
    meta = tg.checkpoint.read_checkpoint_metadata(out / "ckpt.safetensors")
    assert meta["step"] == len(done) and meta["extra"]["interrupted"]
    summary = strict_json(out / "summary.json")
    assert summary["interrupted"] and summary["iterations"] == len(done) and summary["final_val_loss"] is None
    s = _train(text_file, out, "--resume", "--max-iters", str(len(done) + 2), "--sample-tokens", "0")
    assert s["start_iter"] == len(done) and s["iterations_this_run"] == 2


def test_plot_command_and_missing_matplotlib(trained, tmp_path, monkeypatch, capsys):
    out, _ = trained
    png = tmp_path / "curve.png"
    assert cli_metrics.main([str(out), "-o", str(png)]) == str(png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(SystemExit, match=r"needs matplotlib: pip install 'tinygpt\[plot\]'"):
        cli_metrics.main([str(out / "metrics.jsonl"), "-o", str(tmp_path / "other.png")])
    assert train_shakespeare.write_plot(str(out / "metrics.jsonl"), str(tmp_path / "x.png")) is None
    assert "note: no loss.png: the loss curve needs matplotlib" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no metrics log"):
        cli_metrics.main([str(tmp_path / "nowhere")])


def test_read_metrics_skips_a_cut_last_line(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"type": "train", "iter": 0, "loss": 2.5}\n{"type": "train", "iter": 1, "lo')
    assert cli_metrics.read_metrics(log) == [{"type": "train", "iter": 0, "loss": 2.5}]
    log.write_text('{"type": "train"\n{"type": "train", "iter": 1, "loss": 2.0}\n')
    with pytest.raises(ValueError, match="line 1"):
        cli_metrics.read_metrics(log)


# ---------------------------------------------------------------- sampling
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
    uncached = sample.main(["--out-dir", str(out), "--prompt", "ROMEO:", "--num-samples", "2",
                            "--max-new-tokens", "25", "--seed", "3", "--no-cache", "--quiet"])
    assert uncached == texts
    penalised = sample.main(["--out-dir", str(out), "--prompt", "ROMEO:", "--num-samples", "2",
                             "--max-new-tokens", "25", "--seed", "3", "--repetition-penalty", "1.3", "--quiet"])
    assert all(t.startswith("ROMEO:") and len(t) == 6 + 25 for t in penalised)


def test_sample_stream_prints_each_sample_once(trained, capsys):
    out, _ = trained
    args = ["--out-dir", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "25", "--seed", "3"]
    texts = sample.main([*args, "--num-samples", "2", "--quiet"])
    capsys.readouterr()
    streamed = sample.main([*args, "--num-samples", "2", "--stream"])
    assert streamed == texts  # the stream yields the tokens generate returns
    printed = capsys.readouterr().out
    assert printed.count(texts[0]) == 1 and printed.count(texts[1]) == 1


def test_sample_quantized(trained, text_file, tmp_path):
    """--quantize 8|4 quantizes on load; a quantized checkpoint (tinygpt quantize) loads as it is and
    gives the same tokens as quantizing on load."""
    out, _ = trained
    args = ["--out-dir", str(out), "--prompt", "ROMEO:", "--num-samples", "1", "--max-new-tokens", "20",
            "--temperature", "0", "--quiet"]
    for bits in (8, 4):
        on_load = sample.main([*args, "--quantize", str(bits)] + (["--group-size", "16"] if bits == 4 else []))
        path = tmp_path / f"q{bits}.safetensors"
        cli_quantize.main([str(out), "--bits", str(bits), "--out", str(path)]
                          + (["--group-size", "16"] if bits == 4 else []))
        meta = tg.checkpoint.read_checkpoint_metadata(path)
        assert meta["quantization"] == {"bits": bits, "group_size": 16 if bits == 4 else None, "embeddings": True}
        assert meta["tokenizer"]["type"] == "char" and meta["step"] == 20
        from_file = sample.main(["--ckpt", str(path), *args[2:]])
        assert from_file == on_load and on_load[0].startswith("ROMEO:")
        with pytest.raises(SystemExit, match="already quantized"):
            sample.main(["--ckpt", str(path), *args[2:], "--quantize", str(12 - bits)])
    os.replace(tmp_path / "q8.safetensors", tmp_path / "ckpt.safetensors")
    with pytest.raises(SystemExit, match="is quantized .* cannot be trained further"):
        train_shakespeare.main(["--out-dir", str(tmp_path), "--resume", "--data", text_file])


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
                                      "--block-size", "16", "--batch-size", "2", "--sample-tokens", "0",
                                      "--no-progress", "--final-eval-iters", "2", "--no-plot"])
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
    # bits per character: bits per token x tokens per character of that split
    final = s["final"]["val"]
    chars_per_token = len(text[n:]) / len(tok.encode(text[n:]))
    assert final["bits_per_char"] == pytest.approx(final["loss"] / math.log(2) / chars_per_token)


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


def test_sample_from_bpe_checkpoint(trained_bpe, capsys):
    out, _ = trained_bpe
    args = ["--out-dir", str(out), "--num-samples", "2", "--max-new-tokens", "15", "--seed", "3", "--quiet"]
    texts = sample.main([*args, "--prompt", "ROMEO:"])
    assert len(texts) == 2 and all(t.startswith("ROMEO:") and len(t) > 6 for t in texts)
    assert sample.main([*args, "--prompt", "ROMEO:"]) == texts  # seeded
    # byte-level: any prompt is encodable, even characters the training text never had
    assert all(t.startswith("Zebra 🦓") for t in sample.main([*args, "--prompt", "Zebra 🦓"]))
    capsys.readouterr()
    streamed = sample.main([*args[:-1], "--prompt", "ROMEO:", "--stream"])  # BPE pieces join into the same text
    assert streamed == texts and capsys.readouterr().out.count(texts[0]) == 1


def test_tokenizer_flag_errors(text_file, tmp_path):
    with pytest.raises(SystemExit, match="--vocab-size is for --tokenizer bpe"):
        _train(text_file, tmp_path / "c", "--max-iters", "1", "--vocab-size", "300")
    with pytest.raises(SystemExit, match="--vocab-size: .*vocab_size must be an int >= 256"):
        _train(text_file, tmp_path / "d", "--max-iters", "1", "--tokenizer", "bpe", "--vocab-size", "100")


# ---------------------------------------------------------------- --init-from a Hugging Face GPT-2 directory
@pytest.fixture(scope="module")
def hf_dir(trained_bpe, tmp_path_factory):
    """A GPT-2 directory as Hugging Face lays it out: config.json + model.safetensors + vocab.json + merges.txt."""
    from tinygpt.tokenizers import ByteLevelBPE

    out, _ = trained_bpe
    d = tmp_path_factory.mktemp("gpt2-tiny")
    tg.manual_seed(5)
    model = tg.GPT(tg.GPTConfig.gpt2(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
    model.save_pretrained(d)
    ByteLevelBPE.load(out).save(d)
    return d, model


def test_init_from_a_hugging_face_directory(hf_dir, text_file, tmp_path):
    from tinygpt.tokenizers import ByteLevelBPE

    d, base = hf_dir
    run = ["--data", text_file, "--batch-size", "4", "--eval-iters", "2", "--final-eval-iters", "2", "--seed", "7",
           "--no-progress", "--no-plot", "--warmup-iters", "2"]
    s = train_shakespeare.main([*run, "--out-dir", str(tmp_path / "ft"), "--init-from", str(d), "--max-iters", "4",
                                "--sample-tokens", "5", "--block-size", "16", "--dropout", "0.1"])
    cfg = s["config"]
    assert (cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"], cfg["block_size"], cfg["dropout"]) == (2, 32, 300, 16, 0.1)
    assert s["tokenizer"] == "bpe" and s["args"]["init_from"] == str(d)
    # step 0 evaluates the pretrained weights (the context cropped to 16: the first 16 position rows)
    ev = train_shakespeare.main([*run, "--init-from", str(d), "--eval-only", "--block-size", "16",
                                 "--out-dir", str(tmp_path / "e")])
    assert ev["val"]["loss"] == pytest.approx(s["evals"][0]["val"], rel=1e-6)
    meta = tg.checkpoint.read_checkpoint_metadata(tmp_path / "ft" / "ckpt.safetensors")
    assert meta["tokenizer"]["type"] == "bpe" and meta["config"]["block_size"] == 16
    texts = sample.main(["--out-dir", str(tmp_path / "ft"), "--prompt", "ROMEO:", "--num-samples", "1",
                         "--max-new-tokens", "5", "--quiet"])
    assert texts[0].startswith("ROMEO:")
    hf_texts = sample.main(["--init-from", str(d), "--prompt", "ROMEO:", "--num-samples", "1", "--max-new-tokens", "5",
                            "--quiet", "--temperature", "0"])
    tok = ByteLevelBPE.load(d)
    assert hf_texts[0] == tok.decode(base.generate(tok.encode("ROMEO:")[None], 5, temperature=0)[0])
    with pytest.raises(SystemExit, match="the model and tokenizer come from .* drop --n-layer"):
        train_shakespeare.main([*run, "--out-dir", str(tmp_path / "bad"), "--init-from", str(d), "--n-layer", "3"])
    with pytest.raises(SystemExit, match="longer than .* context \\(32\\)"):
        train_shakespeare.main([*run, "--out-dir", str(tmp_path / "bad"), "--init-from", str(d), "--block-size", "64"])
