"""Generation speed on GPT-2 124M (random weights): tokens/s with and without the KV cache.

Each run is greedy decoding (temperature 0) of --new tokens after a --prompt token prompt,
batch --batch, timed end to end (prefill included): tinygpt's GPT.generate with use_cache
True/False, and a minimal PyTorch GPT-2 with the same weights (a hand-written KV cache and the
plain re-run of the context, both computing the LM head on the last position only, as tinygpt).

Napkin math (per new token, batch 1, T tokens of context, N = 85M non-embedding params):
with the cache ~2(N + vocab*C) = 0.25 GFLOP plus attention over T keys; without it the whole
context is re-run: ~2 N T + 2 vocab C = 0.17 T + 0.08 GFLOP, so the cache wins ~T/1.5 times.

The contenders alternate within a repetition (ABBA order, see common.interleaved); the table
shows the median time per run, its tokens/s (new tokens / time) and whether all contenders
produced the same tokens (random weights give near-tied logits, so a float32 rounding
difference can flip a token between frameworks; tinygpt cached vs uncached must agree).

    python benchmarks/generate.py                       # prompt 16, new 64 (all) and 256 (cached only), 1 thread
    python benchmarks/generate.py --new 64 --reps 5 --threads 2
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 - must run before numpy/torch load (thread environment)

THREADS = common.preparse_int(sys.argv[1:], "--threads", 1)
common.set_thread_env(THREADS)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import tinygpt as tg  # noqa: E402

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as TF
except ImportError:  # the benchmark still times tinygpt alone
    torch = None

GPT2 = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


# ============================================================================ PyTorch peer
if torch is not None:
    class TorchAttention(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.n_head = c.n_head
            self.c_attn = tnn.Linear(c.n_embd, 3 * c.n_embd)
            self.c_proj = tnn.Linear(c.n_embd, c.n_embd)

        def forward(self, x, cache=None):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            if cache is not None:  # (K, V, length): preallocated (B, nh, block, hs), filled in place
                K, V, L = cache
                K[:, :, L:L + T] = k
                V[:, :, L:L + T] = v
                k, v = K[:, :, :L + T], V[:, :, :L + T]
            if T == 1:  # one query sees every key
                y = TF.scaled_dot_product_attention(q, k, v)
            elif k.shape[2] == T:
                y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # a block of queries aligned to the end of the keys
                mask = torch.ones(T, k.shape[2], dtype=torch.bool).tril(k.shape[2] - T)
                y = TF.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class TorchBlock(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.ln_1 = tnn.LayerNorm(c.n_embd)
            self.attn = TorchAttention(c)
            self.ln_2 = tnn.LayerNorm(c.n_embd)
            self.c_fc = tnn.Linear(c.n_embd, 4 * c.n_embd)
            self.c_proj = tnn.Linear(4 * c.n_embd, c.n_embd)

        def forward(self, x, cache=None):
            x = x + self.attn(self.ln_1(x), cache)
            return x + self.c_proj(TF.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(tnn.Module):
        """GPT-2 (pre-norm, learned positions, tied head) with an optional KV cache."""

        def __init__(self, c):
            super().__init__()
            self.config = c
            self.wte = tnn.Embedding(c.vocab_size, c.n_embd)
            self.wpe = tnn.Embedding(c.block_size, c.n_embd)
            self.h = tnn.ModuleList(TorchBlock(c) for _ in range(c.n_layer))
            self.ln_f = tnn.LayerNorm(c.n_embd)

        def last_logits(self, idx, caches=None, start=0):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(start, start + T))
            for i, block in enumerate(self.h):
                x = block(x, None if caches is None else (*caches[i], start))
            return self.ln_f(x[:, -1]) @ self.wte.weight.T  # (B, C) @ (C, vocab)

        @torch.no_grad()
        def generate(self, idx, n, use_cache):
            c, B = self.config, idx.shape[0]
            hs = c.n_embd // c.n_head
            caches = [(torch.empty(B, c.n_head, c.block_size, hs), torch.empty(B, c.n_head, c.block_size, hs))
                      for _ in range(c.n_layer)] if use_cache else None
            out, length = idx, 0
            for _ in range(n):
                if use_cache:
                    feed = out[:, length:]
                    logits = self.last_logits(feed, caches, length)
                    length += feed.shape[1]
                else:
                    logits = self.last_logits(out[:, -c.block_size:])
                out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
            return out

    def torch_copy_of(model: tg.GPT) -> TorchGPT:
        tm = TorchGPT(model.config)
        src = {k: np.asarray(v) for k, v in model.state_dict().items()}
        names = {"transformer.wte.weight": "wte.weight", "transformer.wpe.weight": "wpe.weight",
                 "transformer.ln_f.weight": "ln_f.weight", "transformer.ln_f.bias": "ln_f.bias"}
        dst = dict(tm.named_parameters())
        with torch.no_grad():
            for name, arr in src.items():
                if name == "lm_head.weight":
                    continue  # tied to wte
                key = names.get(name) or name.replace("transformer.", "").replace("mlp.", "")
                dst.pop(key).copy_(torch.from_numpy(arr.copy()))
        if dst:
            raise RuntimeError(f"torch parameters not filled: {sorted(dst)}")
        return tm


# ============================================================================ timing
def run(args) -> dict:
    tg.manual_seed(args.seed)
    model = tg.GPT(tg.GPTConfig(**GPT2)).eval()
    prompt = np.random.default_rng(args.seed).integers(0, GPT2["vocab_size"], size=(args.batch, args.prompt))
    tm = torch_copy_of(model).eval() if torch is not None and not args.no_torch else None
    if tm is not None:
        torch.set_num_threads(THREADS)
    results = []
    for n in args.new:
        outs = {}

        def tiny(use_cache, n=n):
            def go():
                outs[f"tinygpt {'cached' if use_cache else 'uncached'}"] = model.generate(
                    prompt, n, temperature=0, use_cache=use_cache)
            return go

        def torch_run(use_cache, n=n):
            def go():
                outs[f"torch {'cached' if use_cache else 'uncached'}"] = tm.generate(
                    torch.from_numpy(prompt), n, use_cache).numpy()
            return go

        uncached = n <= args.uncached_max
        contenders = {"tinygpt cached": tiny(True)}
        if uncached:
            contenders["tinygpt uncached"] = tiny(False)
        if tm is not None:
            contenders["torch cached"] = torch_run(True)
            if uncached:
                contenders["torch uncached"] = torch_run(False)
        # warm up each contender on a short run (allocations, BLAS pools), then interleave full runs
        model.generate(prompt, 2, temperature=0)
        model.generate(prompt, 2, temperature=0, use_cache=False)
        if tm is not None:
            tm.generate(torch.from_numpy(prompt), 2, True)
            tm.generate(torch.from_numpy(prompt), 2, False)
        reps = args.reps if n <= args.long else args.reps_long
        print(f"[new {n}] timing {reps} interleaved repetition(s) of {len(contenders)} contenders ...", flush=True)
        t0 = time.perf_counter()
        times = common.interleaved(contenders, reps, 0)
        ref = outs["tinygpt cached"]
        same = {k: bool(np.array_equal(v, ref)) for k, v in outs.items()}
        for label, ts in times.items():
            s = common.stats(ts)
            s.update(label=label, new=n, tokens_per_s=args.batch * n / (s["median_ms"] / 1e3),
                     same_tokens=same[label])
            results.append(s)
        print(f"[new {n}] {time.perf_counter() - t0:.0f} s; same tokens as tinygpt cached: {same}", flush=True)
        if not same.get("tinygpt uncached", True):
            raise RuntimeError("tinygpt cached and uncached generation differ")
    return {"config": GPT2, "params": model.num_params(), "prompt": args.prompt, "batch": args.batch,
            "results": results}


def print_table(res: dict) -> None:
    rows = []
    by_new = {}
    for s in res["results"]:
        by_new.setdefault(s["new"], {})[s["label"]] = s
    for n, group in by_new.items():
        for label, s in group.items():
            base = group.get(label[:-len("cached")] + "uncached") if label.endswith(" cached") else None
            speedup = f"{base['median_ms'] / s['median_ms']:.1f}x" if base is not None else "-"
            rows.append([f"{res['prompt']} + {n}", label, f"{s['median_ms'] / 1e3:.2f}",
                         f"{s['q1_ms'] / 1e3:.2f}-{s['q3_ms'] / 1e3:.2f}", f"{s['tokens_per_s']:.1f}",
                         f"{s['median_ms'] / n:.1f}", speedup, "yes" if s["same_tokens"] else "no", s["n"]])
    print()
    print(common.table(["prompt + new", "contender", "median s/run", "IQR range s", "tokens/s", "ms/token",
                        "cache speedup", "same tokens", "n"], rows,
                       align=["<", "<", ">", ">", ">", ">", ">", ">", ">"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--new", type=int, nargs="+", default=[64, 256], help="new tokens per run (several: one table row each)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median) for runs up to --long new tokens")
    ap.add_argument("--long", type=int, default=64, help="runs with more new tokens use --reps-long repetitions")
    ap.add_argument("--reps-long", type=int, default=1)
    ap.add_argument("--uncached-max", type=int, default=64,
                    help="time the uncached contenders only for runs of at most this many new tokens (they are slow)")
    ap.add_argument("--threads", type=int, default=1, help="threads for numpy/BLAS and torch (set before import)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.prompt + max(args.new) > GPT2["block_size"]:
        ap.error(f"prompt + new must fit GPT-2's context ({GPT2['block_size']})")
    info = common.machine_info(THREADS)
    common.print_machine(info)
    print(f"kernels     {'native' if tg.kernels.native_enabled() else 'reference (NumPy)'}; "
          f"model GPT-2 124M {GPT2} (random init), greedy, batch {args.batch}, prompt {args.prompt}")
    res = run(args)
    print_table(res)
    print(f"load avg after: {common.load_average()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, **res}, f, indent=1)
    return res


if __name__ == "__main__":
    main()
