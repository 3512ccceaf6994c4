"""A small GPT training loop on tinygpt.distributed, for tests/test_distributed.py (launched under mpiexec).

    mpiexec -n 2 python tests/distributed_train.py spec.json out.npz

The spec is a JSON list of runs (dicts of `DEFAULTS`' keys); every run trains on Tiny Shakespeare with
the loop of examples/train_shakespeare.py (GPT, BatchSampler, AdamW from configure_optimizers, cosine
lr, clip_grad_norm_), written on the library's API: one global batch per micro-step from a sampler
seeded alike on every rank, each rank's rows via local_batch, the loss scaled by the rank's share,
gradients reduced by a GradReducer (ZeRO-1 with "zero"). "plain": the one-process loop without any of
the distributed API (the reference). Rank 0 writes every run's losses, gradient norms, final weights
and optimiser state_dict into out.npz under "<run name>/...".
"""
import contextlib
import json
import os
import signal
import sys

import numpy as np

import tinygpt as tg
import tinygpt.distributed as dist
from tinygpt import backend
from tinygpt.checkpoint import load_checkpoint, save_checkpoint
from tinygpt.data import BatchSampler, CharTokenizer, tiny_shakespeare
from tinygpt.nn.utils import clip_grad_norm_
from tinygpt.optim import cosine_with_warmup

DEFAULTS = dict(name="run", steps=300, batch=5, block=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                accum=1, clip=1.0, zero=False, plain=False, lr=3e-3, min_lr=3e-4, warmup=20, weight_decay=0.1,
                bucket_mb=0.02, overlap=True, seed=1337, fault=None, save_at=None, save_path=None,
                resume_from=None, perturb_rank=None, device="cpu")

_TOKENS = None


def tokens():
    global _TOKENS
    if _TOKENS is None:
        text = tiny_shakespeare()
        _TOKENS = (CharTokenizer.from_text(text).encode(text[:200_000]), 65)
    return _TOKENS


def train(spec: dict) -> dict:
    s = {**DEFAULTS, **spec}
    unknown = set(spec) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown spec keys {sorted(unknown)}")
    ids, vocab = tokens()
    rank, size = dist.rank(), dist.world_size()
    cfg = tg.GPTConfig(vocab_size=vocab, block_size=s["block"], n_layer=s["n_layer"], n_head=s["n_head"],
                       n_embd=s["n_embd"], dropout=s["dropout"])
    # Each rank initialises differently on purpose: broadcast_parameters must make them identical.
    tg.manual_seed(s["seed"] + (0 if s["plain"] else 1000 * rank))
    model = tg.GPT(cfg)
    if s["device"] != "cpu":
        model.to(s["device"])
    if not s["plain"]:
        if s["perturb_rank"] is not None:  # verify_replicas must catch one changed weight on one rank
            dist.broadcast_parameters(model)
            if rank == s["perturb_rank"]:
                model.transformer.h[1].mlp.c_fc.weight.data[3, 5] += 1e-6
            try:
                dist.verify_replicas(model)
            except dist.DistributedError as exc:
                return {"verify_error": str(exc)}
            return {"verify_error": ""}
        dist.broadcast_parameters(model)
    tg.manual_seed(s["seed"])  # the same dropout seeds on every rank
    optimizer = model.configure_optimizers(s["weight_decay"], s["lr"], betas=(0.9, 0.99))
    reducer = None
    if not s["plain"]:
        reducer = dist.GradReducer(model, shard=s["zero"], bucket_mb=s["bucket_mb"], overlap=s["overlap"])
        if s["zero"]:
            dist.shard_optimizer(optimizer, reducer)
    sampler = BatchSampler(ids, s["batch"], s["block"], seed=s["seed"], device=s["device"])
    start = 0
    if s["resume_from"]:
        start = int(load_checkpoint(s["resume_from"], model, optimizer, sampler=sampler)["step"])
    losses, norms = [], []
    for it in range(start, s["steps"]):
        if s["save_at"] is not None and it == s["save_at"]:
            with dist.gathered_state(optimizer):
                if dist.is_main():
                    save_checkpoint(s["save_path"], model, optimizer, step=it, config=cfg, sampler=sampler)
        if s["fault"] and it == s["fault"]["step"] and rank == s["fault"]["rank"]:
            kind = s["fault"]["kind"]
            if kind == "raise":
                raise RuntimeError(f"injected failure at step {it}")
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "exit":
                sys.exit(0)
        lr = cosine_with_warmup(it, max_lr=s["lr"], min_lr=s["min_lr"], warmup_steps=min(s["warmup"], s["steps"]),
                                decay_steps=s["steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        if reducer is None:
            optimizer.zero_grad()
        else:
            reducer.zero_grad()
        loss_sum = 0.0
        for micro in range(s["accum"]):
            x, y = sampler.sample()
            if reducer is None:
                _, loss = model(x, y)
                (loss * (1.0 / s["accum"]) if s["accum"] > 1 else loss).backward()
                loss_sum += loss.item() / s["accum"]
                continue
            x, y, share = dist.local_batch(x, y)
            last = micro == s["accum"] - 1
            with contextlib.nullcontext() if last else reducer.no_sync():
                _, loss = model(x, y)
                (loss * (share / s["accum"])).backward()
            loss_sum += loss.item() * share / s["accum"]
        if reducer is None:
            norm = float(clip_grad_norm_(model.parameters(), s["clip"])) if s["clip"] else 0.0
            losses.append(loss_sum)
        else:
            reducer.wait()
            norm = reducer.clip_grad_norm_(s["clip"]) if s["clip"] else 0.0
            losses.append(dist.all_reduce(loss_sum))
        norms.append(norm)
        optimizer.step()
    # evaluation: 7 fixed batches (an uneven count for 2 and 3 ranks), split across ranks and reduced
    eval_sampler = BatchSampler(ids, s["batch"], s["block"], seed=s["seed"] + 1, device=s["device"])
    batches = [eval_sampler.sample() for _ in range(7)]
    if reducer is None:
        model.eval()
        with tg.no_grad():
            eval_loss = float(np.mean([model(x, y)[1].item() for x, y in batches]))
        model.train()
    else:
        eval_loss = dist.evaluate(model, batches)
    out = {"losses": np.array(losses), "norms": np.array(norms), "eval": np.array(eval_loss)}
    for k, v in model.state_dict().items():
        out[f"w/{k}"] = backend.to_numpy(v).copy()
    with dist.gathered_state(optimizer):
        sd = optimizer.state_dict()
    for i, entry in sd["state"].items():
        for key, v in entry.items():
            out[f"opt/{i}/{key}"] = backend.to_numpy(v) if hasattr(v, "shape") else np.array(v)
    out["opt_groups"] = np.frombuffer(json.dumps(sd["param_groups"]).encode(), dtype=np.uint8)
    if not s["plain"]:
        dist.verify_replicas(model)  # the replicas have not drifted apart
        out["opt_bytes"] = dist.comm().host_all_gather(np.array([dist.optimizer_state_nbytes(optimizer)]))[:, 0]
        out["bucket_bytes"] = np.array(reducer.bytes_per_step)
    return out


def main(argv):
    spec_path, out_path = argv
    with open(spec_path) as f:
        runs = json.load(f)
    device = runs[0].get("device", "cpu")
    if os.environ.get("TG_FAKE_NCCL") == "1":  # no GPU: fake_cupy's arrays, NCCL played over MPI
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import fake_nccl

        fake_nccl.install()
    dist.init(device=device)
    results = {}
    for spec in runs:
        for k, v in train(spec).items():
            results[f"{spec['name']}/{k}"] = v if not isinstance(v, str) else np.frombuffer(v.encode(), np.uint8)
    if os.environ.get("TG_FAKE_NCCL") == "1":
        import fake_nccl

        results["nccl_log"] = np.array([f"{op}:{count}:{dt}" for op, count, dt in fake_nccl.log])
    if dist.is_main():
        np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1:])
