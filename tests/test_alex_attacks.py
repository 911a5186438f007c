"""The ALEX attack experiments: knapsack, data sets, key files, the three attacks, a mitigation and the CLI.

Attack effectiveness is asserted on counted quantities only (modelled bytes, counted shifts), never wall time.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.storage.alex_attacks.datasets import (
    DATASETS,
    DatasetError,
    legit_inserts,
    load_keys,
    make_dataset,
)
from experiments.storage.alex_attacks.knapsack import solve_mck

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------------- knapsack


def brute_force_mck(groups, budget, exactly_one):
    best = None
    options = [(([None] if not exactly_one else []) + list(range(len(g)))) for g in groups]
    for combo in itertools.product(*options):
        weight = sum(groups[g][c][0] for g, c in enumerate(combo) if c is not None)
        value = sum(groups[g][c][1] for g, c in enumerate(combo) if c is not None)
        if weight <= budget and (best is None or value > best):
            best = value
    return best


items = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 30).map(float)), min_size=0, max_size=3)


@settings(max_examples=150, deadline=None)
@given(groups=st.lists(items, min_size=0, max_size=4), budget=st.integers(0, 14), exactly_one=st.booleans())
def test_mck_dp_matches_brute_force(groups, budget, exactly_one):
    expected = brute_force_mck(groups, budget, exactly_one)
    if expected is None:
        with pytest.raises(ValueError):
            solve_mck(groups, budget, exactly_one=exactly_one)
        return
    sol = solve_mck(groups, budget, exactly_one=exactly_one)
    assert sol.value == pytest.approx(expected)
    assert sol.weight <= budget
    # The reported choices really add up to the reported totals.
    assert sol.weight == sum(groups[g][c][0] for g, c in enumerate(sol.choices) if c is not None)
    assert sol.value == pytest.approx(sum(groups[g][c][1] for g, c in enumerate(sol.choices) if c is not None))
    if exactly_one:
        assert all(c is not None for c in sol.choices)


@settings(max_examples=25, deadline=None)
@given(groups=st.lists(items, min_size=1, max_size=4), budget=st.integers(0, 14))
def test_mck_ortools_backend_agrees(groups, budget):
    pytest.importorskip("ortools")
    assert solve_mck(groups, budget, backend="ortools").value == pytest.approx(brute_force_mck(groups, budget, False))


def test_mck_rejects_bad_input():
    with pytest.raises(ValueError, match="weight"):
        solve_mck([[(1.5, 2.0)]], 3)
    with pytest.raises(ValueError, match="budget"):
        solve_mck([[(1, 2.0)]], -1)
    with pytest.raises(ValueError, match="backend"):
        solve_mck([[(1, 2.0)]], 3, backend="nope")


# ----------------------------------------------------------------------------------------------- data sets


@pytest.mark.parametrize("name", DATASETS)
def test_datasets_are_deterministic_sorted_unique(name):
    keys = make_dataset(name, 5000, seed=3)
    assert keys.shape == (5000,) and keys.dtype == np.float64
    assert np.all(np.diff(keys) > 0) and np.all(np.isfinite(keys))
    assert np.array_equal(keys, make_dataset(name, 5000, seed=3))
    assert not np.array_equal(keys, make_dataset(name, 5000, seed=4))
    extra = legit_inserts(name, keys, 700, seed=3)
    assert extra.shape == (700,) and np.unique(extra).size == 700
    assert not np.isin(extra, keys).any()
    assert not np.all(np.diff(extra) > 0)  # random arrival order, not a sorted stream
    assert np.array_equal(extra, legit_inserts(name, keys, 700, seed=3))


def test_unknown_dataset_is_named():
    with pytest.raises(DatasetError, match="nope"):
        make_dataset("nope", 10)


def test_load_keys_formats(tmp_path):
    keys = make_dataset("lognormal", 1000, 0)
    keys.astype("<f8").tofile(tmp_path / "k.f64")
    assert np.array_equal(load_keys(tmp_path / "k.f64"), keys)
    ints = np.arange(10, 1010, dtype="<u8")
    (tmp_path / "sosd_uint64").write_bytes(np.uint64(ints.size).tobytes() + ints.tobytes())  # SOSD count header
    assert np.array_equal(load_keys(tmp_path / "sosd_uint64"), ints.astype(np.float64))
    (tmp_path / "k.txt").write_text("3\n1.5\n2\n2\n")
    assert load_keys(tmp_path / "k.txt").tolist() == [1.5, 2.0, 3.0]


def test_load_keys_errors_name_the_file(tmp_path):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 13)
    with pytest.raises(DatasetError, match="odd.bin.*multiple of 8"):
        load_keys(odd)
    nan = tmp_path / "nan.f64"
    np.array([1.0, np.nan], dtype="<f8").tofile(nan)
    with pytest.raises(DatasetError, match="nan.f64"):
        load_keys(nan)
    with pytest.raises(DatasetError, match="missing"):
        load_keys(tmp_path / "missing")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        load_keys(tmp_path / "empty")
    (tmp_path / "bad.txt").write_text("1\nabc\n")
    with pytest.raises(DatasetError, match="bad.txt"):
        load_keys(tmp_path / "bad.txt")


# ----------------------------------------------------------------------------------------------- attacks

N_BULK = 20_000
N_INSERTS = 2_000


@pytest.fixture(scope="module")
def setup():
    pytest.importorskip("experiments.storage.alex_attacks.alex")
    from experiments.storage.alex_attacks.mitigations import alex_factory

    bulk = make_dataset("lognormal", N_BULK, seed=1)
    return bulk, alex_factory("none")


@pytest.fixture(scope="module")
def legit_row(setup):
    from experiments.storage.alex_attacks.experiment import measure

    bulk, factory = setup
    return measure(factory, bulk, legit_inserts("lognormal", bulk, N_INSERTS, seed=1), cap_factor=2.0)


def test_space_attack_costs_more_memory_per_key_than_legit(setup, legit_row):
    from experiments.storage.alex_attacks.attacks import plan_space_attack
    from experiments.storage.alex_attacks.experiment import measure

    bulk, factory = setup
    budget = N_INSERTS // 4
    plan = plan_space_attack(factory, bulk, budget)
    assert 0 < plan.inserts.size <= budget
    assert not np.isin(plan.inserts, bulk).any()  # new keys, into gaps
    row = measure(factory, bulk, plan.inserts)
    assert row["bytes_per_insert"] > 2 * max(legit_row["bytes_per_insert"], 1.0)
    # The plan's simulated gain is what the replay sees, up to parent-node effects.
    assert row["final_bytes"] - row["initial_bytes"] == pytest.approx(plan.planned_gain_bytes, rel=0.25)


def test_oom_attack_passes_the_cap_quickly_and_legit_does_not(setup, legit_row):
    from experiments.storage.alex_attacks.attacks import oom_attack
    from experiments.storage.alex_attacks.experiment import measure

    bulk, factory = setup
    keys = oom_attack(factory, bulk, N_INSERTS)
    assert np.unique(keys).size == 1
    row = measure(factory, bulk, keys, cap_factor=2.0)
    assert legit_row["inserts_until_cap"] is None
    assert row["inserts_until_cap"] is not None and row["inserts_until_cap"] < N_INSERTS // 2


def test_time_attack_shifts_more_per_insert_than_legit(setup, legit_row):
    from experiments.storage.alex_attacks.attacks import time_attack
    from experiments.storage.alex_attacks.experiment import measure

    bulk, factory = setup
    keys = time_attack(factory, bulk, N_INSERTS)
    assert keys.size == N_INSERTS and np.unique(keys).size == N_INSERTS
    row = measure(factory, bulk, keys)
    assert row["shifts_per_insert"] > 5 * max(legit_row["shifts_per_insert"], 1.0)


def test_duplicate_aware_split_cuts_the_oom_blowup(setup):
    from experiments.storage.alex_attacks.attacks import oom_attack
    from experiments.storage.alex_attacks.experiment import measure
    from experiments.storage.alex_attacks.mitigations import alex_factory

    bulk, factory = setup
    keys = oom_attack(factory, bulk, N_INSERTS)
    plain = measure(alex_factory("none", memory_limit_bytes=64 << 20), bulk, keys, stop_at_cap=False)
    defended = measure(alex_factory("duplicate_aware", memory_limit_bytes=64 << 20), bulk, keys, stop_at_cap=False)
    # Unmitigated ALEX dies (AlexOutOfMemory, or a NaN model after thousands of futile splits) ...
    assert plain["stopped_by"] is not None and plain["inserted"] < N_INSERTS
    # ... the duplicate-aware split takes every copy and grows by expansions only, an order of magnitude less.
    assert defended["stopped_by"] is None and defended["inserted"] == N_INSERTS
    assert defended["peak_bytes"] < plain["peak_bytes"] / 5


def test_hot_slot_guard_defuses_oom_and_time_and_keeps_the_keys(setup):
    from experiments.storage.alex_attacks.attacks import oom_attack, time_attack
    from experiments.storage.alex_attacks.experiment import measure
    from experiments.storage.alex_attacks.mitigations import alex_factory

    bulk, factory = setup
    guard = alex_factory("guard")
    oom = measure(guard, bulk, oom_attack(factory, bulk, N_INSERTS), cap_factor=2.0)
    assert oom["inserts_until_cap"] is None
    keys = time_attack(factory, bulk, N_INSERTS)
    plain = measure(factory, bulk, keys)
    defended = measure(guard, bulk, keys)
    assert defended["shifts_per_insert"] < plain["shifts_per_insert"] / 2
    index = guard()
    index.bulk_load(bulk)
    for key in keys[:300]:
        index.insert(float(key), 7)
    assert len(index) == bulk.size + 300
    assert all(index.lookup(float(k)) is not None for k in keys[:300])


# ----------------------------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.storage.alex_attacks", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=os.environ.copy())


@pytest.mark.parametrize("attack", ["time", "legit"])
def test_export_writes_float64_files(tmp_path, attack):
    if attack != "legit":
        pytest.importorskip("experiments.storage.alex_attacks.alex")
    out = tmp_path / "out"
    proc = run_cli("export", "--attack", attack, "--dataset", "uniform", "--out", str(out), "--n-bulk", "3000",
                   "--n-inserts", "300", "--seed", "2")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["attack"] == attack and meta["dataset"] == "uniform" and meta["seed"] == 2
    assert (out / "bulk.f64").stat().st_size == 3000 * 8
    assert (out / "inserts.f64").stat().st_size == meta["n_inserts"] * 8 == 300 * 8
    bulk = np.fromfile(out / "bulk.f64", dtype="<f8")
    assert np.array_equal(bulk, make_dataset("uniform", 3000, 2))
    inserts = np.fromfile(out / "inserts.f64", dtype="<f8")
    assert inserts.size == 300 and np.all(np.isfinite(inserts))
    if attack != "legit":
        from experiments.storage.alex_attacks.alex import Alex

        index = Alex()
        index.bulk_load(bulk)
        assert len(index) == 3000
        index.check_invariants()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--attack", "nope", "--dataset", "uniform"], "unknown attack"),
        (["export", "--attack", "legit", "--dataset", "nope"], "unknown data set"),
        (["run", "--dataset", "nope"], "unknown data set"),
        (["run", "--dataset", "uniform", "--attacks", "space,nope"], "unknown attack"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    if args[0] == "export":
        args = [*args, "--out", str(tmp_path / "o")]
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_rejects_non_empty_and_unwritable_out_and_bad_keys(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    proc = run_cli("export", "--attack", "legit", "--dataset", "uniform", "--out", str(full))
    assert proc.returncode == 2 and "not empty" in proc.stderr and "Traceback" not in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("export", "--attack", "legit", "--dataset", "uniform", "--out", str(blocker / "sub"))
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "keys.bin"
    bad.write_bytes(b"\x01" * 12)
    proc = run_cli("export", "--attack", "legit", "--keys", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "keys.bin" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_run_with_a_key_file(tmp_path):
    pytest.importorskip("experiments.storage.alex_attacks.alex")
    keys = tmp_path / "keys.f64"
    make_dataset("longitudes", 4000, 5).astype("<f8").tofile(keys)
    proc = run_cli("run", "--keys", str(keys), "--n-bulk", "3000", "--n-inserts", "300", "--attacks", "oom",
                   "--mitigations", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["attack"] for r in rows] == ["legit", "oom"] and rows[0]["dataset"] == "keys.f64"


def test_run_experiment_rows_are_plain_dicts_with_ratios():
    pytest.importorskip("experiments.storage.alex_attacks.alex")
    from experiments.storage.alex_attacks.experiment import run_experiment

    rows = run_experiment("lognormal", 5000, 500, attacks=("oom", "time"), mitigations=("none", "guard"),
                          keep_series=True)
    assert [(r["mitigation"], r["attack"]) for r in rows] == [
        ("none", "legit"), ("none", "oom"), ("none", "time"), ("guard", "legit"), ("guard", "oom"), ("guard", "time")]
    json.dumps(rows, default=float)  # plain data, ready for a notebook / DataFrame
    for row in rows:
        assert {"memory_amplification", "shift_slowdown", "time_slowdown", "inserts_until_cap", "series"} <= set(row)
        assert row["series"]["inserted"][-1] == row["inserted"]
        if row["attack"] == "legit":
            assert row["shift_slowdown"] == pytest.approx(1.0)
    assert rows[1]["inserts_until_cap"] is not None and rows[0]["inserts_until_cap"] is None
    assert rows[4]["memory_ratio"] < rows[1]["memory_ratio"] / 10  # the guard contains the OOM attack
