"""dcforge: declarative infrastructure and acceptance benchmarks for AI GPU data centers."""

__version__ = "0.1.0"
