"""After the gate: champion registry, promote, rollback, publish, restore and lineage."""
