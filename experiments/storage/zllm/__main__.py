"""Command line of the zLLM storage pipeline.

::

    python -m experiments.storage.zllm ingest SRC_DIR STORE_DIR [--progress]
    python -m experiments.storage.zllm restore STORE_DIR OUT_DIR [--progress]
    python -m experiments.storage.zllm stats STORE_DIR [--json]
    python -m experiments.storage.zllm hub OUT_DIR [--preset tiny|bench] [--seed 0]

Errors on bad input (:class:`ZllmError`) are printed as one message, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f} MB"


def _print_stats(s: dict) -> None:
    original = s["original_bytes"]
    print(f"store {s['store']}: {s['files']} files ({s['duplicate_files']} duplicates), "
          f"{s['models']} models, "
          f"{s['tensors']} tensors, {s['unique_objects']} unique objects")
    print(f"{'stage':22s} {'bytes':>16s} {'of original':>12s}")
    for stage, size in s["stages"].items():
        print(f"{stage:22s} {size:16,d} {size / original if original else 0:12.1%}")
    print(f"reduction: {s['reduction']:.1%}")
    for codec, row in sorted(s["codecs"].items()):
        print(f"  {codec:8s} {row['objects']:5d} objects {_mb(row['raw_bytes']):>12s} -> "
              f"{_mb(row['stored_bytes']):>12s} (x{row['ratio'] or 0:.2f})")
    print(f"families ({len(s['families'])}):")
    for f in s["families"]:
        print(f"  base {f['base']}: {', '.join(m for m in f['members'] if m != f['base']) or '(alone)'}")
    c = s["clustering"]
    if c.get("ari") is not None:
        print(f"clustering vs hub_truth.json: ARI {c['ari']:.3f}, {c['found_families']} found / "
              f"{c['true_families']} true families, {c['bases_correct']} bases match the true base")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.storage.zllm",
                                 description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help="deduplicate and compress SRC_DIR into STORE_DIR (new or existing)")
    p.add_argument("src")
    p.add_argument("store")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = sub.add_parser("restore", help="rebuild every file of STORE_DIR into OUT_DIR (new or empty)")
    p.add_argument("store")
    p.add_argument("out")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("stats", help="sizes after each stage, families and clustering score")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("hub", help="generate a synthetic hub (experiments.storage.zllm.hub)")
    p.add_argument("out")
    p.add_argument("--preset", default="tiny", choices=("tiny", "bench"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)

    from .errors import ZllmError

    try:
        if args.command == "ingest":
            from .ingestion import ingest

            r = ingest(args.src, args.store, progress=args.progress)
            if args.json:
                print(json.dumps(r, indent=2))
            else:
                print(f"ingested {r['new_files']} new files ({r['duplicate_files']} duplicates, "
                      f"{_mb(r['new_bytes'])}) into {r['store']} in {r['seconds']:.2f} s "
                      f"({r['mb_per_s']:.0f} MB/s); +{_mb(r['stored_bytes_added'])} stored; "
                      f"{r['models']} models in {r['families']} families")
        elif args.command == "restore":
            from .restoration import restore

            r = restore(args.store, args.out, progress=args.progress)
            if args.json:
                print(json.dumps(r, indent=2))
            else:
                print(f"restored {r['files']} files ({_mb(r['bytes'])}) into {r['out']} in "
                      f"{r['seconds']:.2f} s "
                      f"({r['mb_per_s']:.0f} MB/s), every SHA-256 verified")
        elif args.command == "stats":
            from .report import stats

            s = stats(args.store)
            if args.json:
                print(json.dumps(s, indent=2))
            else:
                _print_stats(s)
        elif args.command == "hub":
            from .hub import generate_hub

            h = generate_hub(args.out, preset=args.preset, seed=args.seed, progress=args.progress)
            print(f"hub {h.path}: {len(h.repos)} repos, {_mb(h.total_bytes)}")
    except ZllmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileExistsError, ValueError) as e:  # generate_hub's errors on a bad output directory / preset
        if args.command != "hub":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
