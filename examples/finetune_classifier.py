"""Fine-tune a Tiny Shakespeare GPT to tell who is speaking (GPT-1 supervised fine-tuning), then classify new text.

    python examples/train_shakespeare.py --max-iters 2000 --out-dir out-shakespeare-char
    python examples/finetune_classifier.py --init-from out-shakespeare-char --out-dir out-ft   # + scratch baseline
    python examples/finetune_classifier.py --init-from out-shakespeare-char --lora 8           # + a LoRA run
    python examples/finetune_classifier.py --classifier out-ft --classify "Is this the way to Verona?"

The program lives in the package (tinygpt/cli/finetune.py, where the task is described):
`tinygpt finetune ...` is the same.
"""
import sys

from tinygpt.cli.finetune import build_parser, main, run  # noqa: F401 - the program and its parts

if __name__ == "__main__":
    sys.exit(run())
