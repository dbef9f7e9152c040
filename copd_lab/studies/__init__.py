"""Analyses that run the library and read its rows: the simulator's mechanism signatures (mechanisms), the
paper's findings checked against a run (paper_checks), and the OPD signal token by token (inspector)."""
