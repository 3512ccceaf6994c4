"""tinygpt's command-line programs: `tinygpt <command> ...` (or `python -m tinygpt <command> ...`).

    train      train a GPT on a text (= python examples/train_shakespeare.py)
    sample     sample from a checkpoint (= python examples/sample.py)
    finetune   fine-tune a classifier, or label text with one (= python examples/finetune_classifier.py)
    plot       the loss curves of a training metrics log as a PNG
    quantize   write an int8 / int4 copy of a checkpoint for inference

Each command is a module here with build_parser(), main(argv) -> result (raises SystemExit on bad
input) and run(argv) -> exit status; the example scripts call the same functions.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {  # command -> (module, one line)
    "train": ("train", "train a GPT on a text (Tiny Shakespeare by default)"),
    "sample": ("sample", "sample from a checkpoint (float or quantized) or a Hugging Face GPT-2 directory"),
    "finetune": ("finetune", "fine-tune a speaker classifier (GPT-1 style), or label text with a saved one"),
    "plot": ("metrics", "plot a training metrics log (needs matplotlib: pip install 'tinygpt[plot]')"),
    "quantize": ("quantize", "write an int8 / int4 copy of a checkpoint for inference"),
}


def usage() -> str:
    lines = ["usage: tinygpt <command> [options]   (tinygpt <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    """The `tinygpt` console script: dispatch to a command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from .. import __version__  # noqa: PLC0415

        print(f"tinygpt {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tinygpt: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f".{COMMANDS[name][0]}", __name__)
    return module.run(rest, prog=f"tinygpt {name}")
