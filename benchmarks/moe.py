"""Dense MLP vs mixture of experts on Tiny Shakespeare (char level): same data, seed, schedule.

    python benchmarks/moe.py --data data/tinyshakespeare.txt --iters 300

Each variant trains from the same seed on the same batches (AdamW, warmup + cosine, grad clip 1)
and reports: parameters (all, and active per token: the router plus k of E experts), median
ms/iter, the final validation loss on fixed batches (eval mode: plain cross-entropy), the mean
load-balancing loss and the fraction of expert assignments dropped by capacity at the end.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import tinygpt as tg
from tinygpt.data import BatchSampler, CharTokenizer, load_text, train_val_split
from tinygpt.nn import MoE
from tinygpt.nn.utils import clip_grad_norm_
from tinygpt.optim import cosine_with_warmup

VARIANTS = {
    "dense": {},
    "moe E=4 k=2 every 2nd layer": dict(n_expert=4, expert_top_k=2, moe_every=2),
    "moe E=8 k=1 every layer": dict(n_expert=8, expert_top_k=1, moe_every=1),
}


def active_params(model) -> int:
    n = model.num_params()
    for m in model.modules():
        if isinstance(m, MoE):
            expert = sum(p.size for p in (*m.c_fc.parameters(), *m.c_proj.parameters())) // m.n_expert
            n -= (m.n_expert - m.top_k) * expert
    return n


def run(name, extra, args, train_ids, val_ids, vocab):
    tg.manual_seed(args.seed)
    cfg = tg.GPTConfig(vocab_size=vocab, block_size=64, n_layer=4, n_head=4, n_embd=128, **extra)
    model = tg.GPT(cfg)
    opt = model.configure_optimizers(0.1, 1e-3, betas=(0.9, 0.99))
    sampler = BatchSampler(train_ids, 12, cfg.block_size, seed=args.seed)
    params, times = model.parameters(), []
    for it in range(args.iters):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = cosine_with_warmup(it, max_lr=1e-3, min_lr=1e-4, warmup_steps=50, decay_steps=args.iters)
        x, y = sampler.sample()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    aux = None if model.moe_aux_loss is None else model.moe_aux_loss.item()
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    dropped = (sum(m.stats["dropped"] for m in moes) / sum(12 * cfg.block_size * m.top_k for m in moes)
               if moes else None)
    model.eval()
    vs = BatchSampler(val_ids, 12, cfg.block_size, seed=4242)
    with tg.no_grad():
        val = float(np.mean([model(*vs.sample())[1].item() for _ in range(args.eval_batches)]))
    return (name, model.num_params(), active_params(model), 1e3 * float(np.median(times)), val, aux, dropped)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="text file (default: data/tinyshakespeare.txt or the packaged copy)")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--eval-batches", type=int, default=50)
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    text = load_text(args.data)
    tok = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(tok.encode(text), 0.1)
    print(f"4 layers, 4 heads, n_embd 128, block 64, batch 12, {args.iters} iterations, "
          f"val {args.eval_batches} batches; kernels: {'native' if tg.kernels.native_enabled() else 'reference'}")
    print("| variant | params | active params/token | ms/iter | val loss | aux loss (last step) | dropped |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, extra in VARIANTS.items():
        n, act, ms, val, aux, dropped = run(name, extra, args, train_ids, val_ids, tok.vocab_size)[1:]
        aux_s = "-" if aux is None else f"{aux:.3f}"
        drop_s = "-" if dropped is None else f"{100 * dropped:.1f}%"
        print(f"| {name} | {n:,} | {act:,} | {ms:.1f} | {val:.4f} | {aux_s} | {drop_s} |", flush=True)


if __name__ == "__main__":
    main()
