"""What the command-line programs share: help formatting, errors, devices, data, Ctrl-C, exit codes."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import numpy as np
from tqdm import tqdm

import tinygpt as tg

from .. import backend, tokenizers
from ..data import load_text

_UNSET = object()
EXIT_INTERRUPTED = 130  # the shell's code for a program stopped by SIGINT


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its real default.

    argparse's '(default: X)' is added unless the help already says what the default is; a
    store_true flag says '(default: off)'; an option whose default is None must explain its
    default in its own help text (tests/test_examples.py checks every option of every program).
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        if action.default is None:
            return text
        return text + " (default: %(default)s)"


def fail(prog: str, msg: str) -> SystemExit:
    """The SystemExit a program raises for bad input: '<prog>: error: <msg>' on stderr, status 1."""
    return SystemExit(f"{prog}: error: {msg}")


def explicit_dests(parser: argparse.ArgumentParser, argv) -> set:
    """The destinations of the options given on the command line (not left at their defaults)."""
    ns = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != "help"})
    ns = parser.parse_args(argv, namespace=ns)
    return {k for k, v in vars(ns).items() if v is not _UNSET}


def check_device(device: str, prog: str) -> str:
    """'cpu', or 'cuda' when a GPU is really there; otherwise a clear SystemExit."""
    if device == "cuda":
        try:
            backend.cupy()  # raises, saying what is missing, when there is no usable GPU
        except RuntimeError as exc:
            raise fail(prog, f"--device cuda: the GPU path is not available here ({exc}); use --device cpu") from None
    return device


def kernels_label(device: str) -> str:
    """Which kernels run: native CPU ones, CUDA ones (the reference on CuPy for the rest), or the reference."""
    if device == "cuda":
        ops = tg.kernels.cuda_ops() if tg.kernels.cuda_enabled() else []
        if not ops:
            return "reference on CuPy"
        kc = tg.kernels.policy
        gemm = kc.get_matmul_backend()
        chosen = list(kc.matmul_choices().values())
        if gemm == "auto" and chosen:  # which GEMM the measured dispatch picked for the layers' shapes
            gemm = f"ours for {sum(c.ours for c in chosen)} of {len(chosen)} measured shape classes, cuBLAS for the rest"
        elif gemm == "auto":  # before the first step
            gemm = "auto, measured per layer shape at first use"
        return f"CUDA ({', '.join(ops)}; GEMM: {gemm}) + reference on CuPy"
    return "native" if tg.kernels.native_enabled() else "reference"


def read_text(path, url, prog: str) -> str:
    """--data (or the default text) with clear errors for a missing file or a failed download."""
    where = os.path.abspath(path) if path else "the packaged Tiny Shakespeare"
    try:
        text = load_text(path, url=url)
    except RuntimeError as exc:  # the download failed; the message names the URL and where to save it
        raise fail(prog, f"no training text: {exc} (or pass --data PATH)") from None
    except FileNotFoundError:
        raise fail(prog, f"no training text at {where}: put a UTF-8 text file there or pass --data PATH") from None
    except UnicodeDecodeError as exc:
        raise fail(prog, f"{where} is not UTF-8 text ({exc})") from None
    if not text:
        raise fail(prog, f"{where} is empty")
    return text


def encode(tokenizer, text: str) -> np.ndarray:
    """Token ids; special tokens in the text (e.g. <|endoftext|> between documents) become their id."""
    if isinstance(tokenizer, tokenizers.ByteLevelBPE):
        return tokenizer.encode(text, allowed_special="all")
    return tokenizer.encode(text)


def is_hf_dir(path) -> bool:
    """A Hugging Face GPT-2 directory (config.json beside the weights), not a tinygpt checkpoint."""
    return path is not None and os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def load_hf(path, prog: str, **overrides):
    """(GPT, ByteLevelBPE) from a Hugging Face GPT-2 directory: GPT.from_pretrained and the
    tokenizer's vocab.json + merges.txt from the same directory."""
    from ..checkpoint import CheckpointError  # noqa: PLC0415

    try:
        model = tg.GPT.from_pretrained(path, **overrides)
    except (CheckpointError, ValueError, TypeError) as exc:
        raise fail(prog, f"--init-from {path}: {exc}") from None
    try:
        tokenizer = tokenizers.ByteLevelBPE.load(path)
    except (OSError, ValueError) as exc:
        raise fail(prog, f"--init-from {path}: no usable GPT-2 tokenizer (vocab.json + merges.txt) there: {exc}") from None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise fail(prog, f"--init-from {path}: the tokenizer has {tokenizer.vocab_size} tokens, the model's "
                         f"vocabulary only {model.config.vocab_size}")
    return model, tokenizer


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) into a request that the loop checks between steps.

    Inside ``with StopRequest() as stop:`` the first SIGINT sets ``stop.requested`` (the current
    step finishes, then the program saves and exits); a second one raises KeyboardInterrupt at
    once. Outside the main thread (where Python cannot install handlers) it does nothing and
    Ctrl-C raises KeyboardInterrupt as usual.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("interrupt: stopping after this step and saving a checkpoint (Ctrl-C again to abort at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False


def run(main, argv=None, prog: str | None = None) -> int:
    """A program's exit status: 0, EXIT_INTERRUPTED (130) after Ctrl-C, or the SystemExit's for bad input."""
    try:
        result = main(argv, prog=prog) if prog else main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if isinstance(result, dict) and result.get("interrupted") else 0
