"""Command line: export an attack's key files, or run the attack-vs-legitimate measurement table.

``python -m experiments.storage.alex_attacks export --attack {space,oom,time,space_packed,legit} --dataset NAME
--out DIR``
writes ``DIR/bulk.f64`` (the bulk-load keys, sorted), ``DIR/inserts.f64`` (the insert sequence in replay order),
both raw little-endian float64 (``np.fromfile(path, dtype="<f8")``, or ALEX's ``--keys_file_type=binary``), and
``DIR/meta.json`` (attack, data set, sizes, seed). ``DIR`` must be new or empty.

``python -m experiments.storage.alex_attacks run --dataset NAME [--json]`` prints the table of
:func:`~.experiment.run_experiment` (or its rows as JSON).

``--keys FILE`` takes the keys from a real data set file (see :func:`~.datasets.load_keys`) instead of
generating them: a random ``--n-bulk`` of them are bulk-loaded and the legitimate workload is drawn from the rest.
Errors (unknown attack or data set, a non-empty or unwritable ``--out``, a bad key file) print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .attacks import ALL_ATTACKS, ATTACKS, make_attack
from .datasets import DATASETS, DatasetError, legit_inserts, load_keys, make_dataset
from .mitigations import MITIGATIONS


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _keys_for(args: argparse.Namespace) -> tuple[str, np.ndarray, np.ndarray]:
    """(data set label, bulk keys, legitimate inserts) from a generated data set or ``--keys FILE``."""
    if args.keys:
        try:
            keys = load_keys(args.keys)
        except DatasetError as e:
            raise CliError(str(e)) from None
        rng = np.random.default_rng([args.seed, 0xF11E])
        if keys.size < args.n_bulk + args.n_inserts:
            raise CliError(f"key file {args.keys!r} holds {keys.size} distinct keys; --n-bulk {args.n_bulk} + "
                           f"--n-inserts {args.n_inserts} need more")
        order = rng.permutation(keys.size)
        bulk = np.sort(keys[order[: args.n_bulk]])
        legit = keys[order[args.n_bulk: args.n_bulk + args.n_inserts]]
        return Path(args.keys).name, bulk, legit
    if args.dataset not in DATASETS:
        raise CliError(f"unknown data set {args.dataset!r}; choose one of {', '.join(DATASETS)} (or --keys FILE)")
    bulk = make_dataset(args.dataset, args.n_bulk, args.seed)
    return args.dataset, bulk, legit_inserts(args.dataset, bulk, args.n_inserts, args.seed)


def _prepare_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CliError(f"--out {out!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise CliError(f"--out {out!r} is not empty; give a new or empty directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CliError(f"cannot write to --out {out!r}: {e.strerror or e}") from None
    return path


def _export(args: argparse.Namespace) -> int:
    if args.attack not in (*ALL_ATTACKS, "legit"):
        raise CliError(f"unknown attack {args.attack!r}; choose one of {', '.join((*ALL_ATTACKS, 'legit'))}")
    if args.mitigation not in MITIGATIONS:
        raise CliError(f"unknown mitigation {args.mitigation!r}; choose one of {', '.join(MITIGATIONS)}")
    label, bulk, legit = _keys_for(args)
    out = _prepare_out(args.out)
    if args.attack == "legit":
        inserts = legit
    else:
        from .mitigations import alex_factory

        inserts = make_attack(args.attack, alex_factory(args.mitigation), bulk, args.n_inserts, seed=args.seed,
                              progress=args.progress)
    try:
        bulk.astype("<f8").tofile(out / "bulk.f64")
        np.asarray(inserts, dtype=np.float64).astype("<f8").tofile(out / "inserts.f64")
        meta = {"attack": args.attack, "dataset": label, "n_bulk": int(bulk.size), "n_inserts": int(len(inserts)),
                "n_inserts_requested": args.n_inserts, "seed": args.seed, "crafted_against": args.mitigation,
                "dtype": "<f8", "files": {"bulk": "bulk.f64", "inserts": "inserts.f64"},
                "keys_file": str(args.keys) if args.keys else None}
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    except OSError as e:
        raise CliError(f"cannot write to --out {args.out!r}: {e.strerror or e}") from None
    print(f"wrote {out}/bulk.f64 ({bulk.size} keys), {out}/inserts.f64 ({len(inserts)} keys), {out}/meta.json")
    return 0


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


TABLE_COLUMNS = (
    ("mitigation", "mitigation"), ("attack", "workload"), ("inserted", "inserted"),
    ("bytes_per_insert", "B/insert"), ("memory_amplification", "mem amp"), ("memory_ratio", "final/init"),
    ("inserts_until_cap", "to cap"), ("shifts_per_insert", "shifts/ins"), ("shift_slowdown", "shift x"),
    ("ns_per_insert", "ns/ins"), ("time_slowdown", "time x"), ("model_retrains", "retrains"),
    ("expansions", "expand"), ("sideways_splits", "split side"), ("downward_splits", "split down"),
)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The measurement rows as a fixed-width text table."""
    header = [title for _, title in TABLE_COLUMNS]
    body = [[_fmt(row.get(key)) for key, _ in TABLE_COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from .experiment import check_names, run_experiment

    attacks = [a for a in args.attacks.split(",") if a]
    mitigations = [m for m in args.mitigations.split(",") if m]
    try:  # before any key file is read or index built
        check_names(attacks, mitigations)
    except ValueError as e:
        raise CliError(str(e)) from None
    label, bulk, legit = _keys_for(args)
    rows = run_experiment(label, args.n_bulk, args.n_inserts, attacks, mitigations,
                          seed=args.seed, cap_factor=args.cap_factor, progress=args.progress, bulk_keys=bulk,
                          legit_keys=legit)
    if args.json:
        print(json.dumps(rows, indent=1, default=float))
    else:
        print(f"data set {label}: {bulk.size:,} bulk-loaded keys, {args.n_inserts:,} inserts per workload, "
              f"memory cap {args.cap_factor}x the bulk-loaded size")
        print(format_rows(rows))
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.storage.alex_attacks",
                                 description="Algorithmic complexity attacks on ALEX: export key files or measure.")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="lognormal", help=f"one of {', '.join(DATASETS)} (default lognormal)")
        p.add_argument("--keys", metavar="FILE", help="real key file (float64 / uint64 binary, or text)")
        p.add_argument("--n-bulk", type=int, default=100_000, help="bulk-loaded keys (100,000)")
        p.add_argument("--n-inserts", type=int, default=10_000, help="inserts per workload / attack budget (10,000)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--progress", action="store_true", help="progress bars")

    exp = sub.add_parser("export", help="write bulk.f64, inserts.f64 and meta.json for one attack")
    exp.add_argument("--attack", required=True, help=f"one of {', '.join((*ALL_ATTACKS, 'legit'))}")
    exp.add_argument("--out", required=True, metavar="DIR", help="new or empty output directory")
    exp.add_argument("--mitigation", default="none", help="configuration the attack is crafted against (none)")
    common(exp)
    run = sub.add_parser("run", help="measure the attacks against the legitimate workload and print the table")
    run.add_argument("--attacks", default=",".join(ATTACKS),
                     help=f"comma-separated, from {','.join(ALL_ATTACKS)} (default {','.join(ATTACKS)})")
    run.add_argument("--mitigations", default=",".join(MITIGATIONS), help=f"comma-separated ({','.join(MITIGATIONS)})")
    run.add_argument("--cap-factor", type=float, default=2.0, help="memory cap, times the bulk-loaded size (2)")
    run.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    common(run)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.n_bulk < 2 or args.n_inserts < 0:
        print("error: --n-bulk must be >= 2 and --n-inserts >= 0", file=sys.stderr)
        return 2
    try:
        return _export(args) if args.command == "export" else _run(args)
    except (CliError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
