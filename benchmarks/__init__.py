"""hpa-tf benchmarks: ``python -m benchmarks [--only NAME ...] [--out DIR]``."""
