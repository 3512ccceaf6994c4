"""Train a character-level (or BPE) GPT on Tiny Shakespeare (nanoGPT's shakespeare_char, on tinygpt).

The defaults are nanoGPT's CPU configuration (README, "I only have a macbook"): 4 layers,
4 heads, 128 channels, 64-token context, batch 12, 2000 iterations, no dropout. nanoGPT on
PyTorch reaches a validation loss of about 1.88 with these settings.

With `--device cuda` the defaults become nanoGPT's GPU configuration
(config/train_shakespeare_char.py, the "baby GPT"): 6 layers, 6 heads, 384 channels,
256-token context, batch 64, dropout 0.2, lr 1e-3 cosine-decayed to 1e-4 over 5000
iterations after 100 warmup iterations, betas 0.9/0.99, evaluation every 250 iterations on
200 batches (nanoGPT reports a validation loss of about 1.47). Any flag given explicitly
overrides the preset.

    python examples/train_shakespeare.py                      # train, checkpoint, sample
    python examples/train_shakespeare.py --device cuda        # the GPU preset (CuPy + an NVIDIA GPU)
    python examples/train_shakespeare.py --resume             # continue from out_dir's checkpoint
    python examples/sample.py --out-dir out-shakespeare-char  # sample from the checkpoint
    python examples/train_shakespeare.py --tokenizer bpe --vocab-size 1024 --out-dir out-shakespeare-bpe

Tokenizers: `--tokenizer char` (the default) has one token per character of the text;
`--tokenizer bpe` trains GPT-2's byte-level BPE on the training split (a few seconds) and
writes its vocab.json and merges.txt (GPT-2's format) next to the checkpoint. Either way the
checkpoint's metadata holds the whole tokenizer, so `--resume` and sample.py use exactly it.

Reproducibility: `tg.manual_seed(seed)` drives initialisation and dropout, the batch
sampler has its own seeded generator, and evaluation uses fixed batches in eval mode (no
random draws). A checkpoint holds the model, AdamW state, step, config, tokenizer, sampler
state and the global RNG, so `--resume` continues on exactly the trajectory (same batches,
same dropout masks, same learning rates) that an uninterrupted run would have taken.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

import tinygpt as tg
from tinygpt import backend, tokenizers
from tinygpt.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from tinygpt.data import DEFAULT_TEXT, BatchSampler, CharTokenizer, load_text, train_val_split
from tinygpt.nn.utils import clip_grad_norm_
from tinygpt.optim import cosine_with_warmup

CKPT_NAME = "ckpt.safetensors"
SUMMARY_NAME = "summary.json"
DEFAULT_BPE_VOCAB = 1024
# hyperparameters that shape the model; on --resume they come from the checkpoint
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "norm", "position", "sparse_pattern",
              "attention_window", "n_expert", "expert_top_k", "moe_every")
# --device cuda: nanoGPT's config/train_shakespeare_char.py (the defaults of the flags not listed
# here, e.g. weight decay 0.1 and grad clip 1.0, are the same as in nanoGPT's train.py already)
CUDA_PRESET = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
                   lr=1e-3, min_lr=1e-4, warmup_iters=100, beta1=0.9, beta2=0.99, max_iters=5000,
                   eval_interval=250, eval_iters=200, final_eval_iters=200)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a character-level (or BPE) GPT on Tiny Shakespeare with tinygpt (nanoGPT's CPU config).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("data and output")
    io.add_argument("--data", default=None,
                    help=f"UTF-8 text file to train on (default: {DEFAULT_TEXT} if it exists, else the copy of "
                         "Tiny Shakespeare shipped inside the package: no download needed)")
    io.add_argument("--data-url", default=None, help="where to download --data from when that file is missing")
    io.add_argument("--val-fraction", type=float, default=0.1, help="the last part of the text held out")
    io.add_argument("--tokenizer", choices=("char", "bpe"), default=None,
                    help="char: one token per character (default); bpe: GPT-2's byte-level BPE trained on the "
                         "training split. On --resume the checkpoint's tokenizer is used")
    io.add_argument("--vocab-size", type=int, default=None,
                    help=f"BPE vocabulary size, <|endoftext|> included (--tokenizer bpe; default {DEFAULT_BPE_VOCAB})")
    io.add_argument("--out-dir", default="out-shakespeare-char", help="checkpoint and summary directory")
    io.add_argument("--resume", action="store_true", help=f"continue from OUT_DIR/{CKPT_NAME}")
    io.add_argument("--always-save-checkpoint", action="store_true",
                    help="save at every evaluation, not only when the val loss improves")
    io.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: train on the GPU with CuPy, and default to nanoGPT's GPU configuration "
                         "(6x6x384, block 256, batch 64, dropout 0.2, 5000 iterations; flags override it)")
    io.add_argument("--seed", type=int, default=1337)

    m = p.add_argument_group("model")
    m.add_argument("--n-layer", type=int, default=4)
    m.add_argument("--n-head", type=int, default=4)
    m.add_argument("--n-embd", type=int, default=128)
    m.add_argument("--block-size", type=int, default=64, help="context length")
    m.add_argument("--dropout", type=float, default=0.0)
    m.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True,
                   help="biases in Linear and LayerNorm layers")
    m.add_argument("--norm", choices=("pre", "post"), default="pre", help="pre-norm (GPT-2) or post-norm (GPT-1)")
    m.add_argument("--position", choices=("learned", "sinusoidal"), default="learned")
    m.add_argument("--sparse-pattern", choices=("dense", "alternating", "banded"), default="dense",
                   help="GPT-3 locally banded attention: in every other layer (alternating) or every layer")
    m.add_argument("--attention-window", type=int, default=None, help="band width of the banded layers")
    m.add_argument("--n-expert", type=int, default=0, help="mixture-of-experts MLPs with this many experts (0: dense)")
    m.add_argument("--expert-top-k", type=int, default=2, choices=(1, 2), help="experts per token")
    m.add_argument("--moe-every", type=int, default=1, help="MoE in every n-th layer")

    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=12)
    o.add_argument("--max-iters", type=int, default=2000)
    o.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    o.add_argument("--min-lr", type=float, default=1e-4)
    o.add_argument("--warmup-iters", type=int, default=100)
    o.add_argument("--lr-decay-iters", type=int, default=None, help="end of the cosine decay (default: max-iters)")
    o.add_argument("--decay-lr", action=argparse.BooleanOptionalAction, default=True,
                   help="warmup + cosine decay; --no-decay-lr keeps lr constant")
    o.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on 2-D weights")
    o.add_argument("--beta1", type=float, default=0.9)
    o.add_argument("--beta2", type=float, default=0.99)
    o.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm; 0 disables clipping")

    e = p.add_argument_group("evaluation, logging and sampling")
    e.add_argument("--eval-interval", type=int, default=250)
    e.add_argument("--eval-iters", type=int, default=20, help="batches per split at each periodic evaluation")
    e.add_argument("--final-eval-iters", type=int, default=200, help="batches per split for the final evaluation")
    e.add_argument("--log-interval", type=int, default=10, help="iterations between progress-bar/log updates")
    e.add_argument("--no-progress", action="store_true", help="no progress bar; print a log line instead")
    e.add_argument("--sample-tokens", type=int, default=500, help="tokens to sample at the end (0: none)")
    e.add_argument("--temperature", type=float, default=0.8)
    e.add_argument("--top-k", type=int, default=200)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with the CUDA preset as the defaults when --device cuda is given.

    Flags given explicitly always win: the preset only replaces argparse's defaults.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda":
        parser.set_defaults(**CUDA_PRESET)
        args = parser.parse_args(argv)
    return args


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"train_shakespeare: error: {msg}")


def check_device(device: str) -> str:
    """'cpu', or 'cuda' when a GPU is really there; otherwise a clear SystemExit."""
    if device == "cuda":
        try:
            backend.cupy()  # raises, saying what is missing, when there is no usable GPU
        except RuntimeError as exc:
            raise _fail(f"--device cuda: the GPU path is not available here ({exc}); use --device cpu") from None
    return device


def kernels_label(device: str) -> str:
    """Which kernels run: native CPU ones, CUDA ones (the reference on CuPy for the rest), or the reference."""
    if device == "cuda":
        ops = tg.kernels.cuda_ops() if tg.kernels.cuda_enabled() else []
        if not ops:
            return "reference on CuPy"
        kc = tg.kernels.policy
        gemm = kc.get_matmul_backend()
        chosen = list(kc.matmul_choices().values())
        if gemm == "auto" and chosen:  # which GEMM the measured dispatch picked for the layers' shapes
            gemm = f"ours for {sum(c.ours for c in chosen)} of {len(chosen)} measured shape classes, cuBLAS for the rest"
        elif gemm == "auto":  # before the first step
            gemm = "auto, measured per layer shape at first use"
        return f"CUDA ({', '.join(ops)}; GEMM: {gemm}) + reference on CuPy"
    return "native" if tg.kernels.native_enabled() else "reference"


def load_data(args):
    where = os.path.abspath(args.data) if args.data else "the packaged Tiny Shakespeare"
    try:
        text = load_text(args.data, url=args.data_url)
    except RuntimeError as exc:  # the download failed; the message names the URL and where to save it
        raise _fail(f"no training text: {exc} (or pass --data PATH)") from None
    except FileNotFoundError:
        raise _fail(f"no training text at {where}: put a UTF-8 text file there or pass --data PATH") from None
    if not text:
        raise _fail(f"{where} is empty")
    return text


def make_tokenizer(args, text: str, meta):
    """The checkpoint's tokenizer on --resume; else a new one (--tokenizer, --vocab-size) from `text`."""
    if meta is not None:
        try:
            tokenizer = tokenizers.from_dict(meta["tokenizer"])
        except (ValueError, AttributeError) as exc:
            raise _fail(f"the checkpoint's tokenizer cannot be read: {exc}") from None
        kind = meta["tokenizer"]["type"]
        ignored = [flag for flag, given, saved in (("--tokenizer", args.tokenizer, kind),
                                                   ("--vocab-size", args.vocab_size, tokenizer.vocab_size))
                   if given is not None and given != saved]
        if ignored:
            tqdm.write(f"resume: the tokenizer comes from the checkpoint ({kind}, vocab {tokenizer.vocab_size}); "
                       f"ignoring {', '.join(ignored)}")
        args.tokenizer = kind
        args.vocab_size = tokenizer.vocab_size if kind == "bpe" else None
        return tokenizer
    args.tokenizer = args.tokenizer or "char"
    if args.tokenizer == "char":
        if args.vocab_size is not None:
            raise _fail("--vocab-size is for --tokenizer bpe (the char vocabulary is the text's characters)")
        return CharTokenizer.from_text(text)
    args.vocab_size = DEFAULT_BPE_VOCAB if args.vocab_size is None else args.vocab_size
    train_text, _ = train_val_split(text, args.val_fraction)
    t0 = time.perf_counter()
    try:
        tokenizer = tokenizers.ByteLevelBPE.train(train_text, args.vocab_size, show_progress=not args.no_progress)
    except ValueError as exc:
        raise _fail(f"--vocab-size: {exc}") from None
    tqdm.write(f"tokenizer: byte-level BPE trained on the {len(train_text):,}-character training split in "
               f"{time.perf_counter() - t0:.1f} s: {len(tokenizer.merges)} merges, vocab {tokenizer.vocab_size}")
    if tokenizer.vocab_size < args.vocab_size:
        tqdm.write(f"note: the text ran out of pairs to merge; vocab {tokenizer.vocab_size} < --vocab-size "
                   f"{args.vocab_size}")
    return tokenizer


def encode(tokenizer, text: str) -> np.ndarray:
    """Token ids; special tokens in the text (e.g. <|endoftext|> between documents) become their id."""
    if isinstance(tokenizer, tokenizers.ByteLevelBPE):
        return tokenizer.encode(text, allowed_special="all")
    return tokenizer.encode(text)


def start_token(tokenizer) -> int:
    """The token a sample starts from: the newline's (its first token), else id 0."""
    try:
        ids = tokenizer.encode("\n")
    except ValueError:
        return 0
    return int(ids[0]) if len(ids) else 0


class Evaluator:
    """Mean loss over fixed batches of each split (eval mode, no_grad).

    The batches are drawn from generators seeded from `seed`, afresh at every call, so
    every evaluation sees the same windows (comparable numbers) and touches neither the
    training sampler nor the global RNG (so checkpoints resume bit-for-bit).
    """

    def __init__(self, splits: dict, batch_size: int, block_size: int, seed: int, to_device):
        self.splits, self.batch_size, self.block_size = splits, batch_size, block_size
        self.seed, self.to_device = seed, to_device

    def __call__(self, model, iters: int) -> dict:
        model.eval()
        out = {}
        try:
            with tg.no_grad():
                for k, (name, tokens) in enumerate(self.splits.items()):
                    sampler = BatchSampler(tokens, self.batch_size, self.block_size, seed=self.seed + 1 + k)
                    losses = []
                    for _ in range(iters):
                        x, y = sampler.sample()
                        _, loss = model(self.to_device(x), self.to_device(y))
                        losses.append(loss.item())
                    out[name] = float(np.mean(losses))
        finally:
            model.train()
        return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.max_iters
    if args.max_iters < 0 or args.eval_interval < 1 or args.eval_iters < 1 or args.final_eval_iters < 1:
        raise _fail("--max-iters must be >= 0 and --eval-interval, --eval-iters, --final-eval-iters >= 1")
    if args.warmup_iters < 0 or args.lr_decay_iters < 0:
        raise _fail("--warmup-iters and --lr-decay-iters must be >= 0")
    if args.decay_lr and args.warmup_iters > args.lr_decay_iters:
        tqdm.write(f"note: --warmup-iters {args.warmup_iters} is longer than the decay ({args.lr_decay_iters} "
                   f"iterations); using --warmup-iters {args.lr_decay_iters}")
        args.warmup_iters = args.lr_decay_iters
    device = check_device(args.device)
    t_start = time.perf_counter()

    # ---------------------------------------------------------------- data
    text = load_data(args)
    ckpt_path = os.path.join(args.out_dir, CKPT_NAME)
    meta = None
    if args.resume:
        if not os.path.isfile(ckpt_path):
            raise _fail(f"--resume: no checkpoint at {os.path.abspath(ckpt_path)} (train without --resume first)")
        try:
            meta = read_checkpoint_metadata(ckpt_path)
        except CheckpointError as exc:
            raise _fail(str(exc)) from None
    tokenizer = make_tokenizer(args, text, meta)
    if isinstance(tokenizer, tokenizers.ByteLevelBPE):
        tokenizer.save(args.out_dir)  # vocab.json + merges.txt beside the checkpoint (GPT-2's format)
    # the split is made on the text, so a BPE tokenizer trained on the training part never sees the rest
    # (for the char tokenizer this equals splitting the ids)
    train_text, val_text = train_val_split(text, args.val_fraction)
    try:
        train_ids, val_ids = encode(tokenizer, train_text), encode(tokenizer, val_text)
    except ValueError as exc:
        raise _fail(f"{args.data or DEFAULT_TEXT} does not fit the checkpoint's vocabulary: {exc}") from None
    n_tokens = len(train_ids) + len(val_ids)

    # ---------------------------------------------------------------- model and optimiser
    tg.manual_seed(args.seed)
    if meta is not None:
        config = tg.GPTConfig.from_dict(meta["config"])
        changed = [f"--{k.replace('_', '-')}" for k in MODEL_ARGS if getattr(config, k) != getattr(args, k)]
        if changed:
            tqdm.write(f"resume: model settings come from the checkpoint; ignoring {', '.join(changed)}")
        for k in MODEL_ARGS:
            setattr(args, k, getattr(config, k))
    else:
        try:
            config = tg.GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                                  n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, bias=args.bias,
                                  norm=args.norm, position=args.position, sparse_pattern=args.sparse_pattern,
                                  attention_window=args.attention_window, n_expert=args.n_expert,
                                  expert_top_k=args.expert_top_k, moe_every=args.moe_every)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    for name, tokens in (("train", train_ids), ("val", val_ids)):
        if len(tokens) < config.block_size + 1:
            raise _fail(f"the {name} split has {len(tokens)} tokens, too few for --block-size {config.block_size}")
    model = tg.GPT(config)
    if device != "cpu":
        model.to(device)
    optimizer = model.configure_optimizers(args.weight_decay, args.lr, betas=(args.beta1, args.beta2))
    sampler = BatchSampler(train_ids, args.batch_size, config.block_size, seed=args.seed)

    def to_device(a):
        return a if device == "cpu" else tg.Tensor(a, device=device)

    evaluate = Evaluator({"train": train_ids, "val": val_ids}, args.batch_size, config.block_size,
                         args.seed, to_device)

    start_iter, best_val = 0, math.inf
    if meta is not None:
        try:
            meta = load_checkpoint(ckpt_path, model, optimizer, sampler=sampler, restore_rng=True)
        except CheckpointError as exc:
            raise _fail(f"{exc} (did --batch-size or --data change since it was written?)") from None
        start_iter = int(meta["step"])
        best_val = float((meta["extra"] or {}).get("best_val_loss", math.inf))
        tqdm.write(f"resumed from {ckpt_path} at iteration {start_iter} (best val loss {best_val:.4f})")

    n_params = model.num_params()
    tokens_per_iter = args.batch_size * config.block_size
    tqdm.write(f"tinygpt {tg.__version__} | {device} | kernels: {kernels_label(device)}")
    if args.tokenizer == "char":
        tqdm.write(f"data: {n_tokens:,} characters, vocab {tokenizer.vocab_size}, "
                   f"train {len(train_ids):,} / val {len(val_ids):,}")
    else:
        tqdm.write(f"data: {len(text):,} characters -> {n_tokens:,} BPE tokens ({len(text) / max(n_tokens, 1):.2f} "
                   f"characters/token), vocab {tokenizer.vocab_size}, train {len(train_ids):,} / val {len(val_ids):,} "
                   f"tokens")
    tqdm.write(f"model: {n_params / 1e6:.2f}M parameters ({model.num_params(non_embedding=True) / 1e6:.2f}M without "
               f"positions), {config.n_layer} layers, {config.n_head} heads, {config.n_embd} channels, "
               f"block {config.block_size}; {tokens_per_iter} tokens per iteration")

    def lr_at(it: int) -> float:
        if not args.decay_lr:
            return args.lr
        return cosine_with_warmup(it, max_lr=args.lr, min_lr=args.min_lr, warmup_steps=args.warmup_iters,
                                  decay_steps=args.lr_decay_iters)

    def save(it: int):
        os.makedirs(args.out_dir, exist_ok=True)
        hyper = {k: v for k, v in vars(args).items() if k not in ("resume",)}
        save_checkpoint(ckpt_path, model, optimizer, step=it, config=config, tokenizer=tokenizer, sampler=sampler,
                        extra={"best_val_loss": best_val, "args": hyper})

    # ---------------------------------------------------------------- training loop
    step_times, losses, eval_log = [], {}, []
    params = model.parameters()
    last_loss = float("nan")
    bar = tqdm(total=args.max_iters, initial=min(start_iter, args.max_iters), disable=args.no_progress,
               unit="it", dynamic_ncols=True, desc="train")
    it = start_iter
    while True:
        if (it % args.eval_interval == 0 or it == args.max_iters) and not (meta is not None and it == start_iter):
            t0 = time.perf_counter()
            ev = evaluate(model, args.eval_iters)
            eval_log.append({"iter": it, **ev})
            saved = ""
            if ev["val"] < best_val or args.always_save_checkpoint:
                best_val = min(best_val, ev["val"])
                if it > 0 or args.always_save_checkpoint:
                    save(it)
                    saved = f" -> saved {ckpt_path}"
            tqdm.write(f"step {it}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f} "
                       f"({time.perf_counter() - t0:.1f}s){saved}")
        if it >= args.max_iters:
            break

        t0 = time.perf_counter()
        lr = lr_at(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = sampler.sample()
        _, loss = model(to_device(x), to_device(y))
        optimizer.zero_grad()
        loss.backward()
        if args.grad_clip > 0:
            clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        last_loss = loss.item()  # also synchronises a GPU
        dt = time.perf_counter() - t0
        step_times.append(dt)
        losses[it] = last_loss
        if not math.isfinite(last_loss):
            bar.close()
            raise _fail(f"the loss became {last_loss} at iteration {it}; lower --lr or keep --grad-clip on")
        it += 1
        bar.update(1)
        if it % args.log_interval == 0 or it == args.max_iters:
            recent = np.median(step_times[-args.log_interval:])
            if args.no_progress:
                tqdm.write(f"iter {it}: loss {last_loss:.4f}, lr {lr:.2e}, {recent * 1e3:.1f} ms/iter, "
                           f"{tokens_per_iter / recent:,.0f} tok/s")
            else:
                bar.set_postfix_str(f"loss {last_loss:.4f}, {recent * 1e3:.1f} ms/it, "
                                    f"{tokens_per_iter / recent:,.0f} tok/s", refresh=False)
    bar.close()
    train_time = sum(step_times)

    # ---------------------------------------------------------------- final evaluation, sample, summary
    t0 = time.perf_counter()
    final = evaluate(model, args.final_eval_iters)
    final_eval_time = time.perf_counter() - t0
    sample = ""
    if args.sample_tokens > 0:
        start = start_token(tokenizer)
        out = model.generate(to_device(np.array([[start]], dtype=np.int64)), max_new_tokens=args.sample_tokens,
                             temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        sample = tokenizer.decode(np.asarray(out.numpy() if hasattr(out, "numpy") else out)[0, 1:])
    median_step = float(np.median(step_times)) if step_times else float("nan")
    summary = {
        "iterations": args.max_iters,
        "iterations_this_run": len(step_times),
        "start_iter": start_iter,
        "resumed": meta is not None,
        "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": train_time,
        "median_ms_per_iter": median_step * 1e3,
        "tokens_per_s": tokens_per_iter / median_step if step_times else float("nan"),
        "gflops_per_s": model.flops_per_token() * tokens_per_iter / median_step / 1e9 if step_times else float("nan"),
        "params": n_params,
        "tokenizer": args.tokenizer,
        "vocab_size": tokenizer.vocab_size,
        "tokens": n_tokens,
        "best_val_loss": best_val,
        "final_train_loss": final["train"],
        "final_val_loss": final["val"],
        "final_eval_iters": args.final_eval_iters,
        "final_eval_time_s": final_eval_time,
        "last_train_loss": last_loss,
        "train_losses": {str(k): v for k, v in losses.items()},
        "evals": eval_log,
        "config": config.to_dict(),
        "args": {k: v for k, v in vars(args).items()},
        "device": device,
        "kernels": kernels_label(device),
        "checkpoint": ckpt_path if os.path.isfile(ckpt_path) else None,
        "sample": sample,
    }
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, SUMMARY_NAME), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)

    lines = [
        "", "=" * 64, "summary",
        f"  iterations        {args.max_iters} ({len(step_times)} in this run, from {start_iter})",
        f"  wall time         {summary['wall_time_s']:.1f} s (training steps {train_time:.1f} s)",
        f"  median step       {summary['median_ms_per_iter']:.1f} ms/iter, {summary['tokens_per_s']:,.0f} tokens/s, "
        f"{summary['gflops_per_s']:.1f} GFLOP/s",
        f"  parameters        {n_params:,}",
        f"  best val loss     {best_val:.4f} (periodic evaluations, {args.eval_iters} batches)",
        f"  final train loss  {final['train']:.4f} ({args.final_eval_iters} batches)",
        f"  final val loss    {final['val']:.4f} ({args.final_eval_iters} batches)",
        f"  checkpoint        {summary['checkpoint']}",
        "=" * 64,
    ]
    tqdm.write("\n".join(lines))
    if sample:
        tqdm.write(f"sample (temperature {args.temperature}, top_k {args.top_k}):\n{sample}\n" + "-" * 64)
    return summary


if __name__ == "__main__":
    main()
