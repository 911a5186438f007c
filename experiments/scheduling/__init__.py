"""Scheduling experiments: NotebookOS against reservation (and batch) on a month of notebook sessions, in the
simulator (``notebookos_vs_reservation.ipynb``; helpers in :mod:`experiments.scheduling.savings`)."""
