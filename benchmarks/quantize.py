"""Weight-only int8 quantization on a trained Tiny Shakespeare char model: memory and val perplexity.

Train a checkpoint first (examples/train_shakespeare.py), then:

    python examples/train_shakespeare.py --max-iters 500 --out-dir out-q --sample-tokens 0
    python benchmarks/quantize.py --out-dir out-q

Loads OUT_DIR/ckpt.safetensors, measures the mean validation loss (perplexity = exp(loss)) on
fixed batches (a seeded BatchSampler, the same windows for every variant), then quantizes a fresh
copy (int8 embeddings + head, float embeddings with an int8 head, and the same two with int4 in
groups of 32) and measures again.
Prints weight bytes (tinygpt.weight_memory), val loss, perplexity and the eval time.

--decode evaluates the same windows the way generation runs them: token by token through the KV cache,
--batch-size sequences at a time (at most 8 rows: every quantized product then takes the native
integer GEMV, whose activations are quantized to int8 per block of 32), and adds greedy agreement
with float32 on real text: over --new characters of the validation text (after a 16-character
prompt), fed one at a time, the share of steps where the quantized model's greedy choice (argmax)
is float32's. (A small char model's free-running greedy output soon loops on one word, which would
make a free-running comparison trivially equal.)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

import tinygpt as tg
from tinygpt.checkpoint import load_checkpoint, read_checkpoint_metadata
from tinygpt.data import BatchSampler, CharTokenizer, load_text, train_val_split


def val_loss(model, val_ids, block_size, batches, batch_size, seed):
    sampler = BatchSampler(val_ids, batch_size, block_size, seed=seed)
    model.eval()
    losses = []
    t0 = time.perf_counter()
    with tg.no_grad():
        for _ in range(batches):
            x, y = sampler.sample()
            losses.append(model(x, y)[1].item())
    return float(np.mean(losses)), time.perf_counter() - t0


def val_loss_decode(model, val_ids, block_size, batches, batch_size, seed):
    """Mean next-token loss of the same windows, fed one token at a time through the KV cache."""
    from tinygpt.models.generation import KVCache  # noqa: PLC0415

    sampler = BatchSampler(val_ids, batch_size, block_size, seed=seed)
    model.eval()
    losses = []
    t0 = time.perf_counter()
    with tg.no_grad():
        for _ in range(batches):
            x, y = sampler.sample()
            cache = KVCache.for_model(model, x.shape[0])
            for t in range(x.shape[1]):
                logits = model(x[:, t:t + 1], kv_cache=cache)[0].numpy()[:, 0].astype(np.float64)  # (B, vocab)
                m = logits.max(axis=1, keepdims=True)
                logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
                losses.append(-logp[np.arange(len(y)), y[:, t]].mean())
    return float(np.mean(losses)), time.perf_counter() - t0


def greedy_choices(model, ids, prompt_len):
    """The model's greedy (argmax) next token at every step of the real text `ids` after prompt_len tokens, fed
    one token at a time through the KV cache exactly as generation does (the window slides by re-prefill)."""
    from tinygpt.models.generation import KVCache, next_logits  # noqa: PLC0415

    cache, state = KVCache.for_model(model, 1), {"start": 0}
    return np.array([next_logits(model, ids[None, :n], cache, state)[0].argmax() for n in range(prompt_len, len(ids))])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="out-shakespeare-char", help="directory holding ckpt.safetensors")
    p.add_argument("--data", default=None, help="text file (default: data/tinyshakespeare.txt or the packaged copy)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as in train_shakespeare.py")
    p.add_argument("--batches", type=int, default=100, help="validation batches")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--seed", type=int, default=4242, help="seed of the validation batch sampler")
    p.add_argument("--decode", action="store_true",
                   help="token-by-token cached evaluation (the decode GEMV path; use --batch-size <= 8) and greedy agreement")
    p.add_argument("--new", type=int, default=400, help="--decode: greedy choices compared")
    args = p.parse_args(argv)

    path = os.path.join(args.out_dir, "ckpt.safetensors")
    meta = read_checkpoint_metadata(path)
    cfg = tg.GPTConfig.from_dict(meta["config"])
    tok = CharTokenizer.from_dict(meta["tokenizer"])
    _, val_ids = train_val_split(tok.encode(load_text(args.data)), args.val_fraction)

    def fresh():
        model = tg.GPT(cfg)
        load_checkpoint(path, model, restore_rng=False)
        return model

    evaluate = val_loss_decode if args.decode else val_loss
    if args.decode:
        text = np.asarray(val_ids[:16 + args.new], dtype=np.int64)
        ref_choice = greedy_choices(fresh().eval(), text, 16)
    rows = []
    for name, make in [("float32", fresh),
                       ("int8 (embeddings + tied head)", lambda: tg.quantize(fresh())),
                       ("int8 (float embeddings, int8 head copy)", lambda: tg.quantize(fresh(), embeddings=False)),
                       ("int4, groups of 32 (embeddings + tied head)", lambda: tg.quantize(fresh(), bits=4)),
                       ("int4, groups of 32 (float embeddings)",
                        lambda: tg.quantize(fresh(), bits=4, embeddings=False))]:
        model = make()
        mem = tg.weight_memory(model)
        loss, dt = evaluate(model, val_ids, cfg.block_size, args.batches, args.batch_size, args.seed)
        agree = float((greedy_choices(model.eval(), text, 16) == ref_choice).mean()) if args.decode else None
        rows.append((name, mem["total"], loss, math.exp(loss), dt, agree))

    base = rows[0]
    print(f"model: {cfg.n_layer} layers, {cfg.n_head} heads, n_embd {cfg.n_embd}, block {cfg.block_size}, "
          f"vocab {cfg.vocab_size}, step {meta['step']}; val: {args.batches} batches x {args.batch_size} "
          f"x {cfg.block_size} tokens (seed {args.seed})" + (", token by token through the KV cache" if args.decode else ""))
    extra = " greedy agreement with float32 |" if args.decode else ""
    print("| weights | bytes | vs float32 | val loss | val perplexity | ppl change | eval time (s) |" + extra)
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.decode else ""))
    for name, mem, loss, ppl, dt, agree in rows:
        cells = f" {agree:.3f} |" if agree is not None else ""
        print(f"| {name} | {mem:,} | {mem / base[1]:.3f}x | {loss:.4f} | {ppl:.4f} | "
              f"{100 * (ppl / base[3] - 1):+.2f}% | {dt:.2f} |" + cells)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
