"""Operations around the hourly run: alert rules (`monitoring`), the τ controller fed by IRC
outcomes (`feedback`), historical runs (`backfill`) and policy replays (`backtest`)."""
