"""twm-fast: a fast, faithful implementation of TWM (Robine et al., ICLR 2023)."""

__version__ = "0.1.0"
