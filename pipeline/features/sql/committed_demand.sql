-- Resources that sessions already running at `origin` will still hold at `target`.
--
-- A session holds its resources in its destination region over [t_start, t_end) (the
-- `sessions` view, sessions.sql). Its duration is declared with the request, so at any `origin` the level each
-- running session keeps up to its end is known, not forecast: that is the committed demand. For
-- origin = target it is the level carried into the hour from earlier hours (the rest of the
-- hour's peak comes from new arrivals).
--
-- Inputs (registered by pipeline.features.committed_levels): sessions, regions(region),
-- points(origin, target) with target >= origin.
WITH held AS (
    SELECT p.origin, p.target, s.region,
           sum(s.vcpu) AS vcpu, sum(s.memory_gib) AS memory_gib,
           sum(s.storage_gib) AS storage_gib, sum(s.bandwidth_gbps) AS bandwidth_gbps
    FROM points AS p
    JOIN sessions AS s ON s.t_start < p.origin AND s.t_end > p.target
    WHERE s.region IN (SELECT region FROM regions)
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
