//! Sketch encoding: distribution sketches as the Agent's protobuf
//! `SketchPayload`, for `POST /api/beta/sketches`.
//!
//! In: [`DistributionSketch`]es plus the global tags and default host. Out:
//! one serialized `SketchPayload.sketches` entry per sketch (field 1, length
//! delimited), so that [`super::payload`] can concatenate entries into
//! payloads: a concatenation of entries is itself a valid `SketchPayload`.
//!
//! Must never: emit a sketch whose bin counts do not add up to its `cnt`, or
//! an entry larger than the bins allow (one sketch is at most 4096 bins plus
//! one per 65,535 values over the bins' width, a few tens of KB).
//!
//! The messages are written from DataDog/agent-payload
//! `proto/metrics/agent_payload.proto` (package `datadog.agentpayload`), with
//! its field numbers. Only the fields the Agent fills for DogStatsD
//! distributions are defined: the deprecated `distributions` (3) and
//! `SketchPayload.metadata` (2) are left out, which protobuf decoders read
//! as absent. `Sketch.metadata` (8) carries the origin, as the newer Agent's
//! serializer writes it (fields newer than that file's published version).

use super::payload::{Decoration, TagList};
use crate::dogstatsd::aggregate::DistributionSketch;

/// `SketchPayload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SketchPayload {
    /// Field 1.
    #[prost(message, repeated, tag = "1")]
    pub sketches: Vec<Sketch>,
}

/// `SketchPayload.Sketch`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sketch {
    /// Field 1: metric name.
    #[prost(string, tag = "1")]
    pub metric: String,
    /// Field 2: host ("" when none).
    #[prost(string, tag = "2")]
    pub host: String,
    /// Field 4: `key:value` tags.
    #[prost(string, repeated, tag = "4")]
    pub tags: Vec<String>,
    /// Field 7: one sketch per interval.
    #[prost(message, repeated, tag = "7")]
    pub dogsketches: Vec<Dogsketch>,
    /// Field 8: the origin, as the Agent writes it for DogStatsD.
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<Metadata>,
}

/// `Sketch.metadata`: `Metadata { Origin origin = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    /// Field 1.
    #[prost(message, optional, tag = "1")]
    pub origin: Option<Origin>,
}

/// `Origin`: product, category and service, as the Agent's sketch
/// serializer writes them (fields 4, 5 and 6; 10, 10 and 0 for DogStatsD).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Origin {
    /// Field 4: `origin_product`.
    #[prost(uint32, tag = "4")]
    pub origin_product: u32,
    /// Field 5: `origin_category` (the sub-product).
    #[prost(uint32, tag = "5")]
    pub origin_category: u32,
    /// Field 6: `origin_service`.
    #[prost(uint32, tag = "6")]
    pub origin_service: u32,
}

/// `SketchPayload.Sketch.Dogsketch`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dogsketch {
    /// Field 1: unix seconds.
    #[prost(int64, tag = "1")]
    pub ts: i64,
    /// Field 2: number of values.
    #[prost(int64, tag = "2")]
    pub cnt: i64,
    /// Field 3.
    #[prost(double, tag = "3")]
    pub min: f64,
    /// Field 4.
    #[prost(double, tag = "4")]
    pub max: f64,
    /// Field 5.
    #[prost(double, tag = "5")]
    pub avg: f64,
    /// Field 6.
    #[prost(double, tag = "6")]
    pub sum: f64,
    /// Field 7: bin keys, `sint32`, packed.
    #[prost(sint32, repeated, packed = "true", tag = "7")]
    pub k: Vec<i32>,
    /// Field 8: bin counts, packed.
    #[prost(uint32, repeated, packed = "true", tag = "8")]
    pub n: Vec<u32>,
}

impl Decoration {
    /// The `Sketch` message for one distribution, with the global tags and
    /// the default host applied.
    pub fn sketch_message(&self, d: &DistributionSketch) -> Sketch {
        let (k, n): (Vec<i32>, Vec<u32>) = d.sketch.bins().map(|(k, n)| (i32::from(k), n)).unzip();
        Sketch {
            metric: d.metric.clone(),
            host: self.host(d.host.as_ref()).unwrap_or("").to_owned(),
            tags: TagList::new(&d.tags, &self.global_tags)
                .iter()
                .map(str::to_owned)
                .collect(),
            dogsketches: vec![Dogsketch {
                ts: d.timestamp,
                cnt: d.sketch.count_rounded(),
                min: d.sketch.min(),
                max: d.sketch.max(),
                avg: d.sketch.avg(),
                sum: d.sketch.sum(),
                k,
                n,
            }],
            metadata: Some(Metadata {
                origin: Some(Origin {
                    origin_product: super::payload::ORIGIN_PRODUCT_AGENT,
                    origin_category: super::payload::ORIGIN_SUB_PRODUCT_DOGSTATSD,
                    origin_service: 0,
                }),
            }),
        }
    }

    /// One `SketchPayload.sketches` entry (tag, length, message) into `buf`,
    /// or `None` when the sketch holds no value.
    pub fn sketch_entry(&self, d: &DistributionSketch, buf: &mut Vec<u8>) -> Option<()> {
        if d.sketch.count_rounded() <= 0 {
            return None;
        }
        buf.clear();
        encode_entry(&self.sketch_message(d), buf);
        Some(())
    }
}

/// Appends `sketch` as one `SketchPayload.sketches` entry.
pub fn encode_entry(sketch: &Sketch, buf: &mut Vec<u8>) {
    prost::encoding::message::encode(1, sketch, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dogstatsd::sketch::{key, Sketch as Values};
    use prost::Message as _;

    fn dist(values: &[f64], rate: f64) -> DistributionSketch {
        let mut sketch = Values::new();
        for &v in values {
            assert!(sketch.insert(v, 1.0 / rate, |_| true));
        }
        DistributionSketch {
            metric: "latency".into(),
            timestamp: 1_700_000_000,
            sketch,
            tags: vec!["env:dev".into()],
            host: None,
        }
    }

    #[test]
    fn entries_concatenate_into_a_payload_that_round_trips() {
        let deco = Decoration {
            global_tags: vec!["app:web".into(), "env:dev".into()],
            hostname: Some("dyno".into()),
            interval: None,
        };
        let a = dist(&[1.0, 2.0, 2.0, -3.0, 0.0], 1.0);
        let b = dist(&[10.0; 7], 0.5);
        let mut body = Vec::new();
        let mut buf = Vec::new();
        for d in [&a, &b] {
            deco.sketch_entry(d, &mut buf).expect("non-empty");
            body.extend_from_slice(&buf);
        }
        let decoded = SketchPayload::decode(body.as_slice()).expect("valid protobuf");
        assert_eq!(decoded.sketches.len(), 2);
        let s = &decoded.sketches[0];
        assert_eq!(s.metric, "latency");
        assert_eq!(s.host, "dyno");
        assert_eq!(s.tags, vec!["env:dev", "app:web"]);
        let d = &s.dogsketches[0];
        assert_eq!(
            (d.ts, d.cnt, d.min, d.max, d.sum),
            (1_700_000_000, 5, -3.0, 2.0, 2.0)
        );
        assert!((d.avg - 0.4).abs() < 1e-12);
        let want_k: Vec<i32> = [-3.0, 0.0, 1.0, 2.0]
            .iter()
            .map(|&v| i32::from(key(v)))
            .collect();
        assert_eq!(d.k, want_k);
        assert_eq!(d.n, vec![1, 1, 1, 2]);
        let d = &decoded.sketches[1].dogsketches[0];
        assert_eq!((d.cnt, d.sum), (14, 140.0));
        assert_eq!(d.n, vec![14]);
        // Re-encoding the decoded message gives the same bytes.
        let mut again = Vec::new();
        for s in &decoded.sketches {
            encode_entry(s, &mut again);
        }
        assert_eq!(again, body);
        assert_eq!(decoded.encode_to_vec(), body);
    }

    #[test]
    fn field_numbers_are_the_schemas() {
        let msg = Dogsketch {
            ts: 1,
            cnt: 2,
            min: 0.0,
            max: 0.0,
            avg: 0.0,
            sum: 0.0,
            k: vec![-1],
            n: vec![3],
        };
        // ts=1 varint, cnt=2 varint, k=7 packed sint32 (-1 zigzags to 1), n=8 packed.
        assert_eq!(
            msg.encode_to_vec(),
            vec![0x08, 1, 0x10, 2, 0x3A, 1, 1, 0x42, 1, 3]
        );
        let outer = Sketch {
            metric: "m".into(),
            host: "h".into(),
            tags: vec!["t".into()],
            dogsketches: vec![],
            metadata: None,
        };
        assert_eq!(
            outer.encode_to_vec(),
            vec![0x0A, 1, b'm', 0x12, 1, b'h', 0x22, 1, b't']
        );
    }
}
