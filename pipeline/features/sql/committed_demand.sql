-- Resources that sessions already running at `origin` will still hold at `target`.
--
-- A session holds its resources in its destination region over [requested_at, requested_at +
-- duration_s). Its duration is declared with the request, so at any `origin` the level each
-- running session keeps up to its end is known, not forecast: that is the committed demand. For
-- origin = target it is the level carried into the hour from earlier hours (the rest of the
-- hour's peak comes from new arrivals).
--
-- Inputs (registered by pipeline.forecast.committed): requests(peering_requests rows),
-- regions(region), points(origin, target) with target >= origin.
WITH sessions AS (
    SELECT
        destination_region AS region,
        requested_at AS t_start,
        requested_at + to_microseconds(CAST(round(duration_s * 1e6) AS BIGINT)) AS t_end,
        vcpu, memory_gib, storage_gib, bandwidth_gbps
    FROM requests
    WHERE destination_region IN (SELECT region FROM regions)
),
held AS (
    SELECT p.origin, p.target, s.region,
           sum(s.vcpu) AS vcpu, sum(s.memory_gib) AS memory_gib,
           sum(s.storage_gib) AS storage_gib, sum(s.bandwidth_gbps) AS bandwidth_gbps
    FROM points AS p
    JOIN sessions AS s ON s.t_start < p.origin AND s.t_end > p.target
    GROUP BY ALL
)
SELECT p.origin, p.target, r.region,
       coalesce(round(h.vcpu, 6), 0) AS vcpu,
       coalesce(round(h.memory_gib, 6), 0) AS memory_gib,
       coalesce(round(h.storage_gib, 6), 0) AS storage_gib,
       coalesce(round(h.bandwidth_gbps, 6), 0) AS bandwidth_gbps
FROM points AS p CROSS JOIN regions AS r
LEFT JOIN held AS h ON h.origin = p.origin AND h.target = p.target AND h.region = r.region
ORDER BY r.region, p.origin, p.target;
