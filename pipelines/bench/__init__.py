"""Benchmarks: our stages measured side by side with their peers."""
