"""mrt-star: MRT-STaR data pipeline (library). Stages in `stages/` wire these modules together."""

__version__ = "0.1.0"
