"""Analysis tools for the paper's section 4.4 and Appendix C (definitions: shared/reference/analysis-metrics.md)."""
