"""Stage 1, ingest: read one data interval of each source dataset, validate it with Great
Expectations (`expectations`), land valid rows in `lake/raw/` and bad rows in `lake/quarantine/`
(`loader`)."""
