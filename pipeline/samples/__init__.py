"""Sample source data in the documented formats (`generate`): seasonality, campaigns, bursts,
heavy tails, gaps and the documented dirty rows, byte-identical for a seed."""
