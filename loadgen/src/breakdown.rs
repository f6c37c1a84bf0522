//! Where a message waits inside the server: corecast's `corecast_hop_latency_seconds{hop}`
//! histograms (docs/operations.md), read from its `/metrics` at the start and the end of the
//! send phase, and their difference summarised per hop. Servers without that metric (the
//! baselines) give no breakdown.

use std::collections::BTreeMap;

use serde::Serialize;

const METRIC: &str = "corecast_hop_latency_seconds";

/// One hop over the send phase (warm-up included): observations, mean, and the p50 and p99
/// as the upper bound of the histogram bucket they fall in.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HopSummary {
    pub hop: String,
    pub count: u64,
    pub mean_us: f64,
    pub p50_le_us: Option<f64>,
    pub p99_le_us: Option<f64>,
}

/// Per hop, in the order the server lists them: its buckets (upper bound in seconds,
/// cumulative count), its sum (seconds) and count.
#[derive(Debug, Default, Clone)]
struct Hops(Vec<(String, Series)>);

#[derive(Debug, Default, Clone)]
struct Series {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Hops {
    fn parse(text: &str) -> Hops {
        let mut hops: Vec<(String, Series)> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(METRIC) else {
                continue;
            };
            let Some((kind, rest)) = rest.split_once('{') else {
                continue;
            };
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            let labels: BTreeMap<&str, &str> = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            let Some(hop) = labels.get("hop") else {
                continue;
            };
            let value = value.trim();
            let i = match hops.iter().position(|(h, _)| h == hop) {
                Some(i) => i,
                None => {
                    hops.push((hop.to_string(), Series::default()));
                    hops.len() - 1
                }
            };
            let s = &mut hops[i].1;
            match kind {
                "_bucket" => {
                    let le = labels.get("le").and_then(|l| match *l {
                        "+Inf" => Some(f64::INFINITY),
                        l => l.parse().ok(),
                    });
                    if let (Some(le), Ok(n)) = (le, value.parse()) {
                        s.buckets.push((le, n));
                    }
                }
                "_sum" => s.sum = value.parse().unwrap_or(0.0),
                "_count" => s.count = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        Hops(hops)
    }
}

/// The breakdown between two scrapes of `/metrics`; `None` when the server has no hop metric.
pub fn between(before: &str, after: &str) -> Option<Vec<HopSummary>> {
    let (a, b) = (Hops::parse(before), Hops::parse(after));
    if b.0.is_empty() {
        return None;
    }
    let out =
        b.0.iter()
            .map(|(hop, end)| {
                let start = a.0.iter().find(|(h, _)| h == hop).map(|(_, s)| s);
                let count = end.count - start.map_or(0, |s| s.count);
                let sum = end.sum - start.map_or(0.0, |s| s.sum);
                let buckets: Vec<(f64, u64)> = end
                    .buckets
                    .iter()
                    .map(|&(le, n)| {
                        let before = start
                            .and_then(|s| s.buckets.iter().find(|(l, _)| *l == le))
                            .map_or(0, |&(_, n)| n);
                        (le, n.saturating_sub(before))
                    })
                    .collect();
                let quantile = |q: f64| {
                    let rank = (q * count as f64).ceil() as u64;
                    buckets
                        .iter()
                        .find(|&&(_, n)| count > 0 && n >= rank)
                        .map(|&(le, _)| (le * 1e7).round() / 10.0)
                };
                HopSummary {
                    hop: hop.clone(),
                    count,
                    mean_us: if count > 0 {
                        (sum * 1e8 / count as f64).round() / 100.0
                    } else {
                        0.0
                    },
                    p50_le_us: quantile(0.50),
                    p99_le_us: quantile(0.99),
                }
            })
            .collect();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(owner: [u64; 3], sum: f64) -> String {
        format!(
            "# TYPE {METRIC} histogram\n\
             {METRIC}_bucket{{hop=\"owner\",le=\"0.00001\"}} {}\n\
             {METRIC}_bucket{{hop=\"owner\",le=\"0.0001\"}} {}\n\
             {METRIC}_bucket{{hop=\"owner\",le=\"+Inf\"}} {}\n\
             {METRIC}_sum{{hop=\"owner\"}} {sum}\n\
             {METRIC}_count{{hop=\"owner\"}} {}\n\
             corecast_other_bucket{{le=\"1\"}} 5\n",
            owner[0], owner[1], owner[2], owner[2]
        )
    }

    #[test]
    fn the_difference_of_two_scrapes_per_hop() {
        let before = scrape([10, 10, 10], 0.0001);
        // 100 more: 50 under 10 µs, 49 more under 100 µs, one slower; 2 ms in all.
        let after = scrape([60, 109, 110], 0.0021);
        let b = between(&before, &after).expect("the hop metric is there");
        assert_eq!(
            b,
            vec![HopSummary {
                hop: "owner".into(),
                count: 100,
                mean_us: 20.0,
                p50_le_us: Some(10.0),
                p99_le_us: Some(100.0),
            }]
        );
    }

    #[test]
    fn no_breakdown_from_a_server_without_the_metric() {
        assert_eq!(between("", "# nothing\nup 1\n"), None);
    }
}
