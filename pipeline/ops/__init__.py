"""Running the retrain: repro, the weekly selection, leases, events, workspaces, summaries."""
