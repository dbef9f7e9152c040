"""The faces' library: the knobs, presets, URL and runs (knobs), the knobs as marimo elements (marimo_ui), the
same playground as Jupyter widgets (widgets) and the altair charts (viz). notebooks/copd_playground.py lays
them out and holds no logic of its own."""
