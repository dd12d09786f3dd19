"""Evaluation: turning benchmark scores into the paper's tables."""
