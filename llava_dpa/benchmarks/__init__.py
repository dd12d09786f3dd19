"""Benchmarks that measure DPA and its baseline side by side in one run and print ratios (docs/performance.md).
They sit above the zoo, whose tiny models they can build, and below the commands."""
