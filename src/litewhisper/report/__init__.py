"""Report stage: tables and figures from evaluations and benchmarks (the bottom of the pipeline)."""
