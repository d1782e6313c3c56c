"""Stage 6, publish: flip `lake/plans/LATEST` to a finished plan, atomically and last
(`pointer`); audit the published plan the way the request path will read it (`audit`)."""
