"""Train a character-level (or BPE) GPT on Tiny Shakespeare: the README's main job.

    python examples/train_shakespeare.py                      # train, checkpoint, metrics log, plot, sample
    python examples/train_shakespeare.py --device cuda        # the GPU preset (CuPy + an NVIDIA GPU)
    python examples/train_shakespeare.py --resume             # continue from out_dir's checkpoint (Ctrl-C saves one)
    python examples/train_shakespeare.py --eval-only          # loss, perplexity and bits/char of the checkpoint
    python examples/sample.py --out-dir out-shakespeare-char  # sample from the checkpoint
    python examples/train_shakespeare.py --tokenizer bpe --vocab-size 1024 --out-dir out-shakespeare-bpe
    python examples/train_shakespeare.py --init-from ./gpt2 --out-dir out-gpt2-shakespeare   # fine-tune GPT-2

The program itself lives in the package (tinygpt/cli/train.py, where its options and rules are
documented), so `tinygpt train ...` and `python -m tinygpt train ...` run the same code with the
same flags. `--help` lists every option with its default.
"""
import sys

from tinygpt.cli.train import CUDA_PRESET, build_parser, main, parse_args, run  # noqa: F401 - the program and its parts

if __name__ == "__main__":
    sys.exit(run())
