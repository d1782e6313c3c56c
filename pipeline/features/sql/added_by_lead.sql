-- What sessions begun at or after an origin add to each window ahead of it, per region.
--
-- At a run's origin o the resources held by sessions already running are known (committed
-- demand, committed_demand.sql). What a window [o + k·W, o + (k+1)·W) will need on top is the
-- peak of the level held by sessions that start from o on: this query computes that peak for
-- every origin of the history and every lead k, so that it can be forecast per lead (and added to
-- the committed level at the run's origin). Sessions hold [t_start, t_end) (the `sessions` view,
-- sessions.sql); starts and ends at one instant are netted before the level is read.
--
-- Inputs (registered by pipeline.features.committed_levels): sessions, regions(region),
-- origins(origin), leads(lead = 0 … K − 1). Parameters: $window_minutes (W), $data_end (only
-- windows that end by it are complete, later ones are left out).
WITH span AS (
    SELECT to_minutes(CAST($window_minutes * (SELECT count(*) FROM leads) AS BIGINT)) AS length
),
started AS (
    SELECT o.origin, s.*
    FROM origins AS o
    JOIN sessions AS s ON s.t_start >= o.origin AND s.t_start < o.origin + (SELECT length FROM span)
    WHERE s.region IN (SELECT region FROM regions)
),
events AS (
    SELECT origin, region, t_start AS t, vcpu AS d_vcpu, memory_gib AS d_mem, storage_gib AS d_sto, bandwidth_gbps AS d_bw
    FROM started
    UNION ALL
    SELECT origin, region, t_end, -vcpu, -memory_gib, -storage_gib, -bandwidth_gbps
    FROM started
    WHERE t_end < origin + (SELECT length FROM span)
    UNION ALL
    SELECT o.origin, r.region, o.origin + to_minutes(CAST(l.lead * $window_minutes AS BIGINT)), 0, 0, 0, 0
    FROM origins AS o CROSS JOIN regions AS r CROSS JOIN leads AS l
),
levels AS (
    SELECT
        origin,
        region,
        t,
        SUM(d_vcpu) OVER w AS vcpu,
        SUM(d_mem) OVER w AS memory_gib,
        SUM(d_sto) OVER w AS storage_gib,
        SUM(d_bw) OVER w AS bandwidth_gbps
    FROM events
    WINDOW w AS (PARTITION BY origin, region ORDER BY t RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
windowed AS (
    SELECT *, CAST((epoch_us(t) - epoch_us(origin)) // (CAST($window_minutes AS BIGINT) * 60000000) AS BIGINT) AS lead
    FROM levels
    WHERE t < origin + (SELECT length FROM span)
)
SELECT
    origin,
    lead,
    region,
    greatest(round(max(vcpu), 6), 0) AS vcpu,
    greatest(round(max(memory_gib), 6), 0) AS memory_gib,
    greatest(round(max(storage_gib), 6), 0) AS storage_gib,
    greatest(round(max(bandwidth_gbps), 6), 0) AS bandwidth_gbps
FROM windowed
WHERE origin + to_minutes(CAST((lead + 1) * $window_minutes AS BIGINT)) <= $data_end
GROUP BY ALL
ORDER BY region, lead, origin;
