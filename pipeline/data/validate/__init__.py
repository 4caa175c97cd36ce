"""Checking a day against the data contract: rules, Great Expectations suites, drift window, report."""
