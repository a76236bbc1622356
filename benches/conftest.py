"""Collect `benches/bench_*.py` (pytest only collects test_*.py by default); the benchmark
functions inside are named test_* as usual. Run: pytest benches --benchmark-only [-k NAME]."""

import pytest


def pytest_collect_file(parent, file_path):
    # A file named on the command line is collected by pytest itself: only add the others.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
