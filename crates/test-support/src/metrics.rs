//! Reading `/metrics` scrapes in tests with a real Prometheus text parser
//! (`prometheus-parse`), checking that every sample is documented and
//! named `miostream_*`.

pub use prometheus_parse::Scrape;

/// Parses a scrape; fails the test on a sample without `# HELP` or
/// outside the `miostream_` namespace.
pub fn parse(text: &str) -> Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = Scrape::parse(lines).unwrap();
    assert!(!scrape.samples.is_empty(), "an empty scrape:\n{text}");
    for s in &scrape.samples {
        let family = s.metric.trim_end_matches("_total");
        assert!(
            scrape.docs.contains_key(family) || scrape.docs.contains_key(&s.metric),
            "{} has no HELP",
            s.metric
        );
        assert!(s.metric.starts_with("miostream_"), "{}", s.metric);
    }
    scrape
}

/// The value of `metric` with exactly these labels, if it is there.
pub fn find(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let s = scrape.samples.iter().find(|s| {
        s.metric == metric
            && labels.len() == s.labels.len()
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    })?;
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// The value of `metric` with exactly these labels; fails the test if it
/// is missing.
pub fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    find(scrape, metric, labels)
        .unwrap_or_else(|| panic!("no {metric}{labels:?} in {:#?}", scrape.samples))
}
