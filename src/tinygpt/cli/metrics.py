"""The training metrics log (JSON lines) and its loss-curve plot.

Training appends one JSON object per line to OUT_DIR/metrics.jsonl, flushed as it goes (so a
run stopped by Ctrl-C or killed keeps everything up to its last step):

    {"type": "start", "iter": 0, "resumed": false, "time": ..., "tokens_per_iter": 768, ...}
    {"type": "train", "iter": 0, "loss": 4.19, "lr": 1e-05, "ms_per_iter": 21.3, "tokens_per_s": 36050.2}
        (MoE models add "moe_aux_loss" and "moe_dropped_frac"; "loss" is the cross-entropy)
    {"type": "eval", "iter": 250, "eval_iters": 20, "train_loss": ..., "train_ppl": ...,
     "train_bits_per_token": ..., "train_bits_per_char": ..., "val_loss": ..., ...}
        (the final evaluation has "final": true)
    {"type": "interrupted", "iter": 137, "checkpoint": "out/ckpt.safetensors"}

"iter" of a train record is the step's index (the number of updates before it); "iter" of an
eval record is the number of updates done. A resumed run appends; a record for an iteration
that was logged before (the steps after the checkpoint a run resumed from) replaces the old one
when the log is read.

    tinygpt plot OUT_DIR/metrics.jsonl [-o loss.png]      # or python -m tinygpt plot ...
"""
from __future__ import annotations

import argparse
import json
import math
import os

from .common import HelpFormatter, fail, run as _run

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"
PROG = "tinygpt plot"
MATPLOTLIB_HINT = "the loss curve needs matplotlib: pip install 'tinygpt[plot]' (or pip install matplotlib)"


def split_metrics(loss: float, chars_per_token: float) -> dict:
    """loss (nats per token) -> perplexity, bits per token and bits per character.

    bits per character = bits per token x tokens per character (1 for the char tokenizer)."""
    bits = loss / math.log(2.0)
    return {"loss": loss, "ppl": math.exp(loss) if loss < 700 else None, "bits_per_token": bits,
            "bits_per_char": bits / chars_per_token}


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf: a missing number is null
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class MetricsLog:
    """Appends JSON records to a file, one per line, flushed after each (append=False starts afresh)."""

    def __init__(self, path, append: bool):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._f = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(_finite(record), allow_nan=False, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_metrics(path) -> list:
    """The records of a metrics log; a last line cut short (a killed writer) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if n == len(lines) or (n == len(lines) - 1 and not lines[-1]):
                continue  # the partial last line of a killed run
            raise ValueError(f"{path}: line {n} is not a JSON record") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {n} is not a JSON object")
        records.append(rec)
    return records


def curves(records) -> dict:
    """{'train': {iter: loss}, 'train_eval': {iter: loss}, 'val': {iter: loss}}, later records winning
    (a resumed run redoes the steps after its checkpoint)."""
    out = {"train": {}, "train_eval": {}, "val": {}}
    for rec in records:
        it = rec.get("iter")
        if not isinstance(it, int):
            continue
        if rec.get("type") == "train" and isinstance(rec.get("loss"), (int, float)):
            out["train"][it] = float(rec["loss"])
        elif rec.get("type") == "eval":
            for split, key in (("train_eval", "train_loss"), ("val", "val_loss")):
                if isinstance(rec.get(key), (int, float)):
                    out[split][it] = float(rec[key])
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def plot_metrics(log_path, png_path, title: str | None = None) -> str:
    """Write the loss curves of a metrics log as a PNG: the training loss of every step and the
    evaluated train / val losses against iterations. Needs matplotlib (RuntimeError saying how to
    install it otherwise). Returns png_path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - optional dependency
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise RuntimeError(MATPLOTLIB_HINT) from None
    c = curves(read_metrics(log_path))
    if not any(c.values()):
        raise ValueError(f"{log_path} holds no loss records")
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas: no pyplot, no GUI, no global state
    ax = fig.add_subplot()
    if c["train"]:
        ax.plot(list(c["train"]), list(c["train"].values()), lw=0.8, alpha=0.5, color="C0", label="train (per step)")
    if c["train_eval"]:
        ax.plot(list(c["train_eval"]), list(c["train_eval"].values()), "o-", ms=3, color="C0", label="train (eval)")
    if c["val"]:
        ax.plot(list(c["val"]), list(c["val"].values()), "o-", ms=3, color="C1", label="val (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    ax.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(log_path))) or log_path)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = os.fspath(png_path)
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    fig.savefig(png_path)
    return png_path


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Plot the loss curves of a training metrics log as a PNG "
                                                       "(needs matplotlib: pip install 'tinygpt[plot]').",
                                formatter_class=HelpFormatter)
    p.add_argument("log", help=f"a {METRICS_NAME} written by training, or the directory holding it")
    p.add_argument("-o", "--output", default=None,
                   help=f"the PNG to write (default: {PLOT_NAME} beside the log)")
    p.add_argument("--title", default=None, help="plot title (default: the log's directory name)")
    return p


def main(argv=None, prog: str | None = None) -> str:
    """Write the plot; returns its path."""
    args = build_parser(prog).parse_args(argv)
    log = os.path.join(args.log, METRICS_NAME) if os.path.isdir(args.log) else args.log
    if not os.path.isfile(log):
        raise fail(PROG, f"no metrics log at {os.path.abspath(log)}")
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(log)), PLOT_NAME)
    try:
        path = plot_metrics(log, out, args.title)
    except (RuntimeError, ValueError) as exc:
        raise fail(PROG, str(exc)) from None
    print(f"wrote {path}")
    return path


def run(argv=None, prog: str | None = None) -> int:
    return _run(main, argv, prog)
