"""Stage 1, ingest: read one data interval of each source dataset line by line (`lines`: one bad
line never costs another), type every cell strictly (`cells`), validate the rows with Great
Expectations (`expectations`), land valid rows in `lake/raw/` and bad rows in `lake/quarantine/`
(`loader`)."""
