"""Artifacts: the compiled device and cloud libraries, weights and tables, on disk."""
