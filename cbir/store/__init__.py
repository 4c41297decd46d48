"""An index folder: catalogue, manifest, snapshot, DBA, the writer."""
