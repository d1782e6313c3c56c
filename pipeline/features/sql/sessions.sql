-- The `sessions` view every feature query reads (created by pipeline.features.sessions).
--
-- A peering session holds its resources in its destination region over [requested_at,
-- requested_at + duration_s): end-exclusive, to the microsecond. Defined once, here, so that the
-- demand, committed and added levels all agree on when a session holds what.
CREATE VIEW sessions AS
SELECT
    destination_region AS region,
    requested_at AS t_start,
    requested_at + to_microseconds(CAST(round(duration_s * 1e6) AS BIGINT)) AS t_end,
    vcpu, memory_gib, storage_gib, bandwidth_gbps
FROM requests;
