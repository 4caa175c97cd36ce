"""The logs: the data contract, ingest, simulation, validation and drift."""
