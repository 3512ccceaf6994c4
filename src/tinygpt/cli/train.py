"""Train a character-level (or BPE) GPT on Tiny Shakespeare or any text (nanoGPT's shakespeare_char, on tinygpt).

    tinygpt train                      # = python examples/train_shakespeare.py = python -m tinygpt train

The defaults are nanoGPT's CPU configuration (README, "I only have a macbook"): 4 layers,
4 heads, 128 channels, 64-token context, batch 12, 2000 iterations, no dropout. nanoGPT on
PyTorch reaches a validation loss of about 1.88 with these settings.

With `--device cuda` the defaults become nanoGPT's GPU configuration
(config/train_shakespeare_char.py, the "baby GPT"): 6 layers, 6 heads, 384 channels,
256-token context, batch 64, dropout 0.2, lr 1e-3 cosine-decayed to 1e-4 over 5000
iterations after 100 warmup iterations, betas 0.9/0.99, evaluation every 250 iterations on
200 batches (nanoGPT reports a validation loss of about 1.47). Any flag given explicitly
overrides the preset. Matrix products on the GPU use TF32 by default, as nanoGPT's
(`--matmul-precision fp32` for full float32; kernels/policy.py holds the choice).

Tokenizers: `--tokenizer char` (the default) has one token per character of the text;
`--tokenizer bpe` trains GPT-2's byte-level BPE on the training split (a few seconds) and
writes its vocab.json and merges.txt next to the checkpoint; `--init-from DIR` fine-tunes a
Hugging Face GPT-2 directory with its own BPE. The checkpoint's metadata holds the tokenizer.

Watching, stopping, continuing:
- OUT_DIR/metrics.jsonl gets one JSON line per step (loss, lr, ms/iter, tokens/s) and per
  evaluation (loss, perplexity, bits per token and per character), flushed as it goes; a
  resumed run appends to it. OUT_DIR/loss.png plots it at the end (`tinygpt plot LOG` for any log).
- Ctrl-C finishes the current step, saves the checkpoint, writes the summary and exits with
  status 130; a second Ctrl-C aborts at once.
- `--resume` continues from OUT_DIR/ckpt.safetensors. The rule: the run's settings (learning
  rate schedule, batch, max iterations, evaluation, data) come from the checkpoint unless a flag
  is given on the command line, and the model shape and tokenizer always come from it. So a
  larger `--max-iters` extends the run without restarting the cosine schedule (its end,
  `--lr-decay-iters`, was fixed when the run started: after it the lr stays at `--min-lr`); give
  `--lr-decay-iters` explicitly to stretch the schedule instead.
- A new run refuses an OUT_DIR that already holds a checkpoint unless `--force` (or `--resume`).

Reproducibility: `tg.manual_seed(seed)` drives initialisation and dropout, the batch sampler
has its own seeded generator, and evaluation uses fixed batches in eval mode (no random
draws). A checkpoint holds the model, AdamW state, step, config, tokenizer, sampler state and
the global RNG, so `--resume` continues on exactly the trajectory (same batches, same dropout
masks, same learning rates) that an uninterrupted run would have taken.

Structure: `train_step` (forward and backward over the micro-batches of one step, a
`reduce_gradients` hook, clipping, the optimiser step), `Evaluator`, `save_run` and the
`MetricsLog` are separate; `train` is the loop that calls them.

Data parallel: `mpiexec -n N python examples/train_shakespeare.py <flags>` trains the same model on
N processes (or GPUs, one per rank) as one process with the same flags: --batch-size is the global
batch, rank 0 alone prints and writes, --zero 1 shards AdamW's state (ZeRO-1), and checkpoints
resume at any N. The data-parallel part is cli/_dist.py (docs/distributed.md); without a launcher
none of it runs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

import tinygpt as tg

from .. import tokenizers
from ..checkpoint import CheckpointError, load_checkpoint, load_model, model_config, read_checkpoint_metadata, \
    save_checkpoint
from ..data import DEFAULT_TEXT, BatchSampler, CharTokenizer, train_val_split
from ..kernels import policy
from ..nn.moe import MoE
from ..nn.utils import clip_grad_norm_
from ..optim import cosine_with_warmup
from . import _dist, common
from .common import HelpFormatter, StopRequest, encode, explicit_dests, kernels_label
from .metrics import MATPLOTLIB_HINT, METRICS_NAME, PLOT_NAME, MetricsLog, plot_metrics, split_metrics

PROG = "tinygpt train"
CKPT_NAME = "ckpt.safetensors"
SUMMARY_NAME = "summary.json"
DEFAULT_BPE_VOCAB = 1024
_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(tg.GPTConfig)}
# hyperparameters that shape the model; on --resume they come from the checkpoint
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "norm", "position", "sparse_pattern",
              "attention_window", "n_expert", "expert_top_k", "moe_every", "capacity_factor", "moe_aux_loss_coef")
# the run's settings: on --resume the checkpoint's, unless given on the command line
RUN_ARGS = ("data", "data_url", "val_fraction", "seed", "batch_size", "grad_accum", "max_iters", "lr", "min_lr",
            "warmup_iters", "lr_decay_iters", "decay_lr", "weight_decay", "beta1", "beta2", "grad_clip",
            "eval_interval", "eval_iters", "final_eval_iters", "always_save_checkpoint", "log_interval",
            "sample_tokens", "temperature", "top_k")
# --device cuda: nanoGPT's config/train_shakespeare_char.py (the defaults of the flags not listed
# here, e.g. weight decay 0.1 and grad clip 1.0, are the same as in nanoGPT's train.py already)
CUDA_PRESET = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
                   lr=1e-3, min_lr=1e-4, warmup_iters=100, beta1=0.9, beta2=0.99, max_iters=5000,
                   eval_interval=250, eval_iters=200, final_eval_iters=200)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Train a character-level (or BPE) GPT on Tiny Shakespeare with tinygpt (nanoGPT's CPU config). "
                    "--device cuda switches the defaults to nanoGPT's GPU config.")
    io = p.add_argument_group("data and output")
    io.add_argument("--data", default=None,
                    help=f"UTF-8 text file to train on (default: {DEFAULT_TEXT} if it exists, else the copy of "
                         "Tiny Shakespeare shipped inside the package: no download needed)")
    io.add_argument("--data-url", default=None,
                    help="download --data from this URL when that file is missing (default: none, no download)")
    io.add_argument("--val-fraction", type=float, default=0.1, help="the last part of the text held out")
    io.add_argument("--tokenizer", choices=("char", "bpe"), default=None,
                    help="char: one token per character; bpe: GPT-2's byte-level BPE trained on the training split "
                         "(default: char; on --resume the checkpoint's, with --init-from the directory's)")
    io.add_argument("--vocab-size", type=int, default=None,
                    help=f"BPE vocabulary size, <|endoftext|> included (--tokenizer bpe; default: {DEFAULT_BPE_VOCAB})")
    io.add_argument("--out-dir", default="out-shakespeare-char",
                    help=f"checkpoint ({CKPT_NAME}), {METRICS_NAME}, {PLOT_NAME} and {SUMMARY_NAME}")
    io.add_argument("--resume", action="store_true",
                    help=f"continue from OUT_DIR/{CKPT_NAME}; settings not given on the command line come from it")
    io.add_argument("--force", action="store_true",
                    help="start a new run even if OUT_DIR holds a checkpoint (it is overwritten)")
    io.add_argument("--init-from", default=None, metavar="DIR",
                    help="fine-tune a Hugging Face GPT-2 directory (config.json, model.safetensors, vocab.json, "
                         "merges.txt) instead of a random model (default: none, random initialisation)")
    io.add_argument("--eval-only", action="store_true",
                    help=f"evaluate OUT_DIR/{CKPT_NAME} (or --init-from) on both splits and exit")
    io.add_argument("--always-save-checkpoint", action="store_true",
                    help="save at every evaluation, not only when the val loss improves")
    io.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: train on the GPU with CuPy, and default to nanoGPT's GPU configuration "
                         "(6x6x384, block 256, batch 64, dropout 0.2, 5000 iterations; flags override it)")
    io.add_argument("--matmul-precision", choices=("tf32", "fp32", "bf16"), default=None,
                    help="float32 matrix products on the GPU: tf32 (the default there, as nanoGPT), fp32 (full "
                         "precision) or bf16 inputs; default: TINYGPT_MATMUL_PRECISION if set, else tf32 on cuda")
    io.add_argument("--seed", type=int, default=1337, help="initialisation, dropout, batches and the sample")
    io.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                    help=f"write OUT_DIR/{PLOT_NAME} at the end (needs matplotlib: pip install 'tinygpt[plot]')")

    m = p.add_argument_group("model (on --resume: the checkpoint's)")
    m.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    m.add_argument("--n-head", type=int, default=4, help="attention heads per block")
    m.add_argument("--n-embd", type=int, default=128, help="channels (embedding width)")
    m.add_argument("--block-size", type=int, default=64,
                   help="context length (with --init-from: crops the model's context to this if shorter)")
    m.add_argument("--dropout", type=float, default=0.0, help="dropout probability in training")
    m.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True,
                   help="biases in Linear and LayerNorm layers")
    m.add_argument("--norm", choices=("pre", "post"), default="pre", help="pre-norm (GPT-2) or post-norm (GPT-1)")
    m.add_argument("--position", choices=("learned", "sinusoidal"), default="learned",
                   help="position embeddings: learned (GPT) or fixed sinusoids (the original Transformer)")
    m.add_argument("--sparse-pattern", choices=("dense", "alternating", "banded"), default="dense",
                   help="GPT-3 locally banded attention: in every other layer (alternating) or every layer")
    m.add_argument("--attention-window", type=int, default=None,
                   help="band width of the banded layers (default: none; needs --sparse-pattern alternating or banded)")
    m.add_argument("--n-expert", type=int, default=0, help="mixture-of-experts MLPs with this many experts (0: dense)")
    m.add_argument("--expert-top-k", type=int, default=2, choices=(1, 2), help="experts per token")
    m.add_argument("--moe-every", type=int, default=1, help="MoE in every n-th layer")
    m.add_argument("--capacity-factor", type=float, default=_CONFIG_DEFAULTS["capacity_factor"],
                   help="expert capacity = ceil(factor x tokens x top-k / experts); assignments over it are "
                        "dropped (0: dropless)")
    m.add_argument("--moe-aux-loss-coef", type=float, default=_CONFIG_DEFAULTS["moe_aux_loss_coef"],
                   help="weight of the MoE load-balancing loss added to the training loss")

    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=12, help="sequences per micro-batch")
    o.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per step (gradient accumulation): a step sees batch-size x grad-accum "
                        "sequences, the same update as one batch that large")
    o.add_argument("--max-iters", type=int, default=2000, help="optimiser steps of the whole run")
    o.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    o.add_argument("--min-lr", type=float, default=1e-4, help="learning rate at the end of the cosine decay")
    o.add_argument("--warmup-iters", type=int, default=100, help="steps of linear warmup to --lr")
    o.add_argument("--lr-decay-iters", type=int, default=None,
                   help="end of the cosine decay (default: --max-iters when the run starts; kept on --resume)")
    o.add_argument("--decay-lr", action=argparse.BooleanOptionalAction, default=True,
                   help="warmup + cosine decay; --no-decay-lr keeps lr constant")
    o.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on 2-D weights")
    o.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    o.add_argument("--beta2", type=float, default=0.99, help="AdamW beta2")
    o.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm; 0 disables clipping")
    o.add_argument("--zero", type=int, choices=(0, 1), default=0,
                   help="under mpiexec -n N: 1 shards AdamW's moments over the ranks (ZeRO-1: 1/N of the optimiser "
                        "memory each, the same model and checkpoint); 0 keeps them replicated")

    e = p.add_argument_group("evaluation, logging and sampling")
    e.add_argument("--eval-interval", type=int, default=250, help="iterations between evaluations (and checkpoints)")
    e.add_argument("--eval-iters", type=int, default=20, help="batches per split at each periodic evaluation")
    e.add_argument("--final-eval-iters", type=int, default=200,
                   help="batches per split for the final evaluation and --eval-only")
    e.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop training after this much wall time (then evaluate, save and summarise as at "
                        "--max-iters); default: none")
    e.add_argument("--log-interval", type=int, default=10, help="iterations between progress-bar/log updates")
    e.add_argument("--no-progress", action="store_true", help="no progress bar; print a log line instead")
    e.add_argument("--sample-tokens", type=int, default=500, help="tokens to sample at the end (0: none)")
    e.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of the final sample")
    e.add_argument("--top-k", type=int, default=200, help="the final sample draws from the k most likely tokens")
    return p


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    """The command line, with the CUDA preset as the defaults when --device cuda is given.

    Flags given explicitly always win: the preset only replaces argparse's defaults.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.device == "cuda":
        parser.set_defaults(**CUDA_PRESET)
        args = parser.parse_args(argv)
    return args


def _fail(msg: str) -> SystemExit:
    return common.fail(PROG, msg)


def check_args(args) -> None:
    """Values argparse cannot check alone (ranges, combinations)."""
    if args.time_limit is not None and not args.time_limit > 0:
        raise _fail("--time-limit must be > 0 seconds")
    if args.max_iters < 0 or args.eval_interval < 1 or args.eval_iters < 1 or args.final_eval_iters < 1:
        raise _fail("--max-iters must be >= 0 and --eval-interval, --eval-iters, --final-eval-iters >= 1")
    if args.batch_size < 1 or args.grad_accum < 1 or args.log_interval < 1:
        raise _fail("--batch-size, --grad-accum and --log-interval must be >= 1")
    if args.warmup_iters < 0 or (args.lr_decay_iters is not None and args.lr_decay_iters < 0):
        raise _fail("--warmup-iters and --lr-decay-iters must be >= 0")
    if not (args.lr >= 0 and args.min_lr >= 0) or args.sample_tokens < 0:
        raise _fail("--lr, --min-lr and --sample-tokens must be >= 0")
    if args.attention_window is not None and args.sparse_pattern == "dense":
        raise _fail(f"--attention-window {args.attention_window} has no effect with --sparse-pattern dense (the "
                    f"default): add --sparse-pattern alternating (GPT-3: banded every other layer) or banded "
                    f"(every layer)")
    if args.resume and args.force:
        raise _fail("--resume continues the checkpoint, --force overwrites it: give one")
    if args.resume and args.init_from:
        raise _fail("--init-from starts a new run from a pretrained model; --resume continues OUT_DIR's: give one")


# ---------------------------------------------------------------------------- settings on --resume
def _valid_setting(name: str, value, default) -> bool:
    """A saved run setting has the type its flag produces."""
    if name in ("data", "data_url"):
        return value is None or isinstance(value, str)
    if name == "lr_decay_iters":
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return False


def restore_run_args(args, explicit: set, saved) -> list:
    """Set every RUN_ARGS setting not given on the command line to the checkpoint's value.

    Returns the names restored with a different value. A saved value of the wrong type is an error
    (ranges are checked afterwards by check_args)."""
    if not isinstance(saved, dict):
        return []
    parser = build_parser()
    changed = []
    for k in RUN_ARGS:
        if k in explicit or k not in saved:
            continue
        value = saved[k]
        if not _valid_setting(k, value, parser.get_default(k)):
            raise _fail(f"the checkpoint's saved setting {k}={value!r} is not valid; give --{k.replace('_', '-')}")
        if getattr(args, k) != value:
            changed.append(k)
        setattr(args, k, value)
    return changed


def lr_at(args, it: int) -> float:
    """The learning rate of step `it`: linear warmup, then cosine to --min-lr at --lr-decay-iters."""
    if not args.decay_lr:
        return args.lr
    return cosine_with_warmup(it, max_lr=args.lr, min_lr=args.min_lr, warmup_steps=args.warmup_iters,
                              decay_steps=args.lr_decay_iters)


# ---------------------------------------------------------------------------- data and tokenizer
def make_tokenizer(args, text: str, meta):
    """The checkpoint's tokenizer on --resume; else a new one (--tokenizer, --vocab-size) from `text`."""
    if meta is not None:
        if meta["tokenizer"] is None:
            raise _fail("the checkpoint has no tokenizer in its metadata")
        try:
            tokenizer = tokenizers.from_dict(meta["tokenizer"])
        except (ValueError, TypeError, AttributeError) as exc:
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


def split_tokens(args, tokenizer, text: str) -> dict:
    """{'train': (ids, chars per token), 'val': (...)}: the text is split first, so a BPE tokenizer
    trained on the training part never sees the rest (for chars this equals splitting the ids)."""
    out = {}
    for name, part in zip(("train", "val"), train_val_split(text, args.val_fraction)):
        try:
            ids = encode(tokenizer, part)
        except ValueError as exc:
            raise _fail(f"{args.data or DEFAULT_TEXT} does not fit the tokenizer's vocabulary: {exc}") from None
        out[name] = (ids, len(part) / max(len(ids), 1))
    return out


def start_token(tokenizer) -> int:
    """The token a sample starts from: the newline's (its first token), else id 0."""
    try:
        ids = tokenizer.encode("\n")
    except ValueError:
        return 0
    return int(ids[0]) if len(ids) else 0


def crop_block_size(model, block_size: int) -> None:
    """Shorten a model's context to `block_size` (nanoGPT's crop_block_size): the first rows of the
    position table are kept, so the model computes the same as before on sequences that fit."""
    c = model.config
    if block_size >= c.block_size:
        return
    model.config = dataclasses.replace(c, block_size=block_size)
    tr = model.transformer
    if c.position == "learned":
        tr.wpe.weight.data = tr.wpe.weight.xp.ascontiguousarray(tr.wpe.weight.data[:block_size])  # (T, C) -> (t, C)
        tr.wpe.num_embeddings = block_size
    else:
        object.__setattr__(tr, "wpe", tr.wpe[:block_size])


# ---------------------------------------------------------------------------- the pieces of a step
class Evaluator:
    """Mean loss over fixed batches of each split (eval mode, no_grad), with perplexity and bits
    per token / character.

    The batches are drawn from generators seeded from `seed`, afresh at every call, so
    every evaluation sees the same windows (comparable numbers) and touches neither the
    training sampler nor the global RNG (so checkpoints resume bit-for-bit). A batch holds
    batch_size x grad_accum windows, run grad_accum at a time (as training's steps), so every
    --grad-accum evaluates the same windows.
    """

    def __init__(self, splits: dict, batch_size: int, block_size: int, seed: int, to_device, grad_accum: int = 1):
        self.splits, self.batch_size, self.block_size = splits, batch_size, block_size
        self.seed, self.to_device, self.grad_accum = seed, to_device, grad_accum
        self.parallel = None  # data parallel: each rank computes every N-th batch whole, the mean is reduced

    def __call__(self, model, iters: int) -> dict:
        """{'train': {'loss', 'ppl', 'bits_per_token', 'bits_per_char'}, 'val': {...}}"""
        model.eval()
        out = {}
        try:
            with tg.no_grad():
                for k, (name, (tokens, chars_per_token)) in enumerate(self.splits.items()):
                    sampler = BatchSampler(tokens, self.batch_size * self.grad_accum, self.block_size,
                                           seed=self.seed + 1 + k)
                    losses = []
                    for i in range(iters):
                        batches = micro_batches(sampler, self.grad_accum)  # every rank draws every batch
                        if self.parallel is not None and not self.parallel.evaluates(i):
                            continue
                        for x, y in batches:
                            _, loss = model(self.to_device(x), self.to_device(y))
                            losses.append(loss.item())
                    mean = float(np.mean(losses)) if self.parallel is None else \
                        self.parallel.mean(losses, iters * self.grad_accum)
                    out[name] = split_metrics(mean, chars_per_token)
        finally:
            model.train()
        return out


def moe_stats(model, as_tensor: bool = False) -> tuple:
    """(mean load-balancing loss, dropped fraction of the router's assignments) of the last forward,
    (None, None) for a model without MoE layers. as_tensor: the loss as the model's 0-d Tensor."""
    layers = [m for m in model.modules() if isinstance(m, MoE) and m.stats]
    if not layers:
        return None, None
    dropped = sum(m.stats["dropped"] for m in layers)
    assigned = sum(int(np.asarray(tg.backend.to_numpy(m.stats["tokens_per_expert"])).sum()) for m in layers)
    aux = getattr(model, "moe_aux_loss", None)
    if aux is not None and not as_tensor:
        aux = aux.item()
    return aux, dropped / max(assigned, 1)


def train_step(model, optimizer, batches, *, lr: float, grad_clip: float, to_device, params=None,
               reduce_gradients=None, parallel=None) -> dict:
    """One optimiser step over a list of (x, y) micro-batches (gradient accumulation).

    Each micro-batch's loss is scaled by 1/len(batches) before its backward, so the accumulated
    gradient is the gradient of the mean loss over all of them: the step equals one step on the
    concatenated batch (up to float rounding; not with dropout, whose masks are drawn per
    micro-batch, nor for MoE capacity, which is per micro-batch). `reduce_gradients(params)`,
    when given, runs after the backward passes and before clipping (the data-parallel all-reduce).
    `parallel` (a cli._dist.DataParallel): `batches` are global, this rank computes its rows of each,
    the gradients are summed over ranks (on the last micro-step) and clipped by their global norm.

    Returns {'loss': mean cross-entropy, 'moe_aux_loss', 'moe_dropped_frac'} (None without MoE).
    """
    params = model.parameters() if params is None else params
    for group in optimizer.param_groups:
        group["lr"] = lr
    clip = clip_grad_norm_
    if parallel is None:
        optimizer.zero_grad()
    else:
        parallel.zero_grad()
        batches = parallel.local(batches)
        reduce_gradients, clip = parallel.reduce_gradients, parallel.clip_grad_norm_
    n = len(batches)
    losses, auxes, drops = [], [], []
    for k, (x, y) in enumerate(batches):
        with contextlib.nullcontext() if parallel is None else parallel.micro_step(k, n):
            _, loss = model(to_device(x), to_device(y))
            if parallel is None:
                (loss if n == 1 else loss * (1.0 / n)).backward()
            else:  # this rank's share of the global mean: the sum over ranks is the global batch's gradient
                (loss * (parallel.share / n)).backward()
        losses.append(loss.detach())
        aux, dropped = moe_stats(model, as_tensor=True)
        if aux is not None:
            auxes.append(aux)
            drops.append(dropped)
    if reduce_gradients is not None:
        reduce_gradients(params)
    if grad_clip > 0:
        clip(params, grad_clip)
    optimizer.step()
    # read the numbers only now (on a GPU .item() waits for the device: the step is already queued)
    values = [v.item() for v in losses]
    if auxes:
        auxes = [a.item() for a in auxes]
        coef = model.config.moe_aux_loss_coef  # report the cross-entropy, as the evaluation does
        values = [v - coef * a for v, a in zip(values, auxes)]
    return {"loss": float(np.mean(values)), "moe_aux_loss": float(np.mean(auxes)) if auxes else None,
            "moe_dropped_frac": float(np.mean(drops)) if drops else None}


def micro_batches(sampler, grad_accum: int) -> list:
    """One step's batch (batch_size x grad_accum sequences, one draw) cut into grad_accum micro-batches,
    so every --grad-accum sees the same sequences as --batch-size x grad-accum in one batch."""
    x, y = sampler.sample()
    b = x.shape[0] // grad_accum
    return [(x[k * b:(k + 1) * b], y[k * b:(k + 1) * b]) for k in range(grad_accum)]


@dataclasses.dataclass
class Run:
    """Everything a training run holds."""

    args: argparse.Namespace
    device: str
    text: str
    tokenizer: object
    splits: dict
    config: object
    model: object
    optimizer: object
    sampler: object
    evaluate: Evaluator
    to_device: object
    ckpt_path: str
    start_iter: int = 0
    best_val: float = math.inf
    resumed: bool = False
    parallel: object = None  # cli._dist.DataParallel under mpiexec -n N > 1

    @property
    def main(self) -> bool:
        """The process that prints, logs and writes files (rank 0, or the only one)."""
        return self.parallel is None or self.parallel.is_main


def save_run(run: Run, it: int, interrupted: bool = False) -> None:
    """The checkpoint of `run` after `it` steps (atomic; everything --resume needs)."""
    args = run.args
    # --zero and the number of ranks do not change the model: the file is the same whatever they are
    hyper = {k: v for k, v in vars(args).items() if k not in ("resume", "force", "eval_only", "zero")}
    best = run.best_val if math.isfinite(run.best_val) else None
    # data parallel: every rank gathers ZeRO-1's sharded moments (a collective), rank 0 alone writes
    with contextlib.nullcontext() if run.parallel is None else run.parallel.gathered_state(run.optimizer):
        if run.main:
            os.makedirs(args.out_dir, exist_ok=True)
            save_checkpoint(run.ckpt_path, run.model, run.optimizer, step=it, config=run.config,
                            tokenizer=run.tokenizer, sampler=run.sampler,
                            extra={"best_val_loss": best, "args": hyper, "interrupted": interrupted})


def _eval_record(it: int, iters: int, ev: dict, final: bool = False) -> dict:
    rec = {"type": "eval", "iter": it, "eval_iters": iters}
    if final:
        rec["final"] = True
    for split, metrics in ev.items():
        rec.update({f"{split}_{k}": v for k, v in metrics.items()})
    return rec


# ---------------------------------------------------------------------------- setting up a run
def _model_from_args(args, vocab_size: int):
    try:
        config = tg.GPTConfig(vocab_size=vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                              n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, bias=args.bias,
                              norm=args.norm, position=args.position, sparse_pattern=args.sparse_pattern,
                              attention_window=args.attention_window, n_expert=args.n_expert,
                              expert_top_k=args.expert_top_k, moe_every=args.moe_every,
                              capacity_factor=args.capacity_factor, moe_aux_loss_coef=args.moe_aux_loss_coef)
    except (ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    return config, tg.GPT(config)


def _from_pretrained(args, explicit: set):
    """(config, model, tokenizer) of --init-from: the directory's shape and BPE; --dropout and a shorter
    --block-size apply, other model flags are refused."""
    given = sorted(k for k in explicit if k in MODEL_ARGS and k not in ("dropout", "block_size"))
    given += sorted(k for k in explicit if k in ("tokenizer", "vocab_size"))
    if given:
        raise _fail(f"--init-from: the model and tokenizer come from {args.init_from}; drop "
                    f"{', '.join('--' + k.replace('_', '-') for k in given)}")
    model, tokenizer = common.load_hf(args.init_from, PROG, dropout=args.dropout)
    if "block_size" in explicit and args.block_size > model.config.block_size:
        raise _fail(f"--block-size {args.block_size} is longer than {args.init_from}'s context "
                    f"({model.config.block_size})")
    crop_block_size(model, args.block_size)
    args.tokenizer, args.vocab_size = "bpe", tokenizer.vocab_size
    for k in MODEL_ARGS:
        setattr(args, k, getattr(model.config, k))
    return model.config, model, tokenizer


def setup(args, explicit: set, device: str, parallel=None) -> Run:
    """Data, tokenizer, model, optimiser and sampler of a new, pretrained or resumed run (`parallel`: this
    rank's cli._dist.DataParallel under mpiexec, attached once the model and checkpoint are loaded)."""
    ckpt_path = os.path.join(args.out_dir, CKPT_NAME)
    meta = None
    if args.resume:
        if not os.path.isfile(ckpt_path):
            raise _fail(f"--resume: no checkpoint at {os.path.abspath(ckpt_path)} (train without --resume first)")
        try:
            meta = read_checkpoint_metadata(ckpt_path)
        except CheckpointError as exc:
            raise _fail(str(exc)) from None
        if meta["quantization"] is not None:
            raise _fail(f"{ckpt_path} is quantized (int{meta['quantization']['bits']}): inference only, "
                        f"it cannot be trained further")
        restored = restore_run_args(args, explicit, (meta["extra"] or {}).get("args"))
        if restored:
            tqdm.write(f"resume: from the checkpoint: {', '.join(f'{k}={getattr(args, k)}' for k in restored)}")
        check_args(args)
    elif os.path.exists(ckpt_path) and not args.force:
        try:
            step = f" (iteration {read_checkpoint_metadata(ckpt_path)['step']})"
        except CheckpointError:
            step = ""
        raise _fail(f"{os.path.abspath(ckpt_path)} already holds a checkpoint{step}: pass --resume to continue it "
                    f"or --force to start a new run over it")
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.max_iters  # fixed now and saved: a later --resume keeps this schedule
    if args.decay_lr and args.warmup_iters > args.lr_decay_iters:
        tqdm.write(f"note: --warmup-iters {args.warmup_iters} is longer than the decay ({args.lr_decay_iters} "
                   f"iterations); using --warmup-iters {args.lr_decay_iters}")
        args.warmup_iters = args.lr_decay_iters

    text = common.read_text(args.data, args.data_url, PROG)
    tg.manual_seed(args.seed)
    if args.init_from:
        config, model, tokenizer = _from_pretrained(args, explicit)
    else:
        tokenizer = make_tokenizer(args, text, meta)
    if isinstance(tokenizer, tokenizers.ByteLevelBPE) and (parallel is None or parallel.is_main):
        tokenizer.save(args.out_dir)  # vocab.json + merges.txt beside the checkpoint (GPT-2's format)
    splits = split_tokens(args, tokenizer, text)

    if meta is not None:
        try:
            config = model_config(ckpt_path)  # checked against the file's tensors before allocating
        except CheckpointError as exc:
            raise _fail(str(exc)) from None
        changed = [f"--{k.replace('_', '-')}" for k in MODEL_ARGS if k in explicit and getattr(config, k) != getattr(args, k)]
        if changed:
            tqdm.write(f"resume: model settings come from the checkpoint; ignoring {', '.join(changed)}")
        for k in MODEL_ARGS:
            setattr(args, k, getattr(config, k))
        model = tg.GPT(config)
    elif not args.init_from:
        config, model = _model_from_args(args, tokenizer.vocab_size)
    for name, (tokens, _) in splits.items():
        if len(tokens) < config.block_size + 1:
            raise _fail(f"the {name} split has {len(tokens)} tokens, too few for --block-size {config.block_size}")
    if device != "cpu":
        model.to(device)
    optimizer = model.configure_optimizers(args.weight_decay, args.lr, betas=(args.beta1, args.beta2))
    sampler = BatchSampler(splits["train"][0], args.batch_size * args.grad_accum, config.block_size, seed=args.seed)

    def to_device(a):
        return a if device == "cpu" else tg.Tensor(a, device=device)

    evaluate = Evaluator(splits, args.batch_size, config.block_size, args.seed, to_device, args.grad_accum)
    run = Run(args, device, text, tokenizer, splits, config, model, optimizer, sampler, evaluate, to_device, ckpt_path)
    if meta is not None:
        try:
            meta = load_checkpoint(ckpt_path, model, optimizer, sampler=sampler, restore_rng=True)
        except CheckpointError as exc:
            raise _fail(f"{exc} (did --batch-size, --grad-accum or --data change since it was written?)") from None
        run.start_iter, run.resumed = int(meta["step"]), True
        best = (meta["extra"] or {}).get("best_val_loss")
        run.best_val = float(best) if isinstance(best, (int, float)) and not isinstance(best, bool) else math.inf
        if run.start_iter >= args.max_iters:
            raise _fail(f"nothing to train: the checkpoint is at iteration {run.start_iter} and --max-iters is "
                        f"{args.max_iters}; pass a larger --max-iters to continue, or --eval-only to evaluate it")
        tqdm.write(f"resumed from {ckpt_path} at iteration {run.start_iter} (best val loss {run.best_val:.4f})")
    if parallel is not None:
        parallel.attach(run, _fail)
    return run


def _describe(run: Run) -> None:
    args, config, model = run.args, run.config, run.model
    train_ids, val_ids = run.splits["train"][0], run.splits["val"][0]
    n_tokens = len(train_ids) + len(val_ids)
    precision = f" | matmul {args.matmul_precision}" if run.device == "cuda" else ""
    tqdm.write(f"tinygpt {tg.__version__} | {run.device} | kernels: {kernels_label(run.device)}{precision}")
    if args.tokenizer == "char":
        tqdm.write(f"data: {n_tokens:,} characters, vocab {run.tokenizer.vocab_size}, "
                   f"train {len(train_ids):,} / val {len(val_ids):,}")
    else:
        tqdm.write(f"data: {len(run.text):,} characters -> {n_tokens:,} BPE tokens "
                   f"({len(run.text) / max(n_tokens, 1):.2f} characters/token), vocab {run.tokenizer.vocab_size}, "
                   f"train {len(train_ids):,} / val {len(val_ids):,} tokens")
    source = f" from {args.init_from}" if args.init_from else ""
    accum = f" ({args.grad_accum} micro-batches of {args.batch_size})" if args.grad_accum > 1 else ""
    tqdm.write(f"model{source}: {model.num_params() / 1e6:.2f}M parameters "
               f"({model.num_params(non_embedding=True) / 1e6:.2f}M without positions), {config.n_layer} layers, "
               f"{config.n_head} heads, {config.n_embd} channels, block {config.block_size}; "
               f"{args.batch_size * args.grad_accum * config.block_size} tokens per iteration{accum}")
    if run.parallel is not None:
        tqdm.write(run.parallel.describe())
    elif args.zero:
        tqdm.write("note: --zero 1 shards the optimiser over the ranks of mpiexec -n N; one process has nothing "
                   "to shard")


# ---------------------------------------------------------------------------- the loop
def train(run: Run) -> dict:
    """Train `run` to --max-iters (or until Ctrl-C), then evaluate, sample, summarise and plot."""
    args, model, config = run.args, run.model, run.config
    t_start = time.perf_counter()
    tokens_per_iter = args.batch_size * args.grad_accum * config.block_size
    metrics_path = os.path.join(args.out_dir, METRICS_NAME)
    log = MetricsLog(metrics_path, append=run.resumed) if run.main else _dist.NullLog()
    log.write({"type": "start", "iter": run.start_iter, "resumed": run.resumed, "time": time.time(),
               "tokens_per_iter": tokens_per_iter, "device": run.device, "init_from": args.init_from})
    step_times, losses, eval_log = [], {}, []
    params = model.parameters()
    last = None
    interrupted = timed_out = False
    bar = tqdm(total=args.max_iters, initial=min(run.start_iter, args.max_iters), disable=args.no_progress,
               unit="it", dynamic_ncols=True, desc="train")
    it = run.start_iter
    try:
        with StopRequest() as stop:
            if run.parallel is not None:
                stop = run.parallel.stop_flag(stop)  # every rank stops after the same step
            while True:
                if (it % args.eval_interval == 0 or it == args.max_iters) and not (run.resumed and it == run.start_iter):
                    t0 = time.perf_counter()
                    ev = run.evaluate(model, args.eval_iters)
                    eval_log.append({"iter": it, "train": ev["train"]["loss"], "val": ev["val"]["loss"]})
                    log.write(_eval_record(it, args.eval_iters, ev))
                    saved = ""
                    if ev["val"]["loss"] < run.best_val or args.always_save_checkpoint:
                        run.best_val = min(run.best_val, ev["val"]["loss"])
                        if it > 0 or args.always_save_checkpoint:
                            save_run(run, it)
                            saved = f" -> saved {run.ckpt_path}"
                    tqdm.write(f"step {it}: train loss {ev['train']['loss']:.4f}, val loss {ev['val']['loss']:.4f} "
                               f"(ppl {ev['val']['ppl']:.2f}, {ev['val']['bits_per_char']:.3f} bits/char) "
                               f"({time.perf_counter() - t0:.1f}s){saved}")
                if it >= args.max_iters:
                    break
                if args.time_limit is not None and time.perf_counter() - t_start > args.time_limit:
                    timed_out = True
                    tqdm.write(f"--time-limit {args.time_limit:g} s reached at iteration {it}")
                    break
                if stop.requested:
                    interrupted = True
                    break

                t0 = time.perf_counter()
                lr = lr_at(args, it)
                stats = train_step(model, run.optimizer, micro_batches(run.sampler, args.grad_accum), lr=lr,
                                   grad_clip=args.grad_clip, to_device=run.to_device, params=params,
                                   parallel=run.parallel)
                if run.parallel is not None:
                    stats = run.parallel.reduce_stats(stats)  # the global batch's loss
                dt = time.perf_counter() - t0
                last = stats["loss"]
                if not math.isfinite(last):
                    raise _fail(f"the loss became {last} at iteration {it}; lower --lr or keep --grad-clip on")
                step_times.append(dt)
                losses[it] = last
                rec = {"type": "train", "iter": it, "loss": last, "lr": lr, "ms_per_iter": dt * 1e3,
                       "tokens_per_s": tokens_per_iter / dt}
                if stats["moe_aux_loss"] is not None:
                    rec.update(moe_aux_loss=stats["moe_aux_loss"], moe_dropped_frac=stats["moe_dropped_frac"])
                log.write(rec)
                it += 1
                bar.update(1)
                if it % args.log_interval == 0 or it == args.max_iters:
                    recent = float(np.median(step_times[-args.log_interval:]))
                    moe = "" if stats["moe_aux_loss"] is None else \
                        f", moe aux {stats['moe_aux_loss']:.3f}, dropped {100 * stats['moe_dropped_frac']:.1f}%"
                    if args.no_progress:
                        tqdm.write(f"iter {it}: loss {last:.4f}, lr {lr:.2e}, {recent * 1e3:.1f} ms/iter, "
                                   f"{tokens_per_iter / recent:,.0f} tok/s{moe}")
                    else:
                        bar.set_postfix_str(f"loss {last:.4f}, {recent * 1e3:.1f} ms/it, "
                                            f"{tokens_per_iter / recent:,.0f} tok/s{moe}", refresh=False)
                if stop.requested:
                    interrupted = True
                    break
        bar.close()
        if interrupted:
            save_run(run, it, interrupted=True)
            log.write({"type": "interrupted", "iter": it, "checkpoint": run.ckpt_path})
            tqdm.write(f"interrupted at iteration {it}: saved {run.ckpt_path}; continue with --resume")
            final, final_eval_time, sample = None, None, ""
        else:
            t0 = time.perf_counter()
            final = run.evaluate(model, args.final_eval_iters)
            final_eval_time = time.perf_counter() - t0
            log.write(_eval_record(it, args.final_eval_iters, final, final=True))
            sample = generate_sample(run)
    finally:
        bar.close()
        log.close()
    plot = write_plot(metrics_path, os.path.join(args.out_dir, PLOT_NAME)) if args.plot and run.main else None
    return summarise(run, it, t_start, step_times, losses, eval_log, last, final, final_eval_time, sample,
                     interrupted, metrics_path, plot, timed_out)


def generate_sample(run: Run) -> str:
    args = run.args
    if args.sample_tokens <= 0 or not run.main:
        return ""
    start = start_token(run.tokenizer)
    out = run.model.generate(run.to_device(np.array([[start]], dtype=np.int64)), max_new_tokens=args.sample_tokens,
                             temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    return run.tokenizer.decode(np.asarray(out.numpy() if hasattr(out, "numpy") else out)[0, 1:])


def write_plot(metrics_path: str, png_path: str):
    """The loss-curve PNG, or None (with a note) when matplotlib is missing."""
    try:
        return plot_metrics(metrics_path, png_path)
    except RuntimeError as exc:
        if str(exc) != MATPLOTLIB_HINT:
            raise
        tqdm.write(f"note: no {PLOT_NAME}: {MATPLOTLIB_HINT}")
        return None
    except ValueError:  # no loss records yet
        return None


def summarise(run, it, t_start, step_times, losses, eval_log, last, final, final_eval_time, sample, interrupted,
              metrics_path, plot, timed_out=False) -> dict:
    args, model, config = run.args, run.model, run.config
    tokens_per_iter = args.batch_size * args.grad_accum * config.block_size
    median = float(np.median(step_times)) if step_times else None
    n_tokens = len(run.splits["train"][0]) + len(run.splits["val"][0])
    summary = {
        "iterations": it,
        "iterations_this_run": len(step_times),
        "start_iter": run.start_iter,
        "resumed": run.resumed,
        "interrupted": interrupted,
        "time_limited": timed_out,
        "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": sum(step_times),
        "median_ms_per_iter": median * 1e3 if median else None,
        "tokens_per_s": tokens_per_iter / median if median else None,
        "gflops_per_s": model.flops_per_token() * tokens_per_iter / median / 1e9 if median else None,
        "params": model.num_params(),
        "tokenizer": args.tokenizer,
        "vocab_size": run.tokenizer.vocab_size,
        "tokens": n_tokens,
        "best_val_loss": run.best_val if math.isfinite(run.best_val) else None,
        "final_train_loss": final["train"]["loss"] if final else None,
        "final_val_loss": final["val"]["loss"] if final else None,
        "final": final,
        "final_eval_iters": args.final_eval_iters,
        "final_eval_time_s": final_eval_time,
        "last_train_loss": last,
        "train_losses": {str(k): v for k, v in losses.items()},
        "evals": eval_log,
        "config": config.to_dict(),
        "args": dict(vars(args)),
        "device": run.device,
        "kernels": kernels_label(run.device),
        "checkpoint": run.ckpt_path if os.path.isfile(run.ckpt_path) else None,
        "metrics": metrics_path,
        "plot": plot,
        "sample": sample,
    }
    if run.main:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, SUMMARY_NAME), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, ensure_ascii=False, allow_nan=False)

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = ["", "=" * 64, "summary" + (" (interrupted)" if interrupted else ""),
             f"  iterations        {it} ({len(step_times)} in this run, from {run.start_iter})",
             f"  wall time         {summary['wall_time_s']:.1f} s (training steps {summary['train_time_s']:.1f} s)"]
    if median:
        lines.append(f"  median step       {median * 1e3:.1f} ms/iter, {summary['tokens_per_s']:,.0f} tokens/s, "
                     f"{summary['gflops_per_s']:.1f} GFLOP/s")
    lines += [f"  parameters        {summary['params']:,}",
              f"  best val loss     {num(summary['best_val_loss'], '.4f')} (periodic evaluations, "
              f"{args.eval_iters} batches)"]
    if final:
        for split in ("train", "val"):
            m = final[split]
            lines.append(f"  final {split:<5} loss  {m['loss']:.4f} ({args.final_eval_iters} batches; ppl "
                         f"{num(m['ppl'], '.2f')}, {m['bits_per_char']:.3f} bits/char)")
    lines += [f"  checkpoint        {summary['checkpoint']}", f"  metrics           {metrics_path}"
              + (f" (plot: {plot})" if plot else ""), "=" * 64]
    tqdm.write("\n".join(lines))
    if sample:
        tqdm.write(f"sample (temperature {args.temperature}, top_k {args.top_k}):\n{sample}\n" + "-" * 64)
    return summary


# ---------------------------------------------------------------------------- --eval-only
def eval_only(args, explicit: set, device: str, parallel=None) -> dict:
    """Evaluate OUT_DIR's checkpoint (or --init-from) on both splits: loss, perplexity, bits/char."""
    ckpt_path = os.path.join(args.out_dir, CKPT_NAME)
    if args.init_from:
        model, tokenizer = common.load_hf(args.init_from, PROG)
        crop_block_size(model, args.block_size)
        step, source = 0, args.init_from
    else:
        try:
            meta = read_checkpoint_metadata(ckpt_path)
            restore_run_args(args, explicit, (meta["extra"] or {}).get("args"))  # the run's data split and seed
            model, meta = load_model(ckpt_path)
            tokenizer = tokenizers.from_dict(meta["tokenizer"] or {})
        except CheckpointError as exc:
            raise _fail(f"--eval-only: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise _fail(f"--eval-only: the checkpoint's tokenizer cannot be read: {exc}") from None
        step, source = int(meta["step"]), ckpt_path
    if device != "cpu":
        model.to(device)
    text = common.read_text(args.data, args.data_url, PROG)
    splits = split_tokens(args, tokenizer, text)
    block = model.config.block_size
    for name, (tokens, _) in splits.items():
        if len(tokens) < block + 1:
            raise _fail(f"the {name} split has {len(tokens)} tokens, too few for the model's block size {block}")

    def to_device(a):
        return a if device == "cpu" else tg.Tensor(a, device=device)

    t0 = time.perf_counter()
    evaluator = Evaluator(splits, args.batch_size, block, args.seed, to_device, args.grad_accum)
    evaluator.parallel = parallel  # under mpiexec: the batches split across the ranks
    ev = evaluator(model, args.final_eval_iters)
    tqdm.write(f"{source} (iteration {step}), {args.final_eval_iters} batches of {args.batch_size} x {block} tokens "
               f"per split ({time.perf_counter() - t0:.1f} s):")
    for split in ("train", "val"):
        m = ev[split]
        ppl = "-" if m["ppl"] is None else f"{m['ppl']:.3f}"
        tqdm.write(f"  {split:<5} loss {m['loss']:.4f}  perplexity {ppl}  {m['bits_per_token']:.4f} bits/token  "
                   f"{m['bits_per_char']:.4f} bits/char")
    return {"eval_only": True, "source": source, "iter": step, "eval_iters": args.final_eval_iters, **ev}


def main(argv=None, prog: str | None = None) -> dict:
    """Train (or with --eval-only evaluate) and return the summary dict."""
    args = parse_args(argv, prog)
    explicit = explicit_dests(build_parser(prog), argv)
    check_args(args)
    device = common.check_device(args.device, PROG)
    args.matmul_precision = policy.training_matmul_precision(device, args.matmul_precision)
    with policy.matmul_precision(args.matmul_precision, device), _dist.session(args) as parallel:
        # parallel is None for one process (no launcher): nothing changes; the precision is restored at the end
        if args.eval_only:
            return eval_only(args, explicit, device, parallel)
        run = setup(args, explicit, device, parallel)
        _describe(run)
        return train(run)


def run(argv=None, prog: str | None = None) -> int:
    """main() for the command line: exit status 0, or 130 after Ctrl-C (the checkpoint saved)."""
    return common.run(main, argv, prog)
