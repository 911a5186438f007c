"""zLLM/BitX storage pipeline (arXiv:2505.06252) on a generated model hub: reduction, baselines, throughput.

Generates (or reuses) a hub with ``experiments.storage.zllm.hub.generate_hub`` (preset ``bench``;
``tiny`` with ``--quick``), then measures and prints:

1. zLLM ingest and restore, each in a fresh subprocess (``python -m experiments.storage.zllm``), with the
   hub's files in the page cache beforehand: MB/s of original bytes and the process's peak RSS
   (``resource.getrusage(RUSAGE_CHILDREN)``); restore writes to ``--restore-dir`` (default: a temp dir under
   /dev/shm when there is one, so the figure is the pipeline's, not the disk's) and checks every SHA-256;
2. bytes after each stage (file dedup, tensor dedup, BitX) and the family clustering's adjusted Rand index
   against hub_truth.json (read by ``stats`` only, never by ingest);
3. every method of ``baselines.compare`` on the same hub (zstd-3, tensor dedup, ZipNN, zLLM);
4. BitX against zstd-3 on exactly the fine-tuned tensors that BitX encoded;
5. the targets: total reduction >= 49.5 %, BitX >= 1.5x zstd-3's ratio on those tensors, ingest >= 300 MB/s,
   restore >= 500 MB/s; each with the measured value and measured / target.

Usage: ``python benchmarks/bench_zllm.py [--quick] [--hub DIR] [--seed 0] [--json OUT]``. Needs the
``experiments`` extra (torch, safetensors, zstandard, zipnn, scipy/scikit-learn). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.storage.zllm import baselines  # noqa: E402
from experiments.storage.zllm.report import stats  # noqa: E402

TARGETS = {"reduction": 0.495, "bitx_over_zstd3": 1.5, "ingest_mb_s": 300.0, "restore_mb_s": 500.0}


def _warm(hub: Path) -> int:
    total = 0
    for path in sorted(hub.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while block := f.read(8 << 20):
                    total += len(block)
    return total


def _cli(*args: str) -> tuple[dict, float, int]:
    """Run the CLI in a fresh process; returns its JSON summary, wall seconds and peak RSS (bytes) so far."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "experiments.storage.zllm", *args, "--json"], cwd=ROOT,
                          capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"zllm {args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; max over children
    return json.loads(proc.stdout), wall, peak_kib * 1024


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Use the tiny hub preset (seconds, not minutes).")
    ap.add_argument("--hub", type=Path, default=None,
                    help="Hub directory: reused if it exists, generated there otherwise "
                         "(default benchmarks/results/zllm_hub_<preset>_s<seed>).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="Where the stores go (default: a temp dir).")
    ap.add_argument("--restore-dir", type=Path, default=None,
                    help="Parent of the restore output (default: /dev/shm if present, else the work dir).")
    ap.add_argument("--json", metavar="OUT", help="Also write the results as JSON.")
    args = ap.parse_args(argv)
    preset = "tiny" if args.quick else "bench"
    hub = args.hub or ROOT / "benchmarks" / "results" / f"zllm_hub_{preset}_s{args.seed}"

    if not (hub / "hub_truth.json").is_file():
        from experiments.storage.zllm.hub import generate_hub

        print(f"# generating the {preset} hub into {hub} (seed {args.seed}) ...", flush=True)
        started = time.perf_counter()
        generate_hub(hub, preset, seed=args.seed, overwrite=True)
        print(f"generated in {time.perf_counter() - started:.1f} s")
    hub_bytes = _warm(hub)
    print(f"# hub {hub}: {hub_bytes / 1e6:,.1f} MB in {sum(1 for p in hub.rglob('*') if p.is_file())} files "
          f"(page cache warmed); python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)

    work_tmp = None if args.work else tempfile.TemporaryDirectory(prefix="zllm-bench-")
    work = args.work or Path(work_tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    restore_parent = args.restore_dir or (shm if shm.is_dir() and os.access(shm, os.W_OK) else work)
    restore_tmp = tempfile.TemporaryDirectory(prefix="zllm-restore-", dir=restore_parent)
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    try:
        load_before = os.getloadavg()[0]
        ingested, ingest_wall, ingest_rss = _cli("ingest", str(hub), str(store))
        os.sync()  # the store's write-back to disk would otherwise run during (and slow) the timed restore
        restored, restore_wall, both_rss = _cli("restore", str(store), str(Path(restore_tmp.name) / "out"))
        s = stats(store)
        ingest_mb_s = s["original_bytes"] / 1e6 / ingested["seconds"]
        restore_mb_s = restored["bytes"] / 1e6 / restored["seconds"]

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"\n## zLLM ingest and restore (each a fresh process; restore into {restore_parent}; "
              f"{cores} usable cores; load average before: {load_before:.2f})")
        print("| step | MB | seconds (in process) | seconds (process wall) | MB/s | CPU s (all threads) | "
              f"MB per CPU-s x {min(cores, 2)} cores | peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, result, size, wall, rate, rss in (
                ("ingest", ingested, s["original_bytes"], ingest_wall, ingest_mb_s,
                 f"{ingest_rss / 1e6:,.0f}"),
                ("restore (SHA-256 checked)", restored, restored["bytes"], restore_wall, restore_mb_s,
                 f"{max(both_rss, ingest_rss) / 1e6:,.0f} (max of both)")):
            cpu = result["cpu_seconds"]
            print(f"| {name} | {_mb(size)} | {result['seconds']:.2f} | {wall:.2f} | {rate:,.0f} | "
                  f"{cpu:.2f} | {size / 1e6 / cpu * min(cores, 2):,.0f} | {rss} |")
        print("(MB per CPU-s x cores: what the step would reach with both cores to itself and kept busy, an "
              "upper bound that shows whether a slow wall time is load from other processes)")

        print("\n## bytes after each stage")
        print("| stage | MB | of original |")
        print("|---|---:|---:|")
        for stage, size in s["stages"].items():
            print(f"| {stage} | {_mb(size)} | {size / s['original_bytes']:.1%} |")
        print("| codec | objects | raw MB | stored MB | ratio |")
        print("|---|---:|---:|---:|---:|")
        for codec, row in sorted(s["codecs"].items()):
            print(f"| {codec} | {row['objects']} | {_mb(row['raw_bytes'])} | {_mb(row['stored_bytes'])} | "
                  f"{row['ratio'] or 0:.2f} |")
        c = s["clustering"]
        print(f"\nfamilies found: {len(s['families'])}; ARI vs hub_truth.json: {c.get('ari')}; "
              f"bases equal to the true base: {c.get('bases_correct')} of {c.get('true_families')}")
        for f in s["families"]:
            print(f"  base {f['base']}: {len(f['members']) - 1} other members")

        print("\n## methods on the same hub")
        rows = baselines.compare(hub, work / "compare")
        print("| method | stored MB | reduction | seconds | note |")
        print("|---|---:|---:|---:|---|")
        for r in rows:
            red = "-" if r["reduction"] is None else f"{r['reduction']:.1%}"
            sec = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
            print(f"| {r['method']} | {_mb(r['stored_bytes'])} | {red} | {sec} | {r['note']} |")
        others = [r["stored_bytes"] for r in rows if r["stored_bytes"] is not None
                  and r["method"] != "original" and not r["method"].startswith("zLLM")]
        best_other = min(others, default=None)

        paired = baselines.bitx_vs_zstd(store, hub)
        print(f"\n## fine-tuned tensors paired with their base ({paired['tensors']} tensors, "
              f"{_mb(paired['raw_bytes'])} MB)")
        print("| codec | stored MB | ratio |")
        print("|---|---:|---:|")
        print(f"| BitX | {_mb(paired['bitx_bytes'])} | {paired['bitx_ratio'] or 0:.3f} |")
        print(f"| zstd-3 | {_mb(paired['zstd3_bytes'])} | {paired['zstd3_ratio'] or 0:.3f} |")

        measured = {"reduction": s["reduction"], "bitx_over_zstd3": paired["bitx_over_zstd3"],
                    "ingest_mb_s": ingest_mb_s, "restore_mb_s": restore_mb_s}
        print(f"\n## targets ({preset} hub)")
        print("| target | measured | target | measured / target | met |")
        print("|---|---:|---:|---:|---|")
        for key, target in TARGETS.items():
            value = measured[key]
            shown = f"{value:.1%}" if key == "reduction" else f"{value:,.2f}"
            goal = f">= {target:.1%}" if key == "reduction" else f">= {target:,.1f}"
            ratio = value / target if value is not None else None
            print(f"| {key} | {shown} | {goal} | {ratio:.2f} | {'yes' if ratio and ratio >= 1 else 'NO'} |")
        if best_other:
            print(f"\nzLLM stores {1 - s['stored_bytes'] / best_other:.1%} less than the best other method "
                  f"({_mb(best_other)} MB).")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"preset": preset, "hub": str(hub), "stats": s, "ingest": ingested,
                           "load_average_before": load_before,
                           "restore": restored,
                           "peak_rss_bytes": {"ingest": ingest_rss, "ingest_and_restore": both_rss},
                           "methods": rows, "paired": paired, "measured": measured, "targets": TARGETS,
                           "python": sys.version.split()[0], "cpus": os.cpu_count()},
                          f, indent=2, default=str)
    finally:
        restore_tmp.cleanup()
        if work_tmp is not None:
            work_tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
