"""Fine-tune a Tiny Shakespeare character GPT to tell who is speaking (GPT-1 supervised fine-tuning).

Radford et al. 2018, section 3.2: a linear head on the last token's hidden state, trained
with the task loss plus lambda times the language-modelling loss on the same text. The
task here: Tiny Shakespeare cut into speeches ("NAME:" then its lines, up to a blank line),
each labelled with its speaker, the N most frequent speakers kept. The speaker line itself
is NOT part of the input (it is the label). Speeches are split into train/val by speech
with a seed, cropped to the model's block size (--keep start: the first block_size
characters; --keep end: the last ones) and right-padded in a batch.

    python examples/train_shakespeare.py --max-iters 2000 --out-dir out-shakespeare-char
    python examples/finetune_classifier.py --init-from out-shakespeare-char            # + scratch baseline
    python examples/finetune_classifier.py --init-from out-shakespeare-char --lora 8   # + a LoRA run

The report compares validation accuracy with the majority-class baseline and with the same
model trained from scratch (same steps, same batches, same hyperparameters).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

import tinygpt as tg
from tinygpt import backend, lora
from tinygpt.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_metadata
from tinygpt.data import DEFAULT_TEXT, CharTokenizer, load_text
from tinygpt.models import GPTClassifier
from tinygpt.nn.utils import clip_grad_norm_
from tinygpt.optim import cosine_with_warmup

CKPT_NAME = "ckpt.safetensors"  # what train_shakespeare.py writes in its --out-dir
SPEAKER = re.compile(r"^[A-Za-z][A-Za-z' .,&-]*:$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Fine-tune a train_shakespeare.py checkpoint as a speaker classifier (GPT-1 style).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("data and model")
    io.add_argument("--init-from", required=True,
                    help=f"a train_shakespeare.py checkpoint: its --out-dir or the {CKPT_NAME} file")
    io.add_argument("--data", default=None,
                    help=f"the Tiny Shakespeare text (default: {DEFAULT_TEXT} if it exists, else the copy shipped "
                         "inside the package)")
    io.add_argument("--data-url", default=None, help="where to download --data from when that file is missing")
    io.add_argument("--n-classes", type=int, default=4, help="keep the speeches of the N most frequent speakers")
    io.add_argument("--val-fraction", type=float, default=0.2, help="share of the speeches held out")
    io.add_argument("--keep", choices=("start", "end"), default="start",
                    help="which end of a speech longer than the block size is kept")
    io.add_argument("--out-dir", default=None, help="write summary.json (and LoRA adapters) here")
    io.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    io.add_argument("--seed", type=int, default=1337, help="split, initialisation, batches and dropout")

    o = p.add_argument_group("fine-tuning")
    o.add_argument("--max-iters", type=int, default=300)
    o.add_argument("--batch-size", type=int, default=16)
    o.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (linear warmup, cosine to lr/10)")
    o.add_argument("--warmup-iters", type=int, default=30)
    o.add_argument("--weight-decay", type=float, default=0.01)
    o.add_argument("--beta1", type=float, default=0.9)
    o.add_argument("--beta2", type=float, default=0.999)
    o.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm; 0 disables clipping")
    o.add_argument("--lm-weight", type=float, default=0.5, help="lambda: L = L_task + lambda * L_LM")
    o.add_argument("--clf-dropout", type=float, default=0.1, help="dropout before the classification head")
    o.add_argument("--compare-scratch", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the same model from random weights (same steps, data, settings)")
    o.add_argument("--lora", type=int, default=0, metavar="RANK",
                   help="also fine-tune with LoRA adapters of this rank (base frozen, head trained); 0: no")
    o.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale alpha/rank (default alpha = 2 * rank)")
    o.add_argument("--lora-targets", default="c_attn", help="comma-separated Linear name suffixes for LoRA")
    o.add_argument("--lora-lr", type=float, default=None, help="peak lr of the LoRA run (default: 4 x --lr)")

    e = p.add_argument_group("evaluation and logging")
    e.add_argument("--eval-interval", type=int, default=100, help="iterations between validation evaluations")
    e.add_argument("--eval-batch-size", type=int, default=64)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"finetune_classifier: error: {msg}")


# ---------------------------------------------------------------------------- data
def parse_speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) pairs: a 'NAME:' line after a blank line (or at the start), then the
    lines up to the next blank line. The speaker line is not part of the speech."""
    speeches, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        if SPEAKER.match(line) and (i == 0 or not lines[i - 1].strip()):
            j = i + 1
            while j < len(lines) and lines[j].strip():
                j += 1
            body = "\n".join(lines[i + 1:j])
            if body:
                speeches.append((line[:-1], body))
            i = j
        else:
            i += 1
    return speeches


def make_splits(speeches, n_classes: int, val_fraction: float, seed: int):
    """(classes, train, val): the n_classes most frequent speakers (ties by name); train/val
    are lists of (speech, label) split by speech with a seeded permutation."""
    counts = Counter(s for s, _ in speeches)
    if len(counts) < n_classes:
        raise _fail(f"--n-classes {n_classes}: the text has only {len(counts)} speakers")
    classes = [s for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_classes]]
    label = {s: k for k, s in enumerate(classes)}
    kept = [(body, label[s]) for s, body in speeches if s in label]
    order = np.random.default_rng(seed).permutation(len(kept))
    n_val = int(round(val_fraction * len(kept)))
    if n_val < 1 or n_val >= len(kept):
        raise _fail(f"--val-fraction {val_fraction} leaves {n_val} of {len(kept)} speeches for validation")
    val = [kept[k] for k in order[:n_val]]
    train = [kept[k] for k in order[n_val:]]
    return classes, train, val


def encode(tokenizer, pairs, block_size: int, keep: str):
    """(list of int64 arrays cropped to block_size, labels array)."""
    seqs = []
    for n, (body, _) in enumerate(pairs):
        try:
            ids = tokenizer.encode(body)
        except ValueError as exc:
            raise _fail(f"speech {n} does not fit the checkpoint's vocabulary: {exc}") from None
        seqs.append(ids[:block_size] if keep == "start" else ids[-block_size:])
    return seqs, np.array([y for _, y in pairs], dtype=np.int64)


def pad_batch(seqs, pad_id: int = 0):
    """Right-padded ids (B, longest) and lengths (B,)."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    ids = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
    return ids, lengths


# ---------------------------------------------------------------------------- training
def evaluate(clf, seqs, labels, batch_size: int, to_device) -> dict:
    """Accuracy and mean task loss over every sequence (eval mode, no_grad)."""
    clf.eval()
    correct, loss_sum = 0, 0.0
    try:
        with tg.no_grad():
            for k in range(0, len(seqs), batch_size):
                ids, lengths = pad_batch(seqs[k:k + batch_size])
                y = labels[k:k + batch_size]
                logits, _, parts = clf(to_device(ids), y, lengths=lengths)
                correct += int((logits.numpy().argmax(-1) == y).sum())
                loss_sum += parts["task"].item() * len(y)
    finally:
        clf.train()
    return {"accuracy": correct / len(seqs), "loss": loss_sum / len(seqs)}


def train_run(name, clf, data, args, to_device, lr, lora_rank=0) -> dict:
    """Fine-tune `clf` for --max-iters steps on seeded batches (the same for every run)."""
    (tr_x, tr_y), (va_x, va_y) = data
    if lora_rank:
        targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
        alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * lora_rank
        try:
            lora.apply(clf, lora_rank, alpha, targets=targets, trainable=("head",))
        except ValueError as exc:
            raise _fail(f"--lora: {exc}") from None
    opt = clf.configure_optimizers(args.weight_decay, lr, betas=(args.beta1, args.beta2))
    params = lora.trainable_parameters(clf)
    n_trainable = sum(p.size for p in params)
    rng = np.random.default_rng(args.seed + 1)  # batch order: the same in every run
    warmup = min(args.warmup_iters, args.max_iters)
    losses, evals = [], []
    bar = tqdm(total=args.max_iters, desc=name, unit="it", dynamic_ncols=True, disable=args.no_progress)
    t0 = time.perf_counter()
    clf.train()
    for it in range(args.max_iters):
        step_lr = cosine_with_warmup(it, max_lr=lr, min_lr=lr / 10, warmup_steps=warmup, decay_steps=args.max_iters)
        for group in opt.param_groups:
            group["lr"] = step_lr
        pick = rng.integers(0, len(tr_x), size=args.batch_size)
        ids, lengths = pad_batch([tr_x[k] for k in pick])
        _, loss, parts = clf(to_device(ids), tr_y[pick], lengths=lengths)
        opt.zero_grad()
        loss.backward()
        if args.grad_clip > 0:
            clip_grad_norm_(params, args.grad_clip)
        opt.step()
        losses.append((loss.item(), parts["task"].item()))
        if not np.isfinite(losses[-1][0]):
            bar.close()
            raise _fail(f"{name}: the loss became {losses[-1][0]} at iteration {it}; lower --lr")
        bar.update(1)
        if (it + 1) % args.eval_interval == 0 and it + 1 < args.max_iters:
            ev = evaluate(clf, va_x, va_y, args.eval_batch_size, to_device)
            evals.append({"iter": it + 1, "val_accuracy": ev["accuracy"], "val_loss": ev["loss"]})
            tqdm.write(f"{name} step {it + 1}: val accuracy {ev['accuracy']:.3f}, val task loss {ev['loss']:.4f}")
        if (it + 1) % 10 == 0:
            recent = np.mean([t for _, t in losses[-10:]])
            bar.set_postfix_str(f"loss {loss.item():.3f}, task {recent:.3f}", refresh=False)
    bar.close()
    train_time = time.perf_counter() - t0
    val = evaluate(clf, va_x, va_y, args.eval_batch_size, to_device)
    train = evaluate(clf, tr_x, tr_y, args.eval_batch_size, to_device)
    evals.append({"iter": args.max_iters, "val_accuracy": val["accuracy"], "val_loss": val["loss"]})
    first = np.mean([t for _, t in losses[:10]]) if losses else float("nan")
    last = np.mean([t for _, t in losses[-10:]]) if losses else float("nan")
    return {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "train_accuracy": train["accuracy"],
            "train_loss": train["loss"], "first_task_loss": float(first), "last_task_loss": float(last),
            "trainable_params": int(n_trainable), "lr": lr, "time_s": train_time, "evals": evals}


def _checkpoint_path(init_from: str) -> str:
    return os.path.join(init_from, CKPT_NAME) if os.path.isdir(init_from) else init_from


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.max_iters < 0 or args.batch_size < 1 or args.eval_interval < 1 or args.eval_batch_size < 1:
        raise _fail("--max-iters must be >= 0 and --batch-size, --eval-interval, --eval-batch-size >= 1")
    if args.n_classes < 2:
        raise _fail(f"--n-classes must be >= 2, got {args.n_classes}")
    if args.lora < 0:
        raise _fail(f"--lora RANK must be >= 0, got {args.lora}")
    if args.lm_weight < 0:
        raise _fail(f"--lm-weight must be >= 0, got {args.lm_weight}")
    if args.device == "cuda":
        try:
            backend.cupy()  # raises, saying what is missing, when there is no usable GPU
        except RuntimeError as exc:
            raise _fail(f"--device cuda: the GPU path is not available here ({exc}); use --device cpu") from None
    t_start = time.perf_counter()

    # ---------------------------------------------------------------- checkpoint, data
    ckpt = _checkpoint_path(args.init_from)
    try:
        meta = read_checkpoint_metadata(ckpt)
    except CheckpointError as exc:
        raise _fail(f"--init-from: {exc}") from None
    if meta["config"] is None or meta["tokenizer"] is None:
        raise _fail(f"{ckpt} has no model config or tokenizer in its metadata (not a train_shakespeare.py checkpoint?)")
    config = tg.GPTConfig.from_dict(meta["config"])
    tokenizer = CharTokenizer.from_dict(meta["tokenizer"])

    try:
        text = load_text(args.data, url=args.data_url)
    except RuntimeError as exc:  # the download failed; the message names the URL and where to save it
        raise _fail(f"no text: {exc} (or pass --data PATH)") from None
    except FileNotFoundError:
        raise _fail(f"no text at {os.path.abspath(args.data)}: pass --data PATH") from None
    speeches = parse_speeches(text)
    if not speeches:
        raise _fail(f"{args.data or DEFAULT_TEXT} has no speeches ('NAME:' lines after a blank line, then text)")
    classes, train_pairs, val_pairs = make_splits(speeches, args.n_classes, args.val_fraction, args.seed)
    tr_x, tr_y = encode(tokenizer, train_pairs, config.block_size, args.keep)
    va_x, va_y = encode(tokenizer, val_pairs, config.block_size, args.keep)
    data = ((tr_x, tr_y), (va_x, va_y))
    majority = int(np.bincount(tr_y, minlength=args.n_classes).argmax())  # the train split's most common class
    majority_acc = float((va_y == majority).mean())
    cropped = sum(len(b) > config.block_size for b, _ in train_pairs + val_pairs)

    def to_device(a):
        return a if args.device == "cpu" else tg.Tensor(a, device=args.device)

    def pretrained():
        gpt = tg.GPT(config)
        try:
            load_checkpoint(ckpt, gpt, restore_rng=False)
        except CheckpointError as exc:
            raise _fail(f"--init-from: {exc}") from None
        return gpt.to(args.device) if args.device != "cpu" else gpt

    def scratch():
        tg.manual_seed(args.seed + 2)
        gpt = tg.GPT(config)
        return gpt.to(args.device) if args.device != "cpu" else gpt

    tqdm.write(f"tinygpt {tg.__version__} | {args.device} | kernels: "
               f"{'native' if tg.kernels.native_enabled() else 'reference (NumPy)'}")
    tqdm.write(f"checkpoint {ckpt}: step {meta['step']}, {config.n_layer} layers, {config.n_embd} channels, "
               f"block {config.block_size}, vocab {config.vocab_size}")
    tqdm.write(f"data: {len(speeches)} speeches; {args.n_classes} speakers {classes} -> {len(tr_x)} train / "
               f"{len(va_x)} val speeches; {cropped} longer than {config.block_size} characters (kept the {args.keep})")
    tqdm.write(f"majority class ({classes[majority]}): val accuracy {majority_acc:.3f}")

    # ---------------------------------------------------------------- runs
    runs = {}
    plan = [("fine-tuned", pretrained, args.lr, 0)]
    if args.lora:
        plan.append((f"lora-r{args.lora}", pretrained, args.lora_lr or 4 * args.lr, args.lora))
    if args.compare_scratch:
        plan.append(("scratch", scratch, args.lr, 0))
    for name, make_gpt, lr, rank in plan:
        gpt = make_gpt()
        tg.manual_seed(args.seed)  # the same head init and dropout stream in every run
        clf = GPTClassifier(gpt, args.n_classes, lm_weight=args.lm_weight, dropout=args.clf_dropout)
        runs[name] = train_run(name, clf, data, args, to_device, lr, rank)
        tqdm.write(f"{name}: val accuracy {runs[name]['val_accuracy']:.3f} ({runs[name]['time_s']:.1f} s)")
        if rank and args.out_dir:
            path = os.path.join(args.out_dir, "lora.safetensors")
            lora.save_lora(clf, path)
            runs[name]["adapters"] = path

    summary = {
        "classes": classes, "n_train": len(tr_x), "n_val": len(va_x), "cropped": cropped,
        "majority_class": classes[majority], "majority_val_accuracy": majority_acc,
        "runs": runs, "finetuned_val_accuracy": runs["fine-tuned"]["val_accuracy"],
        "scratch_val_accuracy": runs["scratch"]["val_accuracy"] if "scratch" in runs else None,
        "init_from": ckpt, "init_step": meta["step"], "config": config.to_dict(),
        "args": dict(vars(args)), "device": args.device, "wall_time_s": time.perf_counter() - t_start,
    }
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)

    rows = [f"  {'run':<16}{'val acc':>9}{'val loss':>10}{'train acc':>11}{'trainable':>11}{'time':>8}",
            f"  {'majority class':<16}{majority_acc:>9.3f}{'-':>10}{'-':>11}{'-':>11}{'-':>8}"]
    for name, r in runs.items():
        rows.append(f"  {name:<16}{r['val_accuracy']:>9.3f}{r['val_loss']:>10.4f}{r['train_accuracy']:>11.3f}"
                    f"{r['trainable_params']:>11,}{r['time_s']:>7.1f}s")
    tqdm.write("\n".join(["", "=" * 68,
                          f"summary: {args.n_classes}-way speaker classification, {len(va_x)} val speeches, "
                          f"{args.max_iters} steps x {args.batch_size}", *rows, "=" * 68]))
    return summary


if __name__ == "__main__":
    main()
