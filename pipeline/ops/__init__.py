"""Operations around the hourly run: alert rules (`monitoring`), the τ controller fed by IRC
outcomes (`feedback`), historical runs (`backfill`) and policy replays (`backtest`)."""

# The share of capacity-relevant requests that should be served from pre-allocation: the τ
# controller (`feedback`) steers each region toward it, the `hit_rate` alert (`monitoring`) fires below it.
HIT_RATE_TARGET = 0.90
