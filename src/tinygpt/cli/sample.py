"""Sample text from a checkpoint written by training (float or quantized), or from a Hugging Face GPT-2 directory.

    tinygpt sample --out-dir out-shakespeare-char --prompt "ROMEO:" --num-samples 3
    tinygpt sample --quantize 8 --stream                      # int8 weights, quantized on load
    tinygpt sample --init-from ./gpt2 --prompt "Hello, I'm a language model," --top-k 40

The model config and the tokenizer come from the checkpoint's metadata (or the directory), so
nothing about the model has to be repeated here. A quantized checkpoint (`tinygpt quantize`)
is loaded as it is stored, without building the float model.
"""
from __future__ import annotations

import argparse
import codecs
import os

import numpy as np

from .. import tokenizers
from ..checkpoint import CheckpointError, load_model
from . import common
from .common import HelpFormatter

PROG = "tinygpt sample"
CKPT_NAME = "ckpt.safetensors"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Sample from a tinygpt checkpoint.", formatter_class=HelpFormatter)
    p.add_argument("--out-dir", default="out-shakespeare-char", help=f"directory holding {CKPT_NAME}")
    p.add_argument("--ckpt", default=None, help="checkpoint file (default: OUT_DIR/ckpt.safetensors)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="sample from a Hugging Face GPT-2 directory instead (default: none)")
    p.add_argument("--prompt", default="\n",
                   help="text to continue (char tokenizer: every character must be in the vocabulary)")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this file instead (default: --prompt)")
    p.add_argument("--num-samples", type=int, default=3, help="continuations of the prompt")
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=200, help="keep the k most likely tokens (0: no limit)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: keep the smallest set with mass p (default: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens (1: off)")
    p.add_argument("--quantize", type=int, choices=(8, 4), default=None,
                   help="quantize a float model's weights on load: 8 (int8 per channel) or 4 (int4 in groups) "
                        "(default: off; a quantized checkpoint is used as it is)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (default: 32)")
    p.add_argument("--no-cache", action="store_true", help="re-run the whole context per token (no KV cache)")
    p.add_argument("--stream", action="store_true", help="print the first sample as it is generated")
    p.add_argument("--seed", type=int, default=1337, help="the sampling RNG's seed")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    p.add_argument("--quiet", action="store_true", help="do not print the samples")
    return p


def _fail(msg: str) -> SystemExit:
    return common.fail(PROG, msg)


def load(args):
    """(model in eval mode, tokenizer) as the arguments say."""
    if args.init_from:
        model, tokenizer = common.load_hf(args.init_from, PROG)
        if args.quantize:
            from ..quantize import quantize  # noqa: PLC0415

            quantize(model, bits=args.quantize, group_size=args.group_size if args.quantize == 4 else None)
        return model.eval(), tokenizer
    path = args.ckpt or os.path.join(args.out_dir, CKPT_NAME)
    try:
        model, meta = load_model(path, quantize=args.quantize, group_size=args.group_size)
    except CheckpointError as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:  # e.g. --group-size not dividing the model's width
        raise _fail(f"--quantize {args.quantize}: {exc}") from None
    if meta["tokenizer"] is None:
        raise _fail(f"{path} has no tokenizer in its metadata")
    try:
        tokenizer = tokenizers.from_dict(meta["tokenizer"])  # CharTokenizer or ByteLevelBPE
    except (ValueError, TypeError) as exc:
        raise _fail(f"{path}: the tokenizer in its metadata cannot be read: {exc}") from None
    return model, tokenizer


def main(argv=None, prog: str | None = None) -> list[str]:
    """Print and return `num_samples` continuations of the prompt (the prompt included)."""
    args = build_parser(prog).parse_args(argv)
    common.check_device(args.device, PROG)
    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise _fail("--num-samples must be >= 1 and --max-new-tokens >= 0")
    if args.group_size is not None and args.quantize != 4:
        raise _fail("--group-size is for --quantize 4")
    model, tokenizer = load(args)
    if args.device != "cpu":
        model.to(args.device)

    prompt = args.prompt
    if args.prompt_file is not None:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompt = f.read()
    if not prompt:
        raise _fail("the prompt is empty (give at least one character, e.g. --prompt $'\\n')")
    try:
        ids = common.encode(tokenizer, prompt)  # BPE: '<|endoftext|>' in a prompt is that token
    except ValueError as exc:
        vocab = f"; the vocabulary is {tokenizer.chars!r}" if isinstance(tokenizer, tokenizers.CharTokenizer) else ""
        raise _fail(f"{exc}{vocab}") from None

    context = np.tile(ids[None, :], (args.num_samples, 1))  # (num_samples, T)
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                use_cache=not args.no_cache)
    show = not args.quiet
    try:
        if args.stream:  # the first sample printed live, token by token; then the others
            steps = []
            if show:
                print(prompt, end="", flush=True)
            piece = _streamer(tokenizer)
            for tok in model.stream(context, **opts):
                steps.append(tok)
                if show:
                    print(piece(int(tok[0])), end="", flush=True)
            if show:
                print(piece(None) + "\n" + "-" * 64)
            out = np.concatenate([context] + [t[:, None] for t in steps], axis=1)
        else:
            out = model.generate(context, **opts)
    except (ValueError, FloatingPointError) as exc:  # bad options; NaN/inf logits (a diverged model)
        raise _fail(str(exc)) from None
    texts = [tokenizer.decode(row) for row in np.asarray(out)]
    if show:
        for text in texts[1:] if args.stream else texts:  # a streamed sample is not printed twice
            print(text)
            print("-" * 64)
    return texts


def _streamer(tokenizer):
    """piece(token id) -> the text it adds to the first sample; piece(None) -> what is left at the end.
    A BPE token can end inside a character's UTF-8 bytes: an incremental decoder holds such bytes back
    until the character is complete (invalid bytes become U+FFFD, as decode's errors='replace')."""
    if not isinstance(tokenizer, tokenizers.ByteLevelBPE):
        return lambda i: "" if i is None else tokenizer.decode(np.array([i]))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return lambda i: decoder.decode(b"", final=True) if i is None else decoder.decode(tokenizer.token_bytes(i))


def run(argv=None, prog: str | None = None) -> int:
    return common.run(main, argv, prog)
