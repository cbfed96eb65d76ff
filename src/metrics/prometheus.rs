//! The shards' [`Snapshot`]s in the Prometheus text format (OpenMetrics),
//! encoded by the `prometheus-client` crate. Every series has a `shard`
//! label, so imbalance between cores shows; totals are Prometheus `sum`s.

use super::{Snapshot, SyncLatency, SYNC_LATENCY_BOUNDS_US};
use prometheus_client::encoding::{
    text::encode, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardQoSLabel {
    shard: u64,
    qos: u64,
}

/// A counter family labelled by shard, registered as `ringmq_{name}`.
fn counter(registry: &mut Registry, name: &str, help: &str) -> Family<ShardLabel, Counter> {
    let family = Family::<ShardLabel, Counter>::default();
    registry.register(format!("ringmq_{name}"), help, family.clone());
    family
}

/// Each shard's [`SyncLatency`], as one Prometheus histogram per shard
/// (in seconds): the shards count into fixed buckets, so the histogram is
/// encoded from those counts rather than observed here.
#[derive(Debug)]
struct ShardSyncLatency(Vec<(u64, SyncLatency)>);

impl EncodeMetric for ShardSyncLatency {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (shard, latency) in &self.0 {
            let bounds = SYNC_LATENCY_BOUNDS_US.iter().map(|&us| us as f64 / 1e6);
            let buckets: Vec<(f64, u64)> =
                bounds.chain([f64::INFINITY]).zip(latency.buckets.iter().copied()).collect();
            let label = ShardLabel { shard: *shard };
            encoder.encode_family(&label)?.encode_histogram::<NoLabelSet>(
                latency.sum_us as f64 / 1e6,
                latency.count(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A gauge family labelled by shard, registered as `ringmq_{name}`.
fn gauge(registry: &mut Registry, name: &str, help: &str) -> Family<ShardLabel, Gauge> {
    let family = Family::<ShardLabel, Gauge>::default();
    registry.register(format!("ringmq_{name}"), help, family.clone());
    family
}

/// A counter family labelled by shard and QoS, registered as
/// `ringmq_{name}`.
fn qos_counter(registry: &mut Registry, name: &str, help: &str) -> Family<ShardQoSLabel, Counter> {
    let family = Family::<ShardQoSLabel, Counter>::default();
    registry.register(format!("ringmq_{name}"), help, family.clone());
    family
}

/// (name, help, value) of a series labelled by shard.
type Field<T> = (&'static str, &'static str, fn(&Snapshot) -> T);

/// The gauges: what the shard holds now.
const GAUGES: [Field<usize>; 11] = [
    ("sessions", "Sessions, connected or not", |s| s.sessions),
    ("sessions_online", "Sessions with a connection attached", |s| s.sessions_online),
    ("subscriptions", "Subscriptions (each shared group member counts)", |s| s.subscriptions),
    ("retained_messages", "Retained messages stored", |s| s.retained),
    ("retained_bytes", "Payload bytes of the retained messages", |s| s.retained_bytes),
    ("cross_core_queued", "Publishes waiting in the queues towards other shards", |s| {
        s.cross_core_queued
    }),
    ("queued_messages", "Messages queued for sessions, online and offline, not yet sent", |s| {
        s.queued_messages
    }),
    ("queued_bytes", "Topic and payload bytes of the queued messages (max_queued_bytes)", |s| {
        s.queued_bytes
    }),
    ("inflight_messages", "QoS 1/2 messages sent to clients and not yet acknowledged", |s| {
        s.inflight_messages
    }),
    ("shared_groups", "Shared subscription groups with a member on the shard", |s| s.shared_groups),
    (
        "topic_gates",
        "Topics whose QoS 1/2 publishers are held for a subscriber past its limits",
        |s| s.topic_gates,
    ),
];

/// The counters labelled by shard and QoS.
const QOS_COUNTERS: [Field<[u64; 3]>; 3] = [
    ("messages_received", "PUBLISH packets accepted from clients, by QoS", |s| {
        s.counters.shard.messages_received
    }),
    ("publishes_sent", "PUBLISH packets sent to clients, by QoS as sent", |s| {
        s.counters.session.publishes_sent
    }),
    (
        "dropped_queue_full",
        "Messages dropped because a subscriber's queue was full, by QoS as sent",
        |s| s.counters.session.dropped_queue_full,
    ),
];

/// The counters labelled by shard only.
const COUNTERS: [Field<u64>; 93] = [
    ("accepted", "Connections accepted", |s| s.counters.net.accepted),
    ("refused_at_limit", "Connections refused at max_connections (process or listener)", |s| {
        s.counters.net.refused_limit
    }),
    ("refused_rate", "Connections refused over their listener's max_connection_rate", |s| {
        s.counters.net.refused_rate
    }),
    ("handed_off", "Connections moved to their home shard", |s| s.counters.net.handed_off),
    ("malformed", "Connections closed for a malformed packet", |s| s.counters.net.malformed),
    ("connect_timeouts", "Connections closed without a CONNECT within connect_timeout_ms", |s| {
        s.counters.net.connect_timeouts
    }),
    ("connect_too_large", "Connections closed for a CONNECT over max_connect_size", |s| {
        s.counters.net.connect_too_large
    }),
    ("connect_budget_exceeded", "Connections closed at max_pending_connect_bytes", |s| {
        s.counters.net.connect_budget_exceeded
    }),
    (
        "proxy_header_invalid",
        "Connections closed without a valid PROXY header (proxy_protocol listeners)",
        |s| s.counters.net.proxy_header_invalid,
    ),
    ("auth_failed", "CONNECTs refused for their credentials (or their absence)", |s| {
        s.counters.net.auth_failed
    }),
    ("auth_busy", "CONNECTs refused because password checks were backed up", |s| {
        s.counters.net.auth_busy
    }),
    ("redirected", "CONNECTs sent to another server ([redirect])", |s| s.counters.net.redirected),
    ("tls_handshakes", "TLS handshakes completed", |s| s.counters.net.tls_handshakes),
    ("tls_failed_certificate", "TLS handshakes failed for a certificate", |s| {
        s.counters.net.tls_failed_certificate
    }),
    ("tls_failed_protocol", "TLS handshakes failed: no common version, cipher or ALPN", |s| {
        s.counters.net.tls_failed_protocol
    }),
    ("tls_failed_timeout", "TLS handshakes not done within connect_timeout_ms", |s| {
        s.counters.net.tls_failed_timeout
    }),
    ("tls_failed_other", "TLS handshakes failed otherwise (not TLS, peer gone)", |s| {
        s.counters.net.tls_failed_other
    }),
    ("ws_upgrades", "WebSocket upgrades accepted", |s| s.counters.net.ws_upgrades),
    ("ws_upgrade_failed", "WebSocket upgrade requests refused", |s| {
        s.counters.net.ws_upgrade_failed
    }),
    ("bytes_received", "Bytes of MQTT packets read from clients", |s| {
        s.counters.net.bytes_received
    }),
    ("bytes_sent", "Bytes of MQTT packets written to clients", |s| s.counters.net.bytes_sent),
    ("deliveries", "Deliveries queued to subscribers", |s| s.counters.shard.deliveries),
    ("deliveries_dropped", "Deliveries not queued", |s| s.counters.shard.deliveries_dropped),
    ("takeovers", "Connections taken over by a new one with the same client id", |s| {
        s.counters.shard.takeovers
    }),
    ("sessions_expired", "Sessions ended after their expiry", |s| {
        s.counters.shard.sessions_expired
    }),
    ("retained_expired", "Retained messages dropped when their expiry ran out", |s| {
        s.counters.shard.retained_expired
    }),
    ("protocol_violations", "Connections closed for a protocol violation", |s| {
        s.counters.shard.protocol_violations
    }),
    ("store_records_recovered", "Durable log records read back at start", |s| {
        s.counters.store.records_recovered
    }),
    ("store_torn_tails", "Log segments whose torn or damaged tail was cut off at start", |s| {
        s.counters.store.torn_tails
    }),
    ("store_torn_bytes", "Bytes cut off torn log tails at start", |s| s.counters.store.torn_bytes),
    ("store_records_written", "Durable log records appended", |s| s.counters.store.records_written),
    ("store_bytes_written", "Bytes written to durable log segments", |s| {
        s.counters.store.bytes_written
    }),
    ("store_syncs", "Group commits of the durable log made durable (an fdatasync each; with always, O_DSYNC writes)", |s| {
        s.counters.store.syncs
    }),
    ("store_compactions", "Durable log snapshots written by compaction", |s| {
        s.counters.store.compactions
    }),
    ("store_write_errors", "Durable log writes or syncs that failed and were retried", |s| {
        s.counters.store.write_errors
    }),
    ("duplicate_qos2_received", "Re-sent QoS 2 PUBLISHes not routed again", |s| {
        s.counters.session.duplicate_qos2_received
    }),
    ("publishes_resent", "PUBLISH packets re-sent with DUP on a resumed session", |s| {
        s.counters.session.publishes_resent
    }),
    ("unexpected_acks", "Acknowledgements for a packet id not in flight (ignored)", |s| {
        s.counters.session.unexpected_acks
    }),
    ("dropped_offline_qos0", "QoS 0 messages for clients not connected", |s| {
        s.counters.session.dropped_offline_qos0
    }),
    ("dropped_retained_limit", "Retained messages past max_queued_retained", |s| {
        s.counters.session.dropped_retained_limit
    }),
    ("dropped_expired", "Messages whose Message Expiry Interval ran out", |s| {
        s.counters.session.dropped_expired
    }),
    ("dropped_too_large", "Messages larger than the client's Maximum Packet Size", |s| {
        s.counters.session.dropped_too_large
    }),
    (
        "payload_format_invalid",
        "PUBLISHes and wills refused with 0x99 Payload format invalid",
        |s| s.counters.session.payload_format_invalid,
    ),
    ("topic_filters_invalid", "v5 SUBSCRIBE/UNSUBSCRIBE filters refused with 0x8F", |s| {
        s.counters.session.topic_filters_invalid
    }),
    (
        "subscriptions_quota_exceeded",
        "Subscriptions refused past max_subscriptions_per_client",
        |s| s.counters.session.subscriptions_quota_exceeded,
    ),
    ("reauth_failed", "v5 re-authentications failed or timed out (connection closed)", |s| {
        s.counters.session.reauth_failed
    }),
    (
        "refused_store_unavailable",
        "QoS 1/2 publishes refused while the durable log could not be written (disk full, EIO)",
        |s| s.counters.session.refused_store_unavailable,
    ),
    (
        "topic_limit_exceeded",
        "Topics and filters refused past max_topic_length or max_topic_levels",
        |s| s.counters.session.topic_limit_exceeded,
    ),
    ("client_id_too_long", "CONNECTs refused past max_client_id_length", |s| {
        s.counters.session.client_id_too_long
    }),
    (
        "publish_rate_limited",
        "Times a connection was paced past max_publish_rate or max_publish_bytes_rate",
        |s| s.counters.session.publish_rate_limited,
    ),
    (
        "retained_limit_exceeded",
        "New retained topics not stored past max_retained_messages or max_retained_bytes",
        |s| s.counters.shard.retained_limit_exceeded,
    ),
    ("acl_denied_publish", "PUBLISH packets and wills the ACL file refused", |s| {
        s.counters.session.acl_denied_publish
    }),
    ("acl_denied_subscribe", "SUBSCRIBE filters the ACL file refused", |s| {
        s.counters.session.acl_denied_subscribe
    }),
    ("acl_denied_delivery", "Messages not sent: the subscriber may not read the topic", |s| {
        s.counters.session.acl_denied_delivery
    }),
    ("cross_core_qos0_dropped", "QoS 0 publishes dropped towards a full core", |s| {
        s.counters.router.cross_core_qos0_dropped
    }),
    (
        "deliveries_over_limit",
        "QoS 1/2 deliveries queued past an online subscriber's limits instead of dropped",
        |s| s.counters.shard.deliveries_over_limit,
    ),
    ("overloads", "Times an online session went past its queue limits (publishers slowed)", |s| {
        s.counters.shard.overloads
    }),
    (
        "slow_consumers_disconnected",
        "Clients disconnected past their queue limits for slow_consumer_timeout_ms",
        |s| s.counters.shard.slow_consumers_disconnected,
    ),
    ("dropped_slow_consumer", "Messages cut from the queue of a disconnected slow consumer", |s| {
        s.counters.session.dropped_slow_consumer
    }),
    (
        "publishers_held",
        "Times a connection stopped being read: its QoS 1/2 publish met backpressure",
        |s| s.counters.net.publishers_held,
    ),
    (
        "cross_core_congestion_events",
        "Times a queue towards another shard passed its high-water mark",
        |s| s.counters.router.congestion_events,
    ),
    ("dropped_no_subscribers", "Messages received that matched no subscription", |s| {
        s.counters.router.dropped_no_subscribers
    }),
    ("cluster_published", "Messages published to NATS (node-wide, on shard 0)", |s| {
        s.counters.cluster.published
    }),
    ("cluster_published_qos12", "QoS 1/2 messages published to NATS", |s| {
        s.counters.cluster.published_qos12
    }),
    ("cluster_publish_failed", "Messages NATS refused (e.g. past its max_payload)", |s| {
        s.counters.cluster.publish_failed
    }),
    ("cluster_subject_too_long", "Topics and filters too long for a NATS subject", |s| {
        s.counters.cluster.subject_too_long
    }),
    (
        "cluster_outbound_dropped_qos0",
        "QoS 0 messages dropped: the queue to the NATS bridge was full",
        |s| s.counters.cluster.outbound_dropped_qos0,
    ),
    (
        "cluster_outbound_spilled_qos12",
        "QoS 1/2 messages that waited in their shard: the queue to the NATS bridge was full",
        |s| s.counters.cluster.outbound_spilled_qos12,
    ),
    ("cluster_received", "Messages received from other nodes", |s| s.counters.cluster.received),
    (
        "cluster_duplicates",
        "Messages received twice from NATS (overlapping subscriptions), dropped",
        |s| s.counters.cluster.duplicates,
    ),
    (
        "cluster_stale",
        "Messages from NATS too late to be told from duplicates (QoS 0 dropped, 1/2 delivered)",
        |s| s.counters.cluster.stale,
    ),
    ("cluster_malformed", "Messages from NATS that were not ringmq frames", |s| {
        s.counters.cluster.malformed
    }),
    (
        "cluster_inbound_dropped",
        "Messages from NATS dropped: the queue to their shard was full",
        |s| s.counters.cluster.inbound_dropped,
    ),
    (
        "cluster_slow_consumer",
        "Messages from NATS dropped by the client: the bridge read too slowly",
        |s| s.counters.cluster.slow_consumer,
    ),
    ("cluster_connects", "Connections to NATS made (first and reconnections)", |s| {
        s.counters.cluster.connects
    }),
    ("cluster_disconnects", "Connections to NATS lost", |s| s.counters.cluster.disconnects),
    ("cluster_remote_acked", "QoS 1/2 messages acknowledged by every interested node", |s| {
        s.counters.cluster.remote_acked
    }),
    ("cluster_resent", "QoS 1/2 messages sent again to a node that had not acknowledged", |s| {
        s.counters.cluster.resent
    }),
    ("cluster_nodes_expired", "Nodes taken for dead: silent for cluster.node_timeout_ms", |s| {
        s.counters.cluster.nodes_expired
    }),
    (
        "cluster_group_moved",
        "Shared group copies of QoS 1/2 messages sent to another node than first chosen",
        |s| s.counters.cluster.group_moved,
    ),
    (
        "cluster_retained_written",
        "Retained messages and deletes written to the cluster's JetStream bucket",
        |s| s.counters.cluster.retained_written,
    ),
    (
        "cluster_retained_failed",
        "Retained messages the cluster's bucket refused: kept on their node",
        |s| s.counters.cluster.retained_failed,
    ),
    (
        "cluster_retained_applied",
        "Changes of the cluster's retained messages applied from the bucket",
        |s| s.counters.cluster.retained_applied,
    ),
    ("cluster_session_claims", "Client ids claimed in the cluster's session directory", |s| {
        s.counters.cluster.session_claims
    }),
    (
        "cluster_session_claims_failed",
        "Claims of client ids that could not be made: accepted on this node alone",
        |s| s.counters.cluster.session_claims_failed,
    ),
    ("cluster_session_takeovers", "Sessions taken over from another node", |s| {
        s.counters.cluster.session_takeovers
    }),
    (
        "cluster_session_forwarded",
        "Messages sent on to the node a session moved to, and acknowledged by it",
        |s| s.counters.cluster.session_forwarded,
    ),
    (
        "cluster_session_forward_failed",
        "Messages for a session that moved away that its new node never acknowledged: lost",
        |s| s.counters.cluster.session_forward_failed,
    ),
    (
        "cluster_session_move_duplicates",
        "Second copies of a message that reached a session around its move, dropped",
        |s| s.counters.cluster.session_move_duplicates,
    ),
    (
        "cluster_session_hold_expired",
        "Sessions that moved here and stopped holding back at the deadline, without their old \
         node's word: order not guaranteed",
        |s| s.counters.cluster.session_hold_expired,
    ),
    (
        "cluster_session_forward_resent",
        "Messages sent on to a session's new node again after no answer: order not guaranteed",
        |s| s.counters.cluster.session_forward_resent,
    ),
    (
        "cluster_session_released",
        "Session directory entries removed because their session ended on this node",
        |s| s.counters.cluster.session_released,
    ),
    (
        "cluster_session_release_failed",
        "Session directory entries of sessions that ended here that could not be removed",
        |s| s.counters.cluster.session_release_failed,
    ),
];

/// Renders `snapshots` (one per shard) and the process's open connections.
pub fn render(snapshots: &[Snapshot], connections: usize) -> String {
    let mut registry = Registry::default();
    let open = Gauge::<i64>::default();
    registry.register("ringmq_connections", "Client connections open now", open.clone());
    open.set(i64::try_from(connections).unwrap_or(i64::MAX));
    let gauges: Vec<_> =
        GAUGES.iter().map(|(name, help, _)| gauge(&mut registry, name, help)).collect();
    let qos_counters: Vec<_> =
        QOS_COUNTERS.iter().map(|(name, help, _)| qos_counter(&mut registry, name, help)).collect();
    let counters: Vec<_> =
        COUNTERS.iter().map(|(name, help, _)| counter(&mut registry, name, help)).collect();
    let sync_latency =
        snapshots.iter().map(|s| (s.shard as u64, s.counters.store.sync_latency.clone()));
    registry.register(
        "ringmq_store_sync_seconds",
        "Time each group commit of the durable log took to become durable (with always its O_DSYNC write, else its fdatasync)",
        ShardSyncLatency(sync_latency.collect()),
    );
    for snapshot in snapshots {
        let shard = snapshot.shard as u64;
        let label = ShardLabel { shard };
        for ((_, _, value), family) in GAUGES.iter().zip(&gauges) {
            family.get_or_create(&label).set(i64::try_from(value(snapshot)).unwrap_or(i64::MAX));
        }
        for ((_, _, values), family) in QOS_COUNTERS.iter().zip(&qos_counters) {
            for (qos, value) in values(snapshot).into_iter().enumerate() {
                family.get_or_create(&ShardQoSLabel { shard, qos: qos as u64 }).inc_by(value);
            }
        }
        for ((_, _, value), family) in COUNTERS.iter().zip(&counters) {
            family.get_or_create(&label).inc_by(value(snapshot));
        }
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_labelled_by_shard_and_parses_as_openmetrics() {
        let mut first = Snapshot { shard: 0, sessions: 3, ..Snapshot::default() };
        first.counters.shard.messages_received = [41, 0, 0];
        first.counters.session.dropped_queue_full = [1, 2, 0];
        first.counters.session.payload_format_invalid = 3;
        let second = Snapshot { shard: 1, sessions: 5, ..Snapshot::default() };
        let text = render(&[first, second], 7);
        assert!(text.contains("ringmq_connections 7\n"), "{text}");
        assert!(text.contains("ringmq_sessions{shard=\"1\"} 5\n"), "{text}");
        let received = "ringmq_messages_received_total{shard=\"0\",qos=\"0\"} 41\n";
        assert!(text.contains(received), "{text}");
        assert!(text.contains("ringmq_dropped_queue_full_total{shard=\"0\",qos=\"1\"} 2\n"));
        assert!(text.contains("ringmq_payload_format_invalid_total{shard=\"0\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE ringmq_accepted counter\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE ringmq_store_sync_seconds histogram\n"), "{text}");
        // Every sample line: a name, labels, one value.
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("ringmq_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn the_grafana_dashboard_reads_only_series_that_exist() {
        let dashboard = include_str!("../../deploy/grafana/ringmq-dashboard.json");
        let text = render(&[Snapshot::default()], 0);
        let exposed: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let mut used = 0;
        for (at, _) in dashboard.match_indices("ringmq_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // The dashboard's uid and tags are not series.
            if name == "ringmq_" {
                continue;
            }
            assert!(exposed.contains(&name.as_str()), "the dashboard reads {name}, not exposed");
            used += 1;
        }
        assert!(used > 20, "the dashboard's queries were not found");
    }

    #[test]
    fn sync_latency_is_a_cumulative_histogram_in_seconds_per_shard() {
        let mut snapshot = Snapshot::default();
        let latency = &mut snapshot.counters.store.sync_latency;
        for us in [40, 400, 900, 3_000, 2_000_000] {
            latency.record(std::time::Duration::from_micros(us));
        }
        let text = render(&[snapshot], 0);
        let line =
            |le: &str| format!("ringmq_store_sync_seconds_bucket{{le=\"{le}\",shard=\"0\"}}");
        let value = |series: &str| {
            let found = text.lines().find(|l| l.starts_with(series));
            found.and_then(|l| l.rsplit_once(' ')).map(|(_, v)| v.to_owned())
        };
        assert_eq!(value(&line("0.00005")).as_deref(), Some("1"), "{text}");
        assert_eq!(value(&line("0.001")).as_deref(), Some("3"), "cumulative: {text}");
        assert_eq!(value(&line("1.0")).as_deref(), Some("4"), "{text}");
        assert_eq!(value(&line("+Inf")).as_deref(), Some("5"), "{text}");
        assert_eq!(value("ringmq_store_sync_seconds_count{").as_deref(), Some("5"), "{text}");
        assert_eq!(value("ringmq_store_sync_seconds_sum{").as_deref(), Some("2.00434"), "{text}");
    }
}
