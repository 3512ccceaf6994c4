"""Sample text from a checkpoint written by train_shakespeare.py (float or quantized).

    python examples/sample.py --out-dir out-shakespeare-char --prompt "ROMEO:" --num-samples 3
    python examples/sample.py --stream --quantize 8           # int8 weights, quantized on load

The program lives in the package (tinygpt/cli/sample.py): `tinygpt sample ...` is the same.
"""
import sys

from tinygpt.cli.sample import build_parser, main, run  # noqa: F401 - the program and its parts

if __name__ == "__main__":
    sys.exit(run())
