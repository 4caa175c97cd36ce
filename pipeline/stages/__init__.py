"""One module per dvc.yaml stage: argument parsing and run(). No module imports these."""
