"""Fine-tune a Tiny Shakespeare GPT to tell who is speaking (GPT-1 supervised fine-tuning), and classify new text.

Radford et al. 2018, section 3.2: a linear head on the last token's hidden state, trained
with the task loss plus lambda times the language-modelling loss on the same text. The
task here: Tiny Shakespeare cut into speeches ("NAME:" then its lines, up to a blank line),
each labelled with its speaker, the N most frequent speakers kept. The speaker line itself
is NOT part of the input (it is the label). Speeches are split into train/val by speech
with a seed, cropped to the model's block size (--keep start: the first block_size
characters; --keep end: the last ones) and right-padded in a batch.

    tinygpt train --max-iters 2000 --out-dir out-shakespeare-char
    tinygpt finetune --init-from out-shakespeare-char --out-dir out-ft       # + scratch baseline
    tinygpt finetune --init-from out-shakespeare-char --lora 8               # + a LoRA run
    tinygpt finetune --classifier out-ft --classify "Is this the way to Verona?"

(`tinygpt finetune` = `python examples/finetune_classifier.py`.) --init-from takes a training
checkpoint (its --out-dir or the file) or a Hugging Face GPT-2 directory. The report compares
validation accuracy with the majority-class baseline and with the same model trained from
scratch (same steps, same batches, same hyperparameters). With --out-dir the fine-tuned
classifier is saved whole (OUT_DIR/classifier.safetensors: the GPT, the head, the class names
and the tokenizer; a LoRA run's adapters and head go to lora.safetensors), and --classifier
loads it to label new text (--classify TEXT, repeatable).
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

from .. import lora, tokenizers
from .. import random as tg_random
from ..checkpoint import CheckpointError, load_checkpoint, load_model, model_config, read_checkpoint_metadata, \
    save_checkpoint
from ..data import DEFAULT_TEXT
from ..models import GPTClassifier
from ..nn.utils import clip_grad_norm_
from ..optim import cosine_with_warmup
from . import common
from .common import HelpFormatter

PROG = "tinygpt finetune"
CKPT_NAME = "ckpt.safetensors"  # what training writes in its --out-dir
CLASSIFIER_NAME = "classifier.safetensors"
SPEAKER = re.compile(r"^[A-Za-z][A-Za-z' .,&-]*:$")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Fine-tune a trained GPT as a speaker classifier (GPT-1 style), or classify text with a saved one.")
    io = p.add_argument_group("data and model")
    io.add_argument("--init-from", default=None,
                    help=f"the model to fine-tune: a training checkpoint (its --out-dir or the {CKPT_NAME} file) or a "
                         f"Hugging Face GPT-2 directory (default: none; required unless --classifier is given)")
    io.add_argument("--data", default=None,
                    help=f"the Tiny Shakespeare text (default: {DEFAULT_TEXT} if it exists, else the copy shipped "
                         "inside the package)")
    io.add_argument("--data-url", default=None,
                    help="download --data from this URL when that file is missing (default: none, no download)")
    io.add_argument("--n-classes", type=int, default=4, help="keep the speeches of the N most frequent speakers")
    io.add_argument("--val-fraction", type=float, default=0.2, help="share of the speeches held out")
    io.add_argument("--keep", choices=("start", "end"), default="start",
                    help="which end of a speech longer than the block size is kept")
    io.add_argument("--out-dir", default=None,
                    help=f"write summary.json, the fine-tuned {CLASSIFIER_NAME} and the LoRA adapters here "
                         f"(default: none, nothing written)")
    io.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run")
    io.add_argument("--seed", type=int, default=1337, help="split, initialisation, batches and dropout")

    o = p.add_argument_group("fine-tuning")
    o.add_argument("--max-iters", type=int, default=300, help="fine-tuning steps of each run")
    o.add_argument("--batch-size", type=int, default=16, help="speeches per step")
    o.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (linear warmup, cosine to lr/10)")
    o.add_argument("--warmup-iters", type=int, default=30, help="steps of linear warmup")
    o.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay on 2-D weights")
    o.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    o.add_argument("--beta2", type=float, default=0.999, help="AdamW beta2")
    o.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm; 0 disables clipping")
    o.add_argument("--lm-weight", type=float, default=0.5, help="lambda: L = L_task + lambda * L_LM")
    o.add_argument("--clf-dropout", type=float, default=0.1, help="dropout before the classification head")
    o.add_argument("--compare-scratch", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the same model from random weights (same steps, data, settings)")
    o.add_argument("--lora", type=int, default=0, metavar="RANK",
                   help="also fine-tune with LoRA adapters of this rank (base frozen, head trained); 0: no")
    o.add_argument("--lora-alpha", type=float, default=None,
                   help="LoRA scale alpha/rank (default: alpha = rank, lora.apply's default: scale 1)")
    o.add_argument("--lora-targets", default="c_attn", help="comma-separated Linear name suffixes for LoRA")
    o.add_argument("--lora-lr", type=float, default=None, help="peak lr of the LoRA run (default: 4 x --lr)")

    e = p.add_argument_group("evaluation and logging")
    e.add_argument("--eval-interval", type=int, default=100, help="iterations between validation evaluations")
    e.add_argument("--eval-batch-size", type=int, default=64, help="speeches per evaluation batch")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = p.add_argument_group("classifying new text")
    c.add_argument("--classifier", default=None,
                   help=f"classify with a saved classifier ({CLASSIFIER_NAME} or the --out-dir holding it) "
                        f"instead of fine-tuning (default: none)")
    c.add_argument("--classify", action="append", default=None, metavar="TEXT",
                   help="a speech to label (repeatable); without --classifier the model just fine-tuned labels it "
                        "(default: none)")
    c.add_argument("--classify-file", default=None,
                   help="label each blank-line-separated block of this UTF-8 file (default: none)")
    return p


def _fail(msg: str) -> SystemExit:
    return common.fail(PROG, msg)


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
            ids = common.encode(tokenizer, body)
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
        try:
            lora.apply(clf, lora_rank, args.lora_alpha, targets=targets, trainable=("head",))  # None: the API's default
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
    first = float(np.mean([t for _, t in losses[:10]])) if losses else None  # None: no steps (JSON has no NaN)
    last = float(np.mean([t for _, t in losses[-10:]])) if losses else None
    return {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "train_accuracy": train["accuracy"],
            "train_loss": train["loss"], "first_task_loss": first, "last_task_loss": last,
            "trainable_params": int(n_trainable), "lr": lr, "time_s": train_time, "evals": evals}


def _checkpoint_path(path: str, name: str = CKPT_NAME) -> str:
    return os.path.join(path, name) if os.path.isdir(path) else path


def load_base(args):
    """(config, tokenizer, make_pretrained, init description) of --init-from: a training checkpoint
    (checked against its tensors before any model exists) or a Hugging Face GPT-2 directory."""
    if common.is_hf_dir(args.init_from):
        model, tokenizer = common.load_hf(args.init_from, PROG)
        config = model.config
        state = {k: v.copy() for k, v in model.state_dict().items()}

        def pretrained():
            gpt = tg.GPT(config)
            gpt.load_state_dict(state)
            return gpt

        return config, tokenizer, pretrained, f"{args.init_from} (Hugging Face GPT-2)"
    ckpt = _checkpoint_path(args.init_from)
    try:
        meta = read_checkpoint_metadata(ckpt)
        if meta["quantization"] is not None:
            raise _fail(f"--init-from {ckpt} is quantized (inference only): fine-tune the float checkpoint")
        if meta["tokenizer"] is None:
            raise _fail(f"{ckpt} has no tokenizer in its metadata (not a training checkpoint?)")
        config = model_config(ckpt)
        tokenizer = tokenizers.from_dict(meta["tokenizer"])
    except CheckpointError as exc:
        raise _fail(f"--init-from: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise _fail(f"--init-from {ckpt}: the tokenizer in its metadata cannot be read: {exc}") from None

    def pretrained():
        try:
            return load_model(ckpt)[0].train()
        except CheckpointError as exc:
            raise _fail(f"--init-from: {exc}") from None

    return config, tokenizer, pretrained, f"{ckpt} (step {meta['step']})"


def save_classifier(path, clf, config, tokenizer, info: dict) -> None:
    """The whole fine-tuned classifier (GPT + head) with what classifying new text needs."""
    save_checkpoint(path, clf, config=config, tokenizer=tokenizer, extra={"classifier": info})


def load_classifier(path):
    """(GPTClassifier in eval mode, tokenizer, info) from save_classifier's file (or its directory)."""
    path = _checkpoint_path(path, CLASSIFIER_NAME)
    try:
        meta = read_checkpoint_metadata(path)
        info = (meta["extra"] or {}).get("classifier")
        if not isinstance(info, dict) or not isinstance(info.get("classes"), list):
            raise _fail(f"{path} is not a saved classifier (no 'classifier' settings in its metadata)")
        config = model_config(path, prefix="gpt.")
        tokenizer = tokenizers.from_dict(meta["tokenizer"] or {})
        state = tg_random.get_rng_state()
        try:  # the head's random init is overwritten by the file: leave the global RNG as it was
            clf = GPTClassifier(tg.GPT(config), len(info["classes"]), lm_weight=float(info.get("lm_weight", 0.0)),
                                dropout=float(info.get("dropout", 0.0)))
        finally:
            tg_random.set_rng_state(state)
        load_checkpoint(path, clf, restore_rng=False)
    except CheckpointError as exc:
        raise _fail(f"--classifier: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise _fail(f"--classifier {path}: {exc}") from None
    return clf.eval(), tokenizer, info


def classify(clf, tokenizer, info: dict, texts, to_device) -> list:
    """[{'text', 'label', 'probs': {class: p}}] for each text (cropped as in training: info['keep'])."""
    block = clf.gpt.config.block_size
    seqs, _ = encode(tokenizer, [(t, 0) for t in texts], block, info.get("keep", "start"))
    if any(len(s) == 0 for s in seqs):
        raise _fail("--classify: a text is empty")
    ids, lengths = pad_batch(seqs)
    clf.eval()
    with tg.no_grad():
        logits, _, _ = clf(to_device(ids), lengths=lengths)
    z = logits.numpy().astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    classes = info["classes"]
    return [{"text": t, "label": classes[int(row.argmax())], "probs": dict(zip(classes, map(float, row)))}
            for t, row in zip(texts, p)]


def _texts_to_classify(args) -> list:
    texts = list(args.classify or [])
    if args.classify_file:
        try:
            with open(args.classify_file, encoding="utf-8") as f:
                blocks = [b.strip("\n") for b in re.split(r"\n\s*\n", f.read())]
        except OSError as exc:
            raise _fail(f"--classify-file: {exc}") from None
        texts += [b for b in blocks if b.strip()]
    return texts


def _report(predictions) -> None:
    for pred in predictions:
        best = sorted(pred["probs"].items(), key=lambda kv: -kv[1])[:3]
        shown = pred["text"] if len(pred["text"]) <= 60 else pred["text"][:57] + "..."
        tqdm.write(f"{pred['label']:<16} {', '.join(f'{c} {p:.2f}' for c, p in best)}  | {shown!r}")


def main(argv=None, prog: str | None = None) -> dict:
    args = build_parser(prog).parse_args(argv)
    if args.max_iters < 0 or args.batch_size < 1 or args.eval_interval < 1 or args.eval_batch_size < 1:
        raise _fail("--max-iters must be >= 0 and --batch-size, --eval-interval, --eval-batch-size >= 1")
    if args.n_classes < 2:
        raise _fail(f"--n-classes must be >= 2, got {args.n_classes}")
    if args.lora < 0:
        raise _fail(f"--lora RANK must be >= 0, got {args.lora}")
    if args.lm_weight < 0:
        raise _fail(f"--lm-weight must be >= 0, got {args.lm_weight}")
    common.check_device(args.device, PROG)
    texts = _texts_to_classify(args)

    def to_device(a):
        return a if args.device == "cpu" else tg.Tensor(a, device=args.device)

    if args.classifier:  # label new text with a saved classifier; no training
        if args.init_from:
            raise _fail("--classifier labels text with a saved classifier, --init-from fine-tunes one: give one")
        if not texts:
            raise _fail("--classifier needs text to label: --classify TEXT or --classify-file FILE")
        clf, tokenizer, info = load_classifier(args.classifier)
        if args.device != "cpu":
            clf.to(args.device)
        predictions = classify(clf, tokenizer, info, texts, to_device)
        _report(predictions)
        return {"classifier": args.classifier, "classes": info["classes"], "predictions": predictions}
    if args.init_from is None:
        raise _fail("--init-from is required (the model to fine-tune), or --classifier to label text")
    t_start = time.perf_counter()

    # ---------------------------------------------------------------- checkpoint, data
    config, tokenizer, load_pretrained, source = load_base(args)
    text = common.read_text(args.data, args.data_url, PROG)
    speeches = parse_speeches(text)
    if not speeches:
        raise _fail(f"{args.data or DEFAULT_TEXT} has no speeches ('NAME:' lines after a blank line, then text)")
    classes, train_pairs, val_pairs = make_splits(speeches, args.n_classes, args.val_fraction, args.seed)
    tr_x, tr_y = encode(tokenizer, train_pairs, config.block_size, args.keep)
    va_x, va_y = encode(tokenizer, val_pairs, config.block_size, args.keep)
    data = ((tr_x, tr_y), (va_x, va_y))
    majority = int(np.bincount(tr_y, minlength=args.n_classes).argmax())  # the train split's most common class
    majority_acc = float((va_y == majority).mean())
    cropped = sum(len(common.encode(tokenizer, body)) > config.block_size for body, _ in train_pairs + val_pairs)

    def pretrained():
        gpt = load_pretrained()
        return gpt.to(args.device) if args.device != "cpu" else gpt

    def scratch():
        tg.manual_seed(args.seed + 2)
        gpt = tg.GPT(config)
        return gpt.to(args.device) if args.device != "cpu" else gpt

    tqdm.write(f"tinygpt {tg.__version__} | {args.device} | kernels: {common.kernels_label(args.device)}")
    tqdm.write(f"init from {source}: {config.n_layer} layers, {config.n_embd} channels, block {config.block_size}, "
               f"vocab {config.vocab_size}")
    tqdm.write(f"data: {len(speeches)} speeches; {args.n_classes} speakers {classes} -> {len(tr_x)} train / "
               f"{len(va_x)} val speeches; {cropped} cropped to {config.block_size} tokens (kept the {args.keep})")
    tqdm.write(f"majority class ({classes[majority]}): val accuracy {majority_acc:.3f}")

    # ---------------------------------------------------------------- runs
    runs, kept = {}, None
    plan = [("fine-tuned", pretrained, args.lr, 0)]
    if args.lora:
        plan.append((f"lora-r{args.lora}", pretrained, args.lora_lr or 4 * args.lr, args.lora))
    if args.compare_scratch:
        plan.append(("scratch", scratch, args.lr, 0))
    info = {"classes": classes, "n_classes": args.n_classes, "lm_weight": args.lm_weight,
            "dropout": args.clf_dropout, "keep": args.keep, "init_from": source}
    for name, make_gpt, lr, rank in plan:
        gpt = make_gpt()
        tg.manual_seed(args.seed)  # the same head init and dropout stream in every run
        clf = GPTClassifier(gpt, args.n_classes, lm_weight=args.lm_weight, dropout=args.clf_dropout)
        runs[name] = train_run(name, clf, data, args, to_device, lr, rank)
        tqdm.write(f"{name}: val accuracy {runs[name]['val_accuracy']:.3f} ({runs[name]['time_s']:.1f} s)")
        if name == "fine-tuned":
            kept = clf
            if args.out_dir:
                path = os.path.join(args.out_dir, CLASSIFIER_NAME)
                save_classifier(path, clf, config, tokenizer, {**info, "val_accuracy": runs[name]["val_accuracy"]})
                runs[name]["classifier"] = path
        if rank and args.out_dir:
            path = os.path.join(args.out_dir, "lora.safetensors")
            lora.save_lora(clf, path)
            runs[name]["adapters"] = path

    summary = {
        "classes": classes, "n_train": len(tr_x), "n_val": len(va_x), "cropped": cropped,
        "majority_class": classes[majority], "majority_val_accuracy": majority_acc,
        "runs": runs, "finetuned_val_accuracy": runs["fine-tuned"]["val_accuracy"],
        "scratch_val_accuracy": runs["scratch"]["val_accuracy"] if "scratch" in runs else None,
        "init_from": source, "config": config.to_dict(),
        "args": dict(vars(args)), "device": args.device, "wall_time_s": time.perf_counter() - t_start,
    }
    if texts:
        summary["predictions"] = classify(kept, tokenizer, info, texts, to_device)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, allow_nan=False)

    rows = [f"  {'run':<16}{'val acc':>9}{'val loss':>10}{'train acc':>11}{'trainable':>11}{'time':>8}",
            f"  {'majority class':<16}{majority_acc:>9.3f}{'-':>10}{'-':>11}{'-':>11}{'-':>8}"]
    for name, r in runs.items():
        rows.append(f"  {name:<16}{r['val_accuracy']:>9.3f}{r['val_loss']:>10.4f}{r['train_accuracy']:>11.3f}"
                    f"{r['trainable_params']:>11,}{r['time_s']:>7.1f}s")
    tqdm.write("\n".join(["", "=" * 68,
                          f"summary: {args.n_classes}-way speaker classification, {len(va_x)} val speeches, "
                          f"{args.max_iters} steps x {args.batch_size}", *rows, "=" * 68]))
    if texts:
        _report(summary["predictions"])
    return summary


def run(argv=None, prog: str | None = None) -> int:
    return common.run(main, argv, prog)
