"""The estimator benchmark: noise injection, retrains, metrics and its report."""
