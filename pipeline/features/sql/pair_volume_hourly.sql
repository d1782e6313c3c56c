-- Hourly peering request volume per ordered region pair, zero-filled for every known pair.
--
-- Inputs (registered by pipeline.features): requests, regions(region), hours(hour).
-- Parameters: $window_start, $window_end (UTC timestamps, end-exclusive).
WITH pairs AS (
    SELECT s.region AS source_region, d.region AS destination_region
    FROM regions AS s CROSS JOIN regions AS d
    WHERE s.region <> d.region
),
grid AS (
    SELECT h.hour, p.source_region, p.destination_region
    FROM hours AS h CROSS JOIN pairs AS p
),
volume AS (
    SELECT
        date_trunc('hour', requested_at) AS hour,
        source_region,
        destination_region,
        count(*) AS requests,
        sum(vcpu) AS vcpu,
        sum(memory_gib) AS memory_gib,
        sum(storage_gib) AS storage_gib,
        sum(bandwidth_gbps) AS bandwidth_gbps,
        sum(duration_s) AS duration_s
    FROM requests
    WHERE requested_at >= $window_start AND requested_at < $window_end
    GROUP BY ALL
)
SELECT
    g.hour,
    g.source_region,
    g.destination_region,
    CAST(coalesce(v.requests, 0) AS BIGINT) AS requests,
    coalesce(v.vcpu, 0) AS vcpu,
    coalesce(v.memory_gib, 0) AS memory_gib,
    coalesce(v.storage_gib, 0) AS storage_gib,
    coalesce(v.bandwidth_gbps, 0) AS bandwidth_gbps,
    coalesce(v.duration_s, 0) AS duration_s
FROM grid AS g
LEFT JOIN volume AS v USING (hour, source_region, destination_region)
ORDER BY g.source_region, g.destination_region, g.hour;
