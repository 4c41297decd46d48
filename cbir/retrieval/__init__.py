"""Query inputs -> vectors -> results; near-duplicates."""
