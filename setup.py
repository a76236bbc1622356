"""Build the C++ replay core and map `kernels/` to `twm_fast.kernels`.

Everything else (metadata, dependencies) lives in pyproject.toml.
"""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

PACKAGES = [
    "twm_fast",
    "twm_fast.agent",
    "twm_fast.envs",
    "twm_fast.imagination",
    "twm_fast.models",
    "twm_fast.play_page",  # the play page's files (package data, no Python)
    "twm_fast.ops",
    "twm_fast.reference",
    "twm_fast.replay",
    "twm_fast.kernels",
]

# The replay core is header-only (csrc/*.hpp) behind one thin binding file; `depends` rebuilds
# the extension when a header changes.
replay_ext = Pybind11Extension(
    "twm_fast._replay",
    ["csrc/replay_bindings.cpp"],
    depends=["csrc/replay_core.hpp", "csrc/balanced_sampler.hpp"],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(
    packages=PACKAGES,
    package_dir={"twm_fast.kernels": "kernels"},
    ext_modules=[replay_ext],
    cmdclass={"build_ext": build_ext},
)
