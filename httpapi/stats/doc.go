// Package stats keeps, in memory, the last hour of a broker's rates and
// gauges at a fixed resolution (10 s by default), for GET /v1/stats and the
// dashboard: per topic the messages stored and consumed a second; per
// consumer group the messages consumed a second, its lag, its messages in
// flight and its dead letters; and the totals.
//
// A Recorder is fed Snapshots of cumulative counters (what a topic has
// stored, how far each group has consumed each topic) and gauges, one per
// step, by Run from a Source; rates are the difference between two
// consecutive snapshots over the time between them. Nothing is kept on
// disk: after a restart the series start again, empty.
//
// # Invariants
//
//   - Points are at consecutive multiples of the resolution (wall clock,
//     truncated), so the series of several brokers line up and can be
//     summed point by point.
//   - A step without a sample (the sampler was stalled: a long GC, a
//     SIGSTOP, a source that took too long) is a gap, a null point, never
//     an interpolated one; it is counted (postbus_stats_missed_samples_total)
//     and logged at ERROR. So is a failed sample
//     (postbus_stats_sample_errors_total).
//   - At most Config.MaxTopics topics and Config.MaxGroups groups are
//     tracked, so the memory is bounded (about 3 KiB a point series); what
//     is left out is counted (postbus_stats_untracked_series) and logged
//     at ERROR, never silently missing.
//   - A counter that goes backwards (a group's offsets reset to earlier,
//     a topic deleted and created again) gives no rate for that step (a
//     null point), not a negative one.
//   - A series not seen for a whole window is forgotten.
package stats
