"""The ingest command: a user's Parquet or CSV logs brought into the data contract's layout."""
