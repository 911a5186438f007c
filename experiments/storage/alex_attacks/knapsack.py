"""Exact multiple-choice knapsack (MCK), the planner of the space attack on ALEX's data nodes.

Each *group* is one data node; its *items* are the alternative ways to attack it ("insert w keys into this node,
gaining v bytes"). At most one item per group may be chosen (or exactly one with ``exactly_one=True``), the total
weight must stay within the insert budget, and the total value is maximised.

Two backends:

* ``"dp"`` (default): dynamic programming over the budget, ``O(items * budget)`` time, vectorised with numpy,
  exact for integer weights and any real values; back-pointers are kept per group, so memory is
  ``O(groups * budget)`` small integers.
* ``"ortools"``: the same model handed to OR-Tools CP-SAT (the paper's attack uses OR-Tools too). Values are
  scaled to integers (``value_scale``), so it is exact only up to that rounding; it is there for large budgets
  where the DP table would not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Item", "KnapsackSolution", "solve_mck"]

Item = tuple[int, float]  # (weight, value)


@dataclass(frozen=True)
class KnapsackSolution:
    """The chosen item index per group (``None``: nothing from that group), with the totals."""

    value: float
    weight: int
    choices: list[int | None]


def _validate(groups: Sequence[Sequence[Item]], budget: int) -> None:
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    for g, items in enumerate(groups):
        for i, (w, _v) in enumerate(items):
            if int(w) != w or w < 0:
                raise ValueError(f"group {g} item {i}: weight must be a non-negative integer, got {w!r}")


def _solve_dp(groups: Sequence[Sequence[Item]], budget: int, exactly_one: bool) -> KnapsackSolution:
    neg = -np.inf
    # best[b]: best value using exactly weight <= b so far (we start from "all zero" so it is "at most b").
    best = np.zeros(budget + 1, dtype=np.float64)
    pick_dtype = np.int32 if max((len(g) for g in groups), default=0) >= 2**15 else np.int16
    picks = np.full((len(groups), budget + 1), -1, dtype=pick_dtype)
    for g, items in enumerate(groups):
        # "Skip this group" is the starting candidate unless one item is mandatory.
        new = best.copy() if not exactly_one else np.full(budget + 1, neg)
        choice = picks[g]
        for i, (w, v) in enumerate(items):
            w = int(w)
            if w > budget:
                continue
            cand = np.full(budget + 1, neg)
            cand[w:] = best[: budget + 1 - w] + float(v)
            better = cand > new
            new[better] = cand[better]
            choice[better] = i
        best = new
    if not np.isfinite(best[budget]):
        raise ValueError("no feasible selection: some group has no item that fits the budget")
    # Walk the back-pointers from the full budget (best[] is monotone in b, so best[budget] is the optimum).
    choices: list[int | None] = [None] * len(groups)
    b = budget
    for g in range(len(groups) - 1, -1, -1):
        i = int(picks[g, b])
        if i >= 0:
            choices[g] = i
            b -= int(groups[g][i][0])
    weight = sum(int(groups[g][c][0]) for g, c in enumerate(choices) if c is not None)
    value = float(sum(float(groups[g][c][1]) for g, c in enumerate(choices) if c is not None))
    return KnapsackSolution(value=value, weight=weight, choices=choices)


def _solve_ortools(groups: Sequence[Sequence[Item]], budget: int, exactly_one: bool, value_scale: float,
                   time_limit_s: float) -> KnapsackSolution:
    try:
        from ortools.sat.python import cp_model
    except ImportError as e:  # optional dependency
        raise RuntimeError("backend='ortools' needs the ortools package (pip install ortools)") from e
    model = cp_model.CpModel()
    xs: list[list] = []
    weight_terms = []
    value_terms = []
    for g, items in enumerate(groups):
        row = []
        for i, (w, v) in enumerate(items):
            x = model.NewBoolVar(f"x{g}_{i}")
            row.append(x)
            weight_terms.append(int(w) * x)
            value_terms.append(int(round(float(v) * value_scale)) * x)
        if exactly_one:
            model.AddExactlyOne(row)
        elif row:
            model.AddAtMostOne(row)
        xs.append(row)
    model.Add(sum(weight_terms) <= budget)
    model.Maximize(sum(value_terms))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 2
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise ValueError("no feasible selection: some group has no item that fits the budget")
    choices: list[int | None] = []
    for row in xs:
        chosen = [i for i, x in enumerate(row) if solver.Value(x)]
        choices.append(chosen[0] if chosen else None)
    weight = sum(int(groups[g][c][0]) for g, c in enumerate(choices) if c is not None)
    value = float(sum(float(groups[g][c][1]) for g, c in enumerate(choices) if c is not None))
    return KnapsackSolution(value=value, weight=weight, choices=choices)


def solve_mck(groups: Sequence[Sequence[Item]], budget: int, *, exactly_one: bool = False, backend: str = "dp",
              value_scale: float = 1.0, time_limit_s: float = 60.0) -> KnapsackSolution:
    """Maximise total value choosing at most (or exactly) one ``(weight, value)`` item per group, weight <= budget.

    ``backend="dp"`` is exact; ``backend="ortools"`` rounds ``value * value_scale`` to integers first.
    """
    budget = int(budget)
    _validate(groups, budget)
    if backend == "dp":
        return _solve_dp(groups, budget, exactly_one)
    if backend == "ortools":
        return _solve_ortools(groups, budget, exactly_one, value_scale, time_limit_s)
    raise ValueError(f"unknown knapsack backend {backend!r}; use 'dp' or 'ortools'")
