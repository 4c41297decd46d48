"""Per-file work in this process, worker processes or on Ray."""
