-- Peak concurrent resources held per region and window (an hour, or a `plan_window_minutes` window).
--
-- A session holds its resources in its destination region over [t_start, t_end) (the `sessions`
-- view, sessions.sql). The concurrent level only changes at session
-- starts and ends, so the peak inside an hour is the largest level after any event time inside
-- it, or the level carried in at the hour's start (the same holds for any window). Ends and starts at the same instant are
-- netted before the level is read (RANGE frame over peers).
--
-- Inputs (registered by pipeline.features): sessions, regions(region),
-- hours(hour): every window's start. Parameters: $window_start, $window_end (UTC timestamps,
-- end-exclusive), $window_minutes (60 for hours; 30 or 15 divide the hour, so windows stay aligned).
WITH begun AS (
    SELECT * FROM sessions WHERE t_start < $window_end
),
events AS (
    SELECT region, t_start AS t, vcpu AS d_vcpu, memory_gib AS d_mem, storage_gib AS d_sto, bandwidth_gbps AS d_bw, 1 AS arrivals
    FROM begun
    UNION ALL
    SELECT region, t_end, -vcpu, -memory_gib, -storage_gib, -bandwidth_gbps, 0
    FROM begun
    WHERE t_end < $window_end
    UNION ALL
    SELECT r.region, h.hour, 0, 0, 0, 0, 0
    FROM regions AS r CROSS JOIN hours AS h
),
levels AS (
    SELECT
        region,
        t,
        arrivals,
        SUM(d_vcpu) OVER w AS vcpu,
        SUM(d_mem) OVER w AS memory_gib,
        SUM(d_sto) OVER w AS storage_gib,
        SUM(d_bw) OVER w AS bandwidth_gbps
    FROM events
    WINDOW w AS (PARTITION BY region ORDER BY t RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT
    time_bucket(to_minutes(CAST($window_minutes AS BIGINT)), t) AS hour,
    region,
    greatest(round(max(vcpu), 6), 0) AS vcpu,
    greatest(round(max(memory_gib), 6), 0) AS memory_gib,
    greatest(round(max(storage_gib), 6), 0) AS storage_gib,
    greatest(round(max(bandwidth_gbps), 6), 0) AS bandwidth_gbps,
    CAST(sum(arrivals) AS BIGINT) AS arrivals
FROM levels
WHERE t >= $window_start AND t < $window_end
  AND region IN (SELECT region FROM regions)
GROUP BY ALL
ORDER BY region, hour;
