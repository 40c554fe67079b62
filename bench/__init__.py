"""krewe's benchmarks: each prints a table; none is a test."""
