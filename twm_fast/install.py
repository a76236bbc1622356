"""Whether the imported twm_fast has its built parts, and the one command that gives them.

A source checkout holds `twm_fast/` but neither the compiled replay core (`twm_fast._replay`) nor
`twm_fast.kernels` (which lives in `kernels/`): both come from installing it. Python puts the current
directory first on its path, so a command run from the repository root imports the checkout's
`twm_fast/` even when a complete copy was installed into site-packages. The editable install
(`pip install -e .`) builds the extension in place and maps `twm_fast.kernels` onto `kernels/`,
so the checkout is complete wherever a command runs.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The parts an install adds: the replay backend "cpp" needs the first, the Triton path the second.
BUILT_PARTS = ("twm_fast._replay", "twm_fast.kernels")


def source_checkout() -> Path | None:
    """The repository root when twm_fast is imported from a source checkout, else None."""
    root = PACKAGE_DIR.parent
    return root if (root / "setup.py").is_file() and (root / "csrc").is_dir() else None


def missing_parts() -> list[str]:
    """The built parts this twm_fast cannot import."""
    return [name for name in BUILT_PARTS if importlib.util.find_spec(name) is None]


def install_command() -> str:
    """The command that completes this twm_fast. It works in a fresh venv: pip builds in an isolated
    environment with the build requirements (pybind11 among them) fetched from the package index."""
    root = source_checkout()
    if root is None:  # an installed copy without its parts: reinstall it from the clone
        return 'pip install -e ".[atari]" from the repository root'
    if root == Path.cwd().resolve():
        return 'pip install -e ".[atari]"'
    return f'pip install -e "{root}[atari]"'


def install_problem(needed: tuple[str, ...] = BUILT_PARTS) -> str | None:
    """One line naming the missing parts among `needed` and the command that builds them, or None."""
    missing = [name for name in missing_parts() if name in needed]
    if not missing:
        return None
    where = source_checkout()
    origin = (f"the source checkout {where} (a command run from the repository root imports it, not an "
              "installed copy)") if where else f"{PACKAGE_DIR}"
    return f"twm_fast is imported from {origin} and lacks {' and '.join(missing)}: install it with {install_command()}"
