"""Speed of the pure-Python ALEX (experiments.storage.alex_attacks) on legitimate workloads.

Bulk-loads N keys (uniform and lognormal), then times point lookups of present keys and inserts
of fresh keys from the same distribution, against a baseline measured in the same run: ``bisect``
on a sorted Python list (lookup = bisect_left + compare, insert = bisect.insort).

    python benchmarks/bench_alex.py            # 1M keys, 100k ops per measurement
    python benchmarks/bench_alex.py --quick    # 50k keys, 5k ops (smoke test)
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.storage.alex_attacks import Alex  # noqa: E402


def make_keys(distribution: str, count: int, rng: np.random.Generator) -> np.ndarray:
    if distribution == "uniform":
        return rng.uniform(0.0, 1e12, count)
    if distribution == "lognormal":
        return rng.lognormal(0.0, 2.0, count) * 1e9
    raise ValueError(distribution)


def time_ops(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def run(num_keys: int, num_ops: int, seed: int) -> list[dict]:
    rows = []
    for distribution in ("uniform", "lognormal"):
        rng = np.random.default_rng(seed)
        keys = make_keys(distribution, num_keys, rng)
        fresh = make_keys(distribution, num_ops, rng).tolist()
        probes = rng.choice(keys, num_ops).tolist()

        index = Alex()
        start = time.perf_counter()
        index.bulk_load(keys, np.arange(num_keys))
        bulk_seconds = time.perf_counter() - start
        alex_lookups = time_ops(index.lookup, probes)
        alex_inserts = time_ops(index.insert, fresh)

        sorted_keys = sorted(keys.tolist())

        def list_lookup(key, sorted_keys=sorted_keys):
            i = bisect.bisect_left(sorted_keys, key)
            return i < len(sorted_keys) and sorted_keys[i] == key

        base_lookups = time_ops(list_lookup, probes)
        base_inserts = time_ops(lambda key, sorted_keys=sorted_keys: bisect.insort(sorted_keys, key), fresh)
        rows.append({
            "distribution": distribution, "keys": num_keys, "bulk_load_s": bulk_seconds,
            "alex_lookups_per_s": alex_lookups, "bisect_lookups_per_s": base_lookups,
            "alex_inserts_per_s": alex_inserts, "bisect_inserts_per_s": base_inserts,
            "data_nodes": index.num_data_nodes(), "model_nodes": index.num_internal_nodes(),
            "depth": index.depth(), "memory_mb": index.memory().total_bytes / 2**20,
        })
    return rows


def print_table(rows: list[dict]) -> None:
    header = (f"{'dist':<10} {'keys':>9} {'bulk s':>7} {'lookup/s':>10} {'bisect':>10} {'ratio':>6} "
              f"{'insert/s':>10} {'insort':>10} {'ratio':>6} {'leaves':>7} {'inner':>6} {'depth':>5} {'MB':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['distribution']:<10} {r['keys']:>9} {r['bulk_load_s']:>7.2f} "
              f"{r['alex_lookups_per_s']:>10.0f} {r['bisect_lookups_per_s']:>10.0f} "
              f"{r['alex_lookups_per_s'] / r['bisect_lookups_per_s']:>6.2f} "
              f"{r['alex_inserts_per_s']:>10.0f} {r['bisect_inserts_per_s']:>10.0f} "
              f"{r['alex_inserts_per_s'] / r['bisect_inserts_per_s']:>6.2f} "
              f"{r['data_nodes']:>7} {r['model_nodes']:>6} {r['depth']:>5} {r['memory_mb']:>7.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    parser.add_argument("--keys", type=int, default=None)
    parser.add_argument("--ops", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    num_keys = args.keys or (50_000 if args.quick else 1_000_000)
    num_ops = args.ops or (5_000 if args.quick else 100_000)
    print_table(run(num_keys, num_ops, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
