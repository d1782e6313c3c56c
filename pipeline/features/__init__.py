"""Stage 2, features: DuckDB runs the queries in `sql/` over the raw Parquet lake and writes
`lake/features/{pair_volume_hourly, region_demand_hourly, ...}` (`build`)."""
