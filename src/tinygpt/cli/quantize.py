"""Write a quantized copy of a training checkpoint: int8 per output channel or int4 in groups, for inference.

    tinygpt quantize out-shakespeare-char --bits 8 --out out-shakespeare-char/ckpt-int8.safetensors
    tinygpt sample --ckpt out-shakespeare-char/ckpt-int8.safetensors

The file holds the int8 (or packed int4) tables and their float32 scales, recorded as quantized
(bits, group size) in its metadata, with the config and tokenizer: sample, --eval-only and
tinygpt.checkpoint.load_model build the quantized model from it directly.
"""
from __future__ import annotations

import argparse
import os

from tqdm import tqdm

from ..checkpoint import CheckpointError, load_model, save_checkpoint
from ..quantize import weight_memory
from . import common
from .common import HelpFormatter

PROG = "tinygpt quantize"
CKPT_NAME = "ckpt.safetensors"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Quantize a training checkpoint's weights for inference.",
                                formatter_class=HelpFormatter)
    p.add_argument("ckpt", help=f"a float checkpoint, or the --out-dir holding {CKPT_NAME}")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8,
                   help="8: int8, one scale per output channel; 4: int4 packed two per byte, a scale per group")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (default: 32)")
    p.add_argument("--no-embeddings", action="store_true",
                   help="keep the embeddings float (a tied head then gets its own int8 copy)")
    p.add_argument("--out", default=None,
                   help="the quantized checkpoint to write (default: ckpt-int8.safetensors / ckpt-int4.safetensors "
                        "beside the input)")
    return p


def main(argv=None, prog: str | None = None) -> dict:
    args = build_parser(prog).parse_args(argv)
    path = os.path.join(args.ckpt, CKPT_NAME) if os.path.isdir(args.ckpt) else args.ckpt
    if args.group_size is not None and args.bits != 4:
        raise common.fail(PROG, "--group-size is for --bits 4")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(path)), f"ckpt-int{args.bits}.safetensors")
    try:
        model, meta = load_model(path)
        if meta["quantization"] is not None:
            raise common.fail(PROG, f"{path} is already quantized (int{meta['quantization']['bits']})")
        before = weight_memory(model)["total"]
        from ..quantize import quantize  # noqa: PLC0415

        quantize(model, bits=args.bits, embeddings=not args.no_embeddings,
                 group_size=args.group_size if args.bits == 4 else None)
        save_checkpoint(out, model, step=meta["step"], config=meta["config"], tokenizer=meta["tokenizer"],
                        extra={"quantized_from": os.path.abspath(path)})
    except CheckpointError as exc:
        raise common.fail(PROG, str(exc)) from None
    except ValueError as exc:  # e.g. a group size that does not divide the width
        raise common.fail(PROG, str(exc)) from None
    after = weight_memory(model)["total"]
    tqdm.write(f"wrote {out}: int{args.bits} weights, {after / 2**20:.2f} MiB ({after / before:.2f}x the float "
               f"{before / 2**20:.2f} MiB)")
    return {"path": out, "bytes_before": before, "bytes_after": after}


def run(argv=None, prog: str | None = None) -> int:
    return common.run(main, argv, prog)
