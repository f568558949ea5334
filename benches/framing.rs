//! Micro-benchmarks of the hot path: framing and classifying a realistic
//! stream body, against a plain CRLF split of the same bytes as the baseline.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streamherd_actors::twitter::classify::classify_twitter;
use streamherd_actors::twitter::framing::{Delimiting, Frame, Framer};
use streamherd_sim::payloads::Corpus;

fn body(n: usize) -> Vec<u8> {
    let corpus = Corpus::new();
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(&corpus.tweet(1_500_000_000_000_000_000 + i as u64));
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bench(c: &mut Criterion) {
    let body = body(2000);
    let mut g = c.benchmark_group("stream_body");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("baseline_crlf_split", |b| b.iter(|| body.split(|&b| b == b'\n').filter(|l| l.len() > 1).count()));
    g.bench_function("framer_16k_chunks", |b| {
        b.iter(|| {
            let mut f = Framer::new(Delimiting::Lines, 16 << 20);
            let mut n = 0;
            for chunk in body.chunks(16 * 1024) {
                f.push(chunk);
                while let Some(frame) = f.next_frame() {
                    n += matches!(frame, Frame::Message(_)) as usize;
                }
            }
            n
        })
    });
    g.bench_function("framer_and_classify", |b| {
        b.iter(|| {
            let mut f = Framer::new(Delimiting::Lines, 16 << 20);
            let mut n = 0;
            for chunk in body.chunks(16 * 1024) {
                f.push(chunk);
                while let Some(Frame::Message(m)) = f.next_frame() {
                    n += classify_twitter(&m).is_ok() as usize;
                }
            }
            n
        })
    });
    // What the classifier did before the block scanner: serde_json walking
    // every value of the message without building anything.
    g.bench_function("baseline_serde_ignored_any", |b| {
        b.iter(|| {
            body.split(|&b| b == b'\n')
                .filter(|l| l.len() > 1)
                .filter(|l| serde_json::from_slice::<serde::de::IgnoredAny>(&l[..l.len() - 1]).is_ok())
                .count()
        })
    });
    g.bench_function("baseline_serde_value_parse", |b| {
        b.iter(|| {
            body.split(|&b| b == b'\n')
                .filter(|l| l.len() > 1)
                .filter(|l| serde_json::from_slice::<serde_json::Value>(&l[..l.len() - 1]).is_ok())
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
