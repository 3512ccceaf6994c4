"""Shared helpers for the benchmarks: machine info, robust statistics, interleaved timing, tables.

Nothing here imports numpy or torch at module level, so a benchmark can set the thread
environment (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, ...) before those libraries load.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_thread_env(threads: int) -> None:
    """Pin OpenMP / OpenBLAS / MKL pools to `threads` (call before numpy and torch are imported)."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)


def preparse_int(argv, flag: str, default: int) -> int:
    """The value of `flag N` or `flag=N` in argv, read before argparse (and before numpy loads)."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith(flag + "="):
            return int(arg.split("=", 1)[1])
    return default


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The widest SIMD extensions the CPU reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if x in flags)
    except OSError:
        pass
    return "?"


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "?"


def numpy_blas() -> str:
    import numpy as np  # noqa: PLC0415 - after the thread environment is set

    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: no mode='dicts'
        return "?"


def torch_blas() -> str:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return "(torch not installed)"
    cfg = torch.__config__.show()
    for token in cfg.replace(",", "\n").splitlines():
        if "BLAS_INFO=" in token:
            return token[token.index("BLAS_INFO="):].strip()
    return "?"


def machine_info(threads: int) -> dict:
    import numpy as np  # noqa: PLC0415

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "simd": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": numpy_blas(),
        "threads": threads,
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
    }
    try:
        import torch  # noqa: PLC0415

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_blas"] = torch_blas()
    except ImportError:
        info["torch"] = None
    return info


def print_machine(info: dict) -> None:
    print(f"date        {info['date']}")
    print(f"cpu         {info['cpu']} ({info['logical_cores']} logical cores; {info['simd']})")
    print(f"load avg    {info['load_average']} (1/5/15 min; other processes share this machine)")
    print(f"python      {info['python']}; numpy {info['numpy']} ({info['numpy_blas']}); "
          f"torch {info.get('torch')} ({info.get('torch_blas', '-')})")
    print(f"threads     {info['threads']} for both (torch.set_num_threads={info.get('torch_threads')}, "
          + ", ".join(f"{k}={v}" for k, v in info["thread_env"].items()) + ")")


def stats(times_s) -> dict:
    """Median, quartiles and IQR of a list of seconds, in milliseconds."""
    ms = sorted(t * 1e3 for t in times_s)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median_ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "min_ms": ms[0], "max_ms": ms[-1], "n": len(ms)}


def interleaved(contenders: dict, steps: int, warmup: int, block: int = 1) -> dict:
    """Time each contender's calls, alternating who goes first (ABBA...).

    contenders: name -> zero-argument callable doing one full step (and synchronising).
    Warmup rounds run first and are discarded. Returns name -> list of seconds.
    block > 1: each turn runs one untimed call and then `block` timed calls of the same contender,
    so a contender is never timed right after another library's call. (With OpenMP or OpenBLAS
    thread pools on few cores, the previous library's workers keep spinning for a while after its
    call returns and slow the next one down; block = 1 measures that interference too.)
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times = {name: [] for name in names}
    for r in range(-(-steps // block)):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if block > 1:
                contenders[name]()
            for _ in range(min(block, steps - r * block)):
                t0 = time.perf_counter()
                contenders[name]()
                times[name].append(time.perf_counter() - t0)
    return times


def copy_bandwidth(threads: int, mb: int = 256, reps: int = 5) -> float:
    """GB/s (read + write) of numpy copies of mb MB in `threads` threads at once (numpy drops the GIL), best of reps."""
    import threading

    import numpy as np

    n = (mb << 20) // 4 // threads
    src = [np.ones(n, np.float32) for _ in range(threads)]
    dst = [np.zeros(n, np.float32) for _ in range(threads)]
    best = float("inf")
    for _ in range(reps + 1):  # the first pass faults the pages in
        barrier = threading.Barrier(threads + 1)

        def work(i):
            barrier.wait()
            np.copyto(dst[i], src[i])

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        t0 = time.perf_counter()
        barrier.wait()
        for t in ts:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return 2 * threads * n * 4 / best / 1e9


def table(headers, rows, align=None) -> str:
    """A plain-text (Markdown-compatible) table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ["<"] + [">"] * (len(headers) - 1)

    def line(r):
        return "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == ">" else ("-" * (w + 2)) for a, w in zip(align, widths)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


# ============================================================================ PyTorch peer
def torch_gpt_class(torch):
    """nanoGPT's model in PyTorch with tinygpt's (GPT-2's) parameter names and a tied head: the peer
    of benchmarks/train_step.py and gpu.py. `torch` is passed in, so this module never imports it.
    Dropout layers exist only when config.dropout > 0."""
    nn, F = torch.nn, torch.nn.functional

    def dropout(c):
        return nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()

    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.n_head, self.dropout = c.n_head, c.dropout
            self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
            self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
            self.resid_dropout = dropout(c)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))

    class MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
            self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
            self.dropout = dropout(c)

        def forward(self, x):
            return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
            self.attn = Attention(c)
            self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
            self.mlp = MLP(c)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(c.vocab_size, c.n_embd), wpe=nn.Embedding(c.block_size, c.n_embd),
                drop=dropout(c), h=nn.ModuleList(Block(c) for _ in range(c.n_layer)),
                ln_f=nn.LayerNorm(c.n_embd, bias=c.bias)))
            self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
            self.lm_head.weight = self.transformer.wte.weight  # tied

        def forward(self, idx, targets):
            T = idx.shape[1]
            pos = torch.arange(T, device=idx.device)
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
            for block in self.transformer.h:
                x = block(x)
            logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    return TorchGPT


def torch_gpt_copy(torch, weights: dict, config):
    """A torch_gpt_class model (on the CPU) holding exactly `weights` (name -> host numpy array)."""
    model = torch_gpt_class(torch)(config)
    params = dict(model.named_parameters())
    if set(params) != set(weights):
        raise RuntimeError(f"parameter names differ: only tinygpt {sorted(set(weights) - set(params))}, "
                           f"only torch {sorted(set(params) - set(weights))}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(weights[name].copy()))
    return model
