"""Every native CPU kernel vs the NumPy reference vs PyTorch, in one run.

Each benchmarks/kernels/<family>.py exposes `rows(quick) -> list[dict]` (keys: kernel, shape,
impl, pass, median_ms and gbps or gflops). This driver runs them all, prints one table per
kernel with the native/reference and native/torch ratios, and can save everything as JSON.

    python benchmarks/kernels.py [--quick] [--only attention,layernorm] [--json out.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "kernels"))  # their shared _timing
import common  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent / "kernels"


def load_families(only):
    for path in sorted(HERE.glob("*.py")):
        if path.stem.startswith("_") or (only and path.stem not in only):
            continue
        spec = importlib.util.spec_from_file_location(f"bench_kernels_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield path.stem, module


def summarise(rows):
    """Group by (kernel, shape, pass) and add the ratios native/reference and native/torch."""
    groups = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["shape"], r["pass"]), {})[r["impl"]] = r
    out = []
    for (kernel, shape, pas), impls in groups.items():
        def ms(name):
            return impls[name]["median_ms"] if name in impls else None

        def rate(name):
            r = impls.get(name, {})
            return f"{r['gbps']:.1f} GB/s" if r.get("gbps") else f"{r['gflops']:.1f} GFLOP/s" if r.get("gflops") else "-"

        nat, ref, tor = ms("native"), ms("reference"), ms("torch")
        out.append([kernel, shape, pas,
                    f"{nat:.3f}" if nat else "-", f"{ref:.3f}" if ref else "-", f"{tor:.3f}" if tor else "-",
                    f"{ref / nat:.2f}x" if nat and ref else "-", f"{tor / nat:.2f}x" if nat and tor else "-",
                    rate("native"), rate("torch")])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--only", default="", help="comma-separated families (file names in benchmarks/kernels/)")
    ap.add_argument("--json", default=None, help="save machine info and all rows here")
    args = ap.parse_args(argv)

    import tinygpt.kernels as K  # noqa: PLC0415

    info = common.machine_info(threads=__import__("os").cpu_count())
    common.print_machine(info)
    print(f"tinygpt     native kernels: {K.available().get('cpu')}")
    only = {s for s in args.only.split(",") if s}
    all_rows = []
    for name, module in load_families(only):
        rows = module.rows(args.quick)
        all_rows.extend(rows)
        print(f"\n## {name}\n")
        print(common.table(["kernel", "shape", "pass", "native ms", "reference ms", "torch ms",
                            "vs reference", "vs torch", "native rate", "torch rate"], summarise(rows)))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"machine": info, "rows": all_rows}, indent=1))
    return all_rows


if __name__ == "__main__":
    main()
