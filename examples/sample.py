"""Sample text from a checkpoint written by train_shakespeare.py.

    python examples/sample.py --out-dir out-shakespeare-char --prompt "ROMEO:" --num-samples 3

The model config and the tokenizer come from the checkpoint's metadata, so nothing about
the model has to be repeated here.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import tinygpt as tg
from tinygpt import backend, tokenizers
from tinygpt.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_metadata


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Sample from a tinygpt checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out-dir", default="out-shakespeare-char", help="directory holding ckpt.safetensors")
    p.add_argument("--ckpt", default=None, help="checkpoint file (overrides --out-dir)")
    p.add_argument("--prompt", default="\n", help="text to continue (char tokenizer: every character must be in the vocabulary)")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this file instead")
    p.add_argument("--num-samples", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=200, help="keep the k most likely tokens (0: no limit)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set with mass p")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens (1: off)")
    p.add_argument("--no-cache", action="store_true", help="re-run the whole context per token (no KV cache)")
    p.add_argument("--stream", action="store_true", help="print the first sample as it is generated")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quiet", action="store_true", help="do not print the samples")
    return p


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"sample: error: {msg}")


def main(argv=None) -> list[str]:
    """Print and return `num_samples` continuations of the prompt (the prompt included)."""
    args = build_parser().parse_args(argv)
    if args.device == "cuda":
        try:
            backend.cupy()  # raises, saying what is missing, when there is no usable GPU
        except RuntimeError as exc:
            raise _fail(f"--device cuda: the GPU path is not available here ({exc}); use --device cpu") from None
    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise _fail("--num-samples must be >= 1 and --max-new-tokens >= 0")
    path = args.ckpt or os.path.join(args.out_dir, "ckpt.safetensors")
    try:
        meta = read_checkpoint_metadata(path)
        if meta["config"] is None or meta["tokenizer"] is None:
            raise _fail(f"{path} has no model config or tokenizer in its metadata")
        config = tg.GPTConfig.from_dict(meta["config"])
        try:
            tokenizer = tokenizers.from_dict(meta["tokenizer"])  # CharTokenizer or ByteLevelBPE
        except ValueError as exc:
            raise _fail(f"{path}: the tokenizer in its metadata cannot be read: {exc}") from None
        model = tg.GPT(config)
        load_checkpoint(path, model, restore_rng=False)
    except CheckpointError as exc:
        raise _fail(str(exc)) from None
    if args.device != "cpu":
        model.to(args.device)
    model.eval()

    prompt = args.prompt
    if args.prompt_file is not None:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompt = f.read()
    if not prompt:
        raise _fail("the prompt is empty (give at least one character, e.g. --prompt $'\\n')")
    try:
        if isinstance(tokenizer, tokenizers.ByteLevelBPE):
            ids = tokenizer.encode(prompt, allowed_special="all")  # '<|endoftext|>' in a prompt is that token
        else:
            ids = tokenizer.encode(prompt)
    except ValueError as exc:
        vocab = f"; the vocabulary is {tokenizer.chars!r}" if isinstance(tokenizer, tokenizers.CharTokenizer) else ""
        raise _fail(f"{exc}{vocab}") from None

    context = np.tile(ids[None, :], (args.num_samples, 1))  # (num_samples, T)
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                use_cache=not args.no_cache)
    try:
        if args.stream:  # tokens as they come (the first sample printed live), then the same result as generate
            steps = []
            if not args.quiet:
                print(prompt, end="", flush=True)
            for tok in model.stream(context, **opts):
                steps.append(tok)
                if not args.quiet:
                    print(tokenizer.decode(tok[:1]), end="", flush=True)
            if not args.quiet:
                print("\n" + "=" * 64)
            out = np.concatenate([context] + [t[:, None] for t in steps], axis=1)
        else:
            out = model.generate(context, **opts)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    texts = [tokenizer.decode(row) for row in np.asarray(out)]
    if not args.quiet:
        for text in texts:
            print(text)
            print("-" * 64)
    return texts


if __name__ == "__main__":
    main()
