//! What a run measures, shared by the code that measures it and the code
//! that reports it: the latency histogram's bounds, the per-executor and
//! per-run results [`runner`](crate::runner) fills in, and the summaries
//! (percentiles, one second of the timeline) that both the runner's live
//! timeline and the [`report`](crate::report) are made of.
//!
//! It owns the data and nothing else: no IO, no threads, no checks of what
//! the QoS allows (that is the report's).

use crate::plan::Expect;
use crate::tracker::StreamMap;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Highest latency the histograms hold, in microseconds (larger values are
/// recorded as this).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A new latency histogram in microseconds, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// The histogram in HdrHistogram's V2 serialization (uncompressed), base64
/// with the standard alphabet: what `ringmq-bench merge` adds up, and what
/// other HdrHistogram implementations read (after base64 decoding).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The histogram [`encode_histogram`] wrote.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram is not an HdrHistogram V2 serialization: {e:?}"))
}

/// Latency percentiles in microseconds, and the histogram they come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// The whole histogram ([`encode_histogram`]), so that reports of
    /// several processes merge exactly (`ringmq-bench merge`); empty when
    /// nothing was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hdr: String,
}

impl Percentiles {
    /// Summarises a histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            hdr: encode_histogram(h),
        }
    }

    /// The histogram back from [`Self::hdr`] (empty for no values).
    pub fn histogram(&self) -> Result<Histogram<u64>, String> {
        let mut h = latency_histogram();
        if self.count > 0 {
            if self.hdr.is_empty() {
                return Err("a latency summary has no histogram (\"hdr\"): the report was \
                            written by a ringmq-bench older than `merge`"
                    .into());
            }
            h.add(decode_histogram(&self.hdr)?).map_err(|e| format!("histogram: {e:?}"))?;
        }
        Ok(h)
    }
}

/// One second of the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since publishing started.
    pub second: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Messages sent in this second that never arrived where they should
    /// have (for `sub`: sequence gaps of this second); the seconds add up
    /// to the report's `lost`.
    #[serde(default)]
    pub lost: u64,
    /// Their latency.
    pub latency_us: Percentiles,
}

/// What one subscriber connection saw, for the loss accounting.
#[derive(Debug)]
pub struct SubscriberResult {
    /// Whose messages it should get.
    pub expect: Expect,
    /// Its streams by publisher id.
    pub streams: StreamMap,
}

/// Everything one executor measured.
#[derive(Debug)]
pub struct ExecResult {
    /// End-to-end latency of every message received while publishing
    /// (merged from the per-second histograms).
    pub latency: Histogram<u64>,
    /// TCP connect to CONNACK, first connections.
    pub connect: Histogram<u64>,
    /// TCP connect to CONNACK, reconnections of `storm`.
    pub reconnect: Histogram<u64>,
    /// Connections that got their CONNACK.
    pub connected: u64,
    /// Failures before a connection was ready, by reason.
    pub connect_failures: BTreeMap<String, u64>,
    /// Connections lost after they were ready, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Messages received, by the QoS they arrived with.
    pub received: [u64; 3],
    /// Extra copies received, by QoS.
    pub duplicates: [u64; 3],
    /// Messages received after a higher sequence number, by QoS.
    pub out_of_order: [u64; 3],
    /// Messages without a benchmark header.
    pub foreign: u64,
    /// Messages published.
    pub sent: u64,
    /// Publishes acknowledged (QoS 1/2) successfully.
    pub acked: u64,
    /// Publishes the broker refused in PUBACK/PUBREC (5.0), by reason.
    pub refused: BTreeMap<String, u64>,
    /// Messages sent per publisher id, by the second (since publishing
    /// started) they were meant to be sent in.
    pub sent_by_publisher: HashMap<u32, Vec<u64>>,
    /// Subscriber streams.
    pub subscribers: Vec<SubscriberResult>,
    /// First and last message of this executor's publishers.
    pub publish_span: Option<(Instant, Instant)>,
}

impl ExecResult {
    /// Nothing measured yet.
    pub(crate) fn new() -> Self {
        Self {
            latency: latency_histogram(),
            connect: latency_histogram(),
            reconnect: latency_histogram(),
            connected: 0,
            connect_failures: BTreeMap::new(),
            errors: BTreeMap::new(),
            received: [0; 3],
            duplicates: [0; 3],
            out_of_order: [0; 3],
            foreign: 0,
            sent: 0,
            acked: 0,
            refused: BTreeMap::new(),
            sent_by_publisher: HashMap::new(),
            subscribers: Vec::new(),
            publish_span: None,
        }
    }
}

/// Everything the run measured, for the report.
#[derive(Debug)]
pub struct RunResult {
    /// Per executor.
    pub executors: Vec<ExecResult>,
    /// Per second, merged over the executors.
    pub timeline: Vec<Second>,
    /// Time from the start of publishing until the publishers finished
    /// (or the holding time without publishers).
    pub elapsed: Duration,
    /// Time to open every connection.
    pub connect_elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_histogram() {
        let mut h = latency_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!((p.count, p.min, p.p50, p.max), (1000, 1, 500, 1000));
        assert_eq!(p.p999, 999);
        assert_eq!(Percentiles::of(&latency_histogram()), Percentiles::default());
    }

    #[test]
    fn histograms_survive_their_encoding() {
        let mut h = latency_histogram();
        for v in [1, 7, 250, 250, 99_999, 3_600_000_000] {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert!(!p.hdr.is_empty());
        let back = p.histogram().unwrap();
        assert_eq!(back, h);
        assert_eq!(Percentiles::of(&back), p);
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram("AAAA").is_err());
        let old = Percentiles { hdr: String::new(), ..p };
        assert!(old.histogram().unwrap_err().contains("older"));
    }
}
