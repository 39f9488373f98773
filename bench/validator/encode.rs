//! Validate + encode of ~500 B game records, next to parsing the same records alone with the
//! validator's own parser ([`Doc`]): the ceiling for a validator that must parse.
//!
//! Run: `cargo bench -p logpipe-validator --bench encode` (release build). Criterion reports
//! each side; at the end the bench prints the ratio and records/s per core from its own timing
//! of both sides over the same records in the same run. Targets (issue 5): >= 0.5x the parse
//! ceiling and >= 300,000 records/s per core. With `LOGPIPE_BENCH_JSON` set, both are also
//! emitted as rows through `logpipe_devkit::benchreport`.
//!
//! The validate side does per record what the service does between the consumer and the
//! producer: parse, choose the subject from the `event` field (the route's strategy), find the
//! compiled schema, check and encode into the Confluent wire format (reusing one buffer).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use logpipe_devkit::benchreport::Row;
use logpipe_devkit::loadgen::{self, LoadgenArgs};
use logpipe_validator::{CompiledSchema, Doc, ExtraFields, SchemaType, SubjectStrategy};

const RECORDS: u64 = 20_000;

fn records() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = LoadgenArgs::new(dir.path());
    args.files = 1;
    args.lines = RECORDS;
    args.line_size = "500".parse().expect("size");
    let report = loadgen::run(&args, &std::sync::atomic::AtomicBool::new(false)).expect("loadgen");
    let text = std::fs::read(&report.files[0].path).expect("log");
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

struct Validator {
    strategy: SubjectStrategy,
    schemas: HashMap<String, CompiledSchema>,
    out: Vec<u8>,
}

impl Validator {
    fn new() -> Validator {
        let schemas = loadgen::schemas()
            .into_iter()
            .enumerate()
            .map(|(i, (subject, text))| {
                (
                    subject.to_owned(),
                    CompiledSchema::compile(i as u32 + 1, SchemaType::Avro, text).expect("schema"),
                )
            })
            .collect();
        let strategy = SubjectStrategy::Field {
            field: "event".into(),
            prefix: "game.".into(),
            suffix: String::new(),
        };
        Validator {
            strategy,
            schemas,
            out: Vec::with_capacity(1024),
        }
    }

    fn validate(&mut self, line: &[u8]) -> usize {
        let value = Doc::parse(line).expect("valid JSON");
        let subject = self.strategy.subject("raw.game", &value).expect("subject");
        self.out.clear();
        self.schemas[&*subject]
            .write(&value, line, ExtraFields::Drop, &mut self.out)
            .expect("valid record");
        self.out.len()
    }
}

fn parse(line: &[u8]) -> usize {
    match Doc::parse(line).expect("valid JSON") {
        Doc::Object(object) => object.len(),
        _ => 0,
    }
}

/// Best of five passes over all records, in seconds.
fn best_pass(records: &[Vec<u8>], mut f: impl FnMut(&[u8]) -> usize) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for r in records {
                black_box(f(r));
            }
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let records = records();
    let bytes: usize = records.iter().map(Vec::len).sum();
    let mut validator = Validator::new();
    let encoded: usize = records.iter().map(|r| validator.validate(r)).sum();

    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5));
    let mut group = criterion.benchmark_group("game-records");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("parse (ceiling)", |b| {
        b.iter(|| records.iter().map(|r| parse(r)).sum::<usize>())
    });
    group.bench_function("validate + encode", |b| {
        b.iter(|| records.iter().map(|r| validator.validate(r)).sum::<usize>())
    });
    group.finish();
    criterion.final_summary();

    let parse_secs = best_pass(&records, parse);
    let validate_secs = best_pass(&records, |r| validator.validate(r));
    let n = records.len() as f64;
    println!();
    println!(
        "records: {} of {:.0} B on average; wire format {:.0} B on average",
        records.len(),
        bytes as f64 / n,
        encoded as f64 / n
    );
    println!(
        "parse:              {:>10.0} records/s ({:.0} MB/s)",
        n / parse_secs,
        bytes as f64 / parse_secs / 1e6
    );
    println!(
        "validate + encode:  {:>10.0} records/s ({:.0} MB/s)",
        n / validate_secs,
        bytes as f64 / validate_secs / 1e6
    );
    println!(
        "ratio validate+encode / parse: {:.2}x (target >= 0.5x; >= 300,000 records/s per core)",
        parse_secs / validate_secs
    );

    // For the combined report (only when LOGPIPE_BENCH_JSON is set).
    let case = "validate + encode, ~500 B game records, one core";
    let (validate_rate, parse_rate) = (n / validate_secs, n / parse_secs);
    Row::new(
        "validator",
        case,
        "validate + encode",
        validate_rate,
        "rec/s",
    )
    .against("parse (ceiling)", parse_rate)
    .target(0.5)
    .emit()
    .expect("writing the benchmark row");
    Row::new(
        "validator",
        case,
        "validate + encode per core",
        validate_rate,
        "rec/s",
    )
    .target(300_000.0)
    .emit()
    .expect("writing the benchmark row");
}
