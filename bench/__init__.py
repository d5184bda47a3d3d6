"""Side-by-side benchmark runners, not part of the product. A regular package (not a namespace
one), so that `bench.gpu.vs_abcrown` is this checkout's even where another `bench` is installed."""
