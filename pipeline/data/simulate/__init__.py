"""Simulated e-commerce search and recommendation logs with ground truth (`python -m pipeline simulate`)."""
