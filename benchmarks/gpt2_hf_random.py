"""A GPT-2 124M Hugging Face checkpoint with random weights, for benchmarks/llama_cpp.sh (llama.cpp's
converter reads a Hugging Face directory). Decode speed does not depend on the weights' values.

    python benchmarks/gpt2_hf_random.py OUT_DIR --vocab-dir DIR

Writes OUT_DIR/config.json (with "n_ctx", which llama.cpp's converter requires and recent transformers
no longer writes), model.safetensors (transformers' GPT2LMHeadModel(GPT2Config()), seed 0), and copies
GPT-2's vocab.json and merges.txt from --vocab-dir (the converter builds the GGUF tokenizer from them).
Needs transformers and torch (test and benchmark dependencies only; tinygpt itself never imports them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--vocab-dir", required=True, help="a directory with GPT-2's vocab.json and merges.txt")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    missing = [f for f in ("vocab.json", "merges.txt") if not os.path.isfile(os.path.join(args.vocab_dir, f))]
    if missing:
        print(f"error: {args.vocab_dir} has no {', '.join(missing)}", file=sys.stderr)
        return 2
    # this directory is sys.path[0], and its kernels.py would shadow the `kernels` package transformers imports
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != here]
    import torch  # noqa: PLC0415
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: PLC0415

    torch.manual_seed(args.seed)
    config = GPT2Config()  # GPT-2 124M: 12 layers, 12 heads, 768 wide, 1024 positions, 50257 tokens
    model = GPT2LMHeadModel(config).eval()
    os.makedirs(args.out_dir, exist_ok=True)
    model.save_pretrained(args.out_dir, safe_serialization=True)
    path = os.path.join(args.out_dir, "config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.setdefault("n_ctx", config.n_positions)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(args.vocab_dir, name), os.path.join(args.out_dir, name))
    print(f"wrote {args.out_dir}: config.json, model.safetensors, vocab.json, merges.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
