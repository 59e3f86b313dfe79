"""``make bench``: run every ``bench_*.py`` here and write ``RESULTS.md``.

Each benchmark module defines ``run(quick: bool = False) -> list[dict]``; every dict is one table:
``{"title": str, "columns": [str, ...], "rows": [[...], ...], "notes": str}``. Each row states a
ratio against a baseline measured in the same run.
"""
