//! Reading the services' `/metrics` pages: the Prometheus text exposition format, as much of it
//! as `metrics-exporter-prometheus` writes (samples `name{label="value",...} number`, comments,
//! no timestamps needed). Parsing it here is a few dozen lines; a crate would add more than it
//! saves. This is the one parser of those pages: `logpipe-dev up`, the
//! end-to-end tests and the benchmarks all read services' counters through it, so a change in
//! the exposition (a new label, an escaped value) is handled once.

/// One sample: a metric name (with a `_count`/`_sum` suffix for summaries), its labels, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of a label, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of a page, in order. Lines that do not parse (which a conforming exporter does
/// not write) are skipped rather than failing the whole page: one odd line must not blank a view.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| parse_line(line.trim()))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y\"z"}` into `labels` and returns what follows the closing brace.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_owned();
        let mut chars = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((name, value));
        let quoted = rest[eq + 1..].trim_start();
        rest = &quoted[1 + end + 1..];
    }
}

/// The sum of every sample named `name` whose labels all match `filter` (name, value), or
/// `None` when there is no such sample (the metric was not written yet, or the page is absent).
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for sample in samples.iter().filter(|s| s.name == name) {
        if filter
            .iter()
            .all(|(label, value)| sample.label(label) == Some(value))
        {
            *found.get_or_insert(0.0) += sample.value;
        }
    }
    found
}

/// The sum of every sample named `name` in a page's text, 0 when there is none: a counter not
/// written yet counts as zero, which is what a caller waiting for it to grow wants.
pub fn total(text: &str, name: &str) -> f64 {
    sum(&parse(text), name, &[]).unwrap_or(0.0)
}

/// The text of a service's `GET /metrics` page at its telemetry address, or an empty page when it
/// cannot be read (not listening yet, or gone): pollers treat that as "nothing counted yet".
pub async fn scrape(http: &reqwest::Client, addr: std::net::SocketAddr) -> String {
    match http.get(format!("http://{addr}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# TYPE app_records_invalid_total counter
app_records_invalid_total{topic="raw.game",stage="parse"} 12
app_records_invalid_total{topic="raw.game",stage="validate"} 30

# TYPE app_file_lag_bytes gauge
app_file_lag_bytes{path="/tmp/a \"b\",c}.log"} 250.5
app_request_seconds{method="GET",route="/schemas/ids/{id}",quantile="0.5"} 0.0001
app_request_seconds_count{method="GET",route="/schemas/ids/{id}"} 7
app_copies_total 1e3
not a sample line
"#;

    #[test]
    fn parses_names_labels_and_values() {
        let samples = parse(PAGE);
        assert_eq!(samples.len(), 6, "{samples:?}");
        assert_eq!(samples[0].name, "app_records_invalid_total");
        assert_eq!(samples[0].label("stage"), Some("parse"));
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[2].label("path"), Some("/tmp/a \"b\",c}.log"));
        assert_eq!(samples[2].value, 250.5);
        assert_eq!(samples[4].label("route"), Some("/schemas/ids/{id}"));
        assert_eq!(samples[5].labels, vec![]);
        assert_eq!(samples[5].value, 1000.0);
    }

    #[test]
    fn sums_with_label_filters() {
        let samples = parse(PAGE);
        assert_eq!(sum(&samples, "app_records_invalid_total", &[]), Some(42.0));
        assert_eq!(
            sum(
                &samples,
                "app_records_invalid_total",
                &[("stage", "validate")]
            ),
            Some(30.0)
        );
        assert_eq!(
            sum(&samples, "app_records_invalid_total", &[("stage", "route")]),
            None
        );
        assert_eq!(sum(&samples, "app_request_seconds_count", &[]), Some(7.0));
        assert_eq!(sum(&samples, "missing", &[]), None);
    }

    #[test]
    fn total_is_zero_for_an_absent_metric_and_does_not_match_prefixes() {
        assert_eq!(total(PAGE, "app_records_invalid_total"), 42.0);
        assert_eq!(total(PAGE, "app_request_seconds"), 0.0001);
        assert_eq!(total(PAGE, "app_copies"), 0.0);
        assert_eq!(total("", "app_copies_total"), 0.0);
    }
}
