"""The GPU runs' scripts (README.md here); `vs_abcrown` is bench_vs_abcrown.py's package."""
