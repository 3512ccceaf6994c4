"""Every native CPU kernel vs the NumPy reference vs PyTorch, in one run.

Each benchmarks/kernels/<family>.py exposes `rows(quick) -> list[dict]` (keys: kernel, shape,
impl, pass, median_ms and gbps or gflops). This driver runs them all, prints one table per
kernel with the native/reference and native/torch ratios, and can save everything as JSON.

    python benchmarks/kernels.py [--quick] [--only attention,layer_norm] [--json out.json]
    python benchmarks/kernels.py --from-json out.json    # print the tables of a saved run again

Rates are put against this machine's measured ceilings: memory-bound kernels' GB/s (bytes read +
written at least once) as a percentage of numpy.copyto's bandwidth on 256 MB (the family's `copy`
row), matmul and attention GFLOP/s as a percentage of the best SGEMM rate on a 2048^3 product
(linear's `peak` rows; attention's forward counts 2 matmuls per score, causal half).
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


def ceilings(rows):
    """(copy GB/s per family kernel name, SGEMM peak GFLOP/s) measured in this run (None if absent)."""
    copy = [r["gbps"] for r in rows if r["kernel"] == "copy" and r.get("gbps")]
    peak = [r["gflops"] for r in rows if r.get("role") == "peak" and r.get("gflops")]
    return (max(copy) if copy else None), (max(peak) if peak else None)


def summarise(rows, copy_gbps=None, peak_gflops=None):
    """Group by (kernel, shape, role, pass) and add the ratios native/reference and native/torch."""
    groups = {}
    for r in rows:
        if r["kernel"] == "copy":
            continue
        groups.setdefault((r["kernel"], r["shape"], r.get("role", ""), r["pass"]), {})[r["impl"]] = r
    out = []
    for (kernel, shape, role, pas), impls in groups.items():
        def ms(name):
            return impls[name]["median_ms"] if name in impls else None

        def rate(name):
            r = impls.get(name, {})
            if r.get("gbps"):
                pct = f" ({100 * r['gbps'] / copy_gbps:.0f}% copy)" if copy_gbps else ""
                return f"{r['gbps']:.1f} GB/s{pct}"
            if r.get("gflops"):
                pct = f" ({100 * r['gflops'] / peak_gflops:.0f}% peak)" if peak_gflops else ""
                return f"{r['gflops']:.1f} GFLOP/s{pct}"
            return "-"

        nat, ref, tor = ms("native"), ms("reference"), ms("torch")
        label = f"{kernel} {role}".strip() if role and role not in ("peak",) else kernel
        out.append([label, shape, pas,
                    f"{nat:.3f}" if nat else "-", f"{ref:.3f}" if ref else "-", f"{tor:.3f}" if tor else "-",
                    f"{ref / nat:.2f}x" if nat and ref else "-", f"{tor / nat:.2f}x" if nat and tor else "-",
                    rate("native"), rate("torch")])
    return out


HEADER = ["kernel", "shape", "pass", "native ms", "reference ms", "torch ms", "vs reference", "vs torch",
          "native rate", "torch rate"]


def print_tables(by_family, copy_gbps, peak_gflops):
    print(f"ceilings    copy {copy_gbps:.1f} GB/s (numpy.copyto, 256 MB, read + written)" if copy_gbps else
          "ceilings    copy bandwidth not measured in this run")
    if peak_gflops:
        print(f"            SGEMM peak {peak_gflops:.1f} GFLOP/s (best of native/OpenBLAS/torch, 2048^3)")
    print("            (rates above 100% of copy: the working set fits in cache, which DRAM copy does not measure)")
    for name, rows in by_family.items():
        table = summarise(rows, copy_gbps, peak_gflops)
        if table:
            print(f"\n## {name}\n")
            print(common.table(HEADER, table))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--only", default="", help="comma-separated families (file names in benchmarks/kernels/)")
    ap.add_argument("--json", default=None, help="save machine info and all rows here")
    ap.add_argument("--from-json", default=None, help="print the tables of a run saved with --json")
    args = ap.parse_args(argv)

    if args.from_json:
        saved = json.loads(pathlib.Path(args.from_json).read_text())
        common.print_machine(saved["machine"])
        by_family = {}
        for r in saved["rows"]:
            by_family.setdefault(r["family"], []).append(r)
        print_tables(by_family, *ceilings(saved["rows"]))
        return saved["rows"]

    import tinygpt.kernels as K  # noqa: PLC0415

    info = common.machine_info(threads=__import__("os").cpu_count())
    common.print_machine(info)
    print(f"tinygpt     native kernels: {K.available().get('cpu')}")
    only = {s for s in args.only.split(",") if s}
    all_rows, by_family = [], {}
    for name, module in load_families(only):
        rows = module.rows(args.quick)
        for r in rows:
            r["family"] = name
        all_rows.extend(rows)
        by_family[name] = rows
        print(f"\n## {name} (progress; the tables with ratios to the ceilings follow at the end)\n")
        print(common.table(HEADER, summarise(rows)))
        if args.json:  # after every family, so an interrupted run keeps what it measured
            pathlib.Path(args.json).write_text(json.dumps({"machine": info, "rows": all_rows}, indent=1))
    print("\n# all kernels\n")
    print_tables(by_family, *ceilings(all_rows))
    return all_rows


if __name__ == "__main__":
    main()
