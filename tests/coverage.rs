//! `streamherd coverage` as a process: hand-written archives with known gaps
//! (seconds apportioned across an hour boundary, reasons counted), limit
//! omissions across a connection reset, minute buckets and the filters, a
//! torn last line, a payload sink skipped, no archive at all, the HTML page's
//! timelines (their SVG geometry, and a headless Chromium screenshot of
//! them), and the throughput on a generated 50 MB archive.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::{command, wait_blocking};

const BIN: &str = env!("CARGO_BIN_EXE_streamherd");

/// 2026-11-22T10:00:00Z.
const T0: i64 = 1_795_341_600;

const AUTH: &str =
    r#"auth = { kind = "oauth1", consumer_key = "k", consumer_secret = "s", token = "t", token_secret = "ts" }"#;

/// `T0 + secs` (fractions allowed) as the envelope writes it.
fn at(secs: f64) -> String {
    stamp(secs, SecondsFormat::Micros)
}

fn stamp(secs: f64, format: SecondsFormat) -> String {
    let micros = (T0 as f64 * 1e6 + secs * 1e6).round() as i64;
    DateTime::<Utc>::from_timestamp_micros(micros).expect("a valid time").to_rfc3339_opts(format, true)
}

fn envelope(source: &str, kind: &str, secs: f64, connection: &str, payload: &str) -> String {
    format!(
        "{{\"source\":\"{source}\",\"kind\":\"{kind}\",\"id\":null,\"received_at\":\"{}\",\"connection\":\"{connection}\",\"for_user\":null,\"stream\":null,\"payload\":{payload}}}\n",
        at(secs)
    )
}

fn tweet(source: &str, secs: f64) -> String {
    envelope(source, "tweet", secs, &format!("{source}/0"), r#"{"id_str":"1","text":"hi"}"#)
}

fn gap(source: &str, reason: &str, from: Option<f64>, to: f64, recovered: u64) -> String {
    let from = from.map(|f| format!("\"from\":\"{}\",", stamp(f, SecondsFormat::Millis))).unwrap_or_default();
    let payload = format!(
        "{{\"reason\":\"{reason}\",\"cause\":\"TCP reset\",{from}\"to\":\"{}\",\"recovered\":{recovered},\"complete\":true,\"limit_omitted\":16}}",
        stamp(to, SecondsFormat::Millis)
    );
    envelope(source, "gap", to, &format!("{source}/0"), &payload)
}

fn limit(source: &str, secs: f64, connection: &str, track: u64) -> String {
    let payload =
        format!("{{\"limit\":{{\"track\":{track},\"timestamp_ms\":\"{}\"}}}}", (T0 as f64 + secs) as i64 * 1000);
    envelope(source, "limit", secs, connection, &payload)
}

fn config(dir: &Path, sinks: &str) -> PathBuf {
    let mut body = format!("[service]\nstate_dir = \"{}/state\"\nstats_interval_s = 0\n", dir.display());
    for name in ["election", "fedi"] {
        body.push_str(&format!(
            "[[sources]]\nname = \"{name}\"\nkind = \"twitter.sample\"\nbase_url = \"http://127.0.0.1:1\"\n{AUTH}\n"
        ));
    }
    body.push_str(sinks);
    let path = dir.join("config.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

const ARCHIVE_SINK: &str = "[[sinks]]\nname = \"archive\"\nkind = \"file\"\npath = \"data/{source}/%Y-%m-%d.jsonl\"\n";

/// The known archive, under `dir/data/{source}/2026-11-22[.N].jsonl`:
///
/// election, 10:00:00 .. 11:40:00: tweets every 10 minutes; gaps
/// reconnect 10:59:30-11:00:45 (30 s + 45 s across the hour), stall
/// 11:20-11:21 (recovered 0), reconnect 11:30:00.5-11:30:01.5 (recovered
/// 500); limit notices on election/0 10, 25, then a new connection 4, 9,
/// and on election/1 7: 25 omitted in hour 10, 16 in hour 11. The second
/// half is in the rotated file `2026-11-22.1.jsonl`.
///
/// fedi, 10:30 .. 10:50: three tweets, a spill_corrupt gap without `from`,
/// and a torn last line.
fn write_archive(dir: &Path) {
    let election = dir.join("data/election");
    let fedi = dir.join("data/fedi");
    std::fs::create_dir_all(&election).expect("mkdir");
    std::fs::create_dir_all(&fedi).expect("mkdir");
    let mut first = String::new();
    for m in 0..6 {
        first += &tweet("election", f64::from(m) * 600.0);
    }
    first += &limit("election", 300.0, "election/0", 10);
    first += &limit("election", 1200.0, "election/0", 25);
    first += &gap("election", "reconnect", Some(3570.0), 3645.0, 0);
    let mut second = String::new();
    second += &limit("election", 3900.0, "election/0", 4);
    second += &limit("election", 4200.0, "election/0", 9);
    second += &limit("election", 4500.0, "election/1", 7);
    for m in 6..11 {
        second += &tweet("election", f64::from(m) * 600.0);
    }
    second += &gap("election", "stall", Some(4800.0), 4860.0, 0);
    second += &gap("election", "reconnect", Some(5400.5), 5401.5, 500);
    std::fs::write(election.join("2026-11-22.jsonl"), first).expect("write");
    std::fs::write(election.join("2026-11-22.1.jsonl"), second).expect("write");

    let mut text = String::new();
    text += &tweet("fedi", 1800.0);
    text += &tweet("fedi", 2100.0);
    text += &gap("fedi", "spill_corrupt", None, 2400.0, 0);
    text += &tweet("fedi", 3000.0);
    text += "{\"source\":\"fedi\",\"kind\":\"tweet\",\"id\":null,\"rece";
    std::fs::write(fedi.join("2026-11-22.jsonl"), text).expect("write");
}

fn coverage(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["coverage", "--config", "config.toml"];
    all.extend_from_slice(args);
    command(BIN, &all, dir).output().expect("streamherd runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The table rows (after the `source ...` heading), cells split at runs of
/// two or more spaces, keyed by (source, bucket).
fn table(stdout: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in stdout.lines() {
        if line.starts_with("source ") {
            in_table = true;
            continue;
        }
        if !in_table || line.trim().is_empty() {
            continue;
        }
        if line.starts_with("malformed") {
            break;
        }
        let cells: Vec<String> = line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect();
        assert_eq!(cells.len(), 10, "ten columns: {line}");
        rows.insert((cells[0].clone(), cells[1].clone()), cells);
    }
    rows
}

/// The row's cells from `events` on.
fn row<'a>(rows: &'a BTreeMap<(String, String), Vec<String>>, source: &str, bucket: &str) -> Vec<&'a str> {
    rows.get(&(source.to_owned(), bucket.to_owned()))
        .unwrap_or_else(|| panic!("no row {source} {bucket}: {rows:?}"))
        .iter()
        .skip(2)
        .map(String::as_str)
        .collect()
}

#[test]
fn hours_apportion_gaps_count_reasons_and_omissions() {
    let dir = tempfile::tempdir().expect("temp dir");
    config(dir.path(), ARCHIVE_SINK);
    write_archive(dir.path());
    let out = coverage(dir.path(), &[]);
    let stdout = text(&out.stdout);
    eprintln!("{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("covered = seconds of the bucket between the source's first and last event"), "{stdout}");
    assert!(stdout.contains("3 file(s)"), "the rotated file is read: {stdout}");
    let rows = table(&stdout);
    // events, covered_s, covered%, gaps, gap_s, reasons, recovered, omitted
    assert_eq!(
        row(&rows, "election", "2026-11-22T10:00Z"),
        ["8", "3570.000", "99.2", "1", "30.000", "reconnect×1", "0", "25"]
    );
    assert_eq!(
        row(&rows, "election", "2026-11-22T11:00Z"),
        ["8", "2294.000", "95.6", "3", "106.000", "reconnect×2 stall×1", "500", "16"]
    );
    assert_eq!(
        row(&rows, "election", "total"),
        ["16", "5864.000", "97.7", "3", "136.000", "reconnect×2 stall×1", "500", "41"]
    );
    assert_eq!(
        row(&rows, "fedi", "2026-11-22T10:00Z"),
        ["3", "1200.000", "100.0", "1", "0.000", "spill_corrupt×1", "0", "0"]
    );
    assert_eq!(rows.len(), 5, "no empty buckets: {rows:?}");
    assert!(stdout.contains("malformed lines: 1 (1 torn last line(s))"), "{stdout}");
    assert!(stdout.contains("data/fedi/2026-11-22.jsonl:5: torn last line"), "{stdout}");
}

#[test]
fn minute_buckets_and_the_since_until_source_filters() {
    let dir = tempfile::tempdir().expect("temp dir");
    config(dir.path(), ARCHIVE_SINK);
    write_archive(dir.path());

    let out = coverage(
        dir.path(),
        &[
            "--by",
            "minute",
            "--since",
            "2026-11-22T10:59:00Z",
            "--until",
            "2026-11-22T11:02:00Z",
            "--source",
            "election",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let rows = table(&stdout);
    assert_eq!(
        row(&rows, "election", "2026-11-22T10:59Z"),
        ["0", "30.000", "50.0", "1", "30.000", "reconnect×1", "0", "0"]
    );
    assert_eq!(
        row(&rows, "election", "2026-11-22T11:00Z"),
        ["1", "15.000", "25.0", "1", "45.000", "reconnect×1", "0", "0"]
    );
    assert_eq!(row(&rows, "election", "2026-11-22T11:01Z"), ["0", "60.000", "100.0", "0", "0.000", "-", "0", "0"]);
    assert_eq!(row(&rows, "election", "total"), ["1", "105.000", "58.3", "1", "75.000", "reconnect×1", "0", "0"]);
    assert!(rows.keys().all(|(s, _)| s == "election"), "{rows:?}");

    // From hour 11 on (the short form): the notices before it still decide
    // what the later ones add.
    let out = coverage(dir.path(), &["--since", "2026-11-22T11"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let rows = table(&stdout);
    assert_eq!(row(&rows, "election", "total")[7], "16", "{stdout}");
    assert_eq!(row(&rows, "election", "total")[4], "106.000", "{stdout}");
    assert!(!rows.contains_key(&("fedi".to_owned(), "total".to_owned())), "fedi ended at 10:50: {stdout}");

    let out = coverage(dir.path(), &["--until", "2026-11-22"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("(no events or gaps in range)"), "{}", text(&out.stdout));

    for bad in
        [&["--since", "yesterday"][..], &["--by", "day"], &["--since", "2026-11-22T11", "--until", "2026-11-22T10"]]
    {
        let out = coverage(dir.path(), bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }
}

#[test]
fn payload_sinks_are_skipped_and_sinks_without_gaps_are_noted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sinks = format!(
        "{ARCHIVE_SINK}\
         [[sinks]]\nname = \"raw\"\nkind = \"file\"\nformat = \"payload\"\npath = \"raw/{{source}}.jsonl\"\n\
         [[sinks]]\nname = \"tweets\"\nkind = \"file\"\nkinds = [\"tweet\"]\nsources = [\"election\"]\npath = \"tweets/%Y%m%d.jsonl\"\n"
    );
    config(dir.path(), &sinks);
    write_archive(dir.path());
    std::fs::create_dir_all(dir.path().join("raw")).expect("mkdir");
    std::fs::write(dir.path().join("raw/election.jsonl"), "{\"id_str\":\"1\"}\n").expect("write");
    // The same tweets in the second sink's file: read once, from `archive`.
    std::fs::create_dir_all(dir.path().join("tweets")).expect("mkdir");
    std::fs::write(dir.path().join("tweets/20261122.jsonl"), tweet("election", 0.0).repeat(3)).expect("write");

    let out = coverage(dir.path(), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("warning: sink `raw` is skipped"), "{stderr}");
    assert!(stderr.contains("format = \"payload\""), "{stderr}");
    assert!(stdout.contains("note: sink `tweets` does not take gap events"), "{stdout}");
    assert!(!stdout.contains("note: sink `archive`"), "{stdout}");
    assert_eq!(row(&table(&stdout), "election", "total")[0], "16", "no event counted twice: {stdout}");
}

#[test]
fn no_archive_exits_1_naming_the_templates() {
    let dir = tempfile::tempdir().expect("temp dir");
    config(dir.path(), ARCHIVE_SINK);
    let out = coverage(dir.path(), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no archive file found"), "{stderr}");
    assert!(stderr.contains("data/{source}/%Y-%m-%d.jsonl (sink `archive`"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A source without files of its own is no archive either.
    write_archive(dir.path());
    let out = coverage(dir.path(), &["--source", "nobody"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("for source `nobody`"), "{}", text(&out.stderr));

    // A broken config is exit 2 with one line, as for every command.
    std::fs::write(dir.path().join("config.toml"), "[service]\nstats_intervall_s = 1\n").expect("write");
    let out = coverage(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr).lines().count(), 1, "{}", text(&out.stderr));
}

/// `name="value"` attributes of one tag.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(|c: char| c.is_whitespace()).next().unwrap_or("").to_owned();
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].find('"') else { break };
        out.insert(name, rest[value_start..value_start + len].to_owned());
        rest = &rest[value_start + len + 1..];
    }
    out
}

/// Every `<name ...>` tag in `text`, as its attributes.
fn tags(text: &str, name: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{name} ");
    text.match_indices(&open)
        .filter_map(|(i, _)| text[i..].find('>').map(|end| attributes(&text[i + open.len()..i + end])))
        .collect()
}

/// The `<svg class="timeline">` elements: (attributes, inner text).
fn timelines(page: &str) -> Vec<(BTreeMap<String, String>, String)> {
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find("<svg ") {
        let Some(end) = rest[start..].find("</svg>") else { break };
        let element = &rest[start..start + end];
        let open_end = element.find('>').unwrap_or(element.len());
        let attrs = attributes(&element[5..open_end]);
        if attrs.get("class").is_some_and(|c| c.split(' ').any(|c| c == "timeline")) {
            out.push((attrs, element[open_end..].to_owned()));
        }
        rest = &rest[start + end + 6..];
    }
    out
}

fn parse_time(text: &str) -> f64 {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).timestamp_micros() as f64 / 1e6
}

fn number(attrs: &BTreeMap<String, String>, name: &str) -> f64 {
    attrs.get(name).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no numeric {name}: {attrs:?}"))
}

/// The page for the known archive, written to `dir/coverage.html`.
fn html_page(dir: &Path) -> (PathBuf, String) {
    config(dir, ARCHIVE_SINK);
    write_archive(dir);
    let out = coverage(dir, &["--html", "coverage.html"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let path = dir.join("coverage.html");
    let page = std::fs::read_to_string(&path).expect("the page is written");
    (path, page)
}

/// The gaps of the known archive as (source, reason, from, to), seconds after T0.
const GAPS: [(&str, &str, f64, f64); 4] = [
    ("election", "reconnect", 3570.0, 3645.0),
    ("election", "stall", 4800.0, 4860.0),
    ("election", "reconnect", 5400.5, 5401.5),
    ("fedi", "spill_corrupt", 2400.0, 2400.0),
];

#[test]
fn the_html_page_has_a_timeline_per_source_with_gaps_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, page) = html_page(dir.path());
    assert!(page.starts_with("<!DOCTYPE html>"));
    // The SVG namespace is a name, not a fetch; nothing else names a URL.
    let own = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for external in ["<script", "http:", "https:", "src=", "href=", "@import", "url("] {
        assert!(!own.contains(external), "the page loads nothing: {external}");
    }
    assert!(page.contains("<table>") && page.contains("reconnect×2 stall×1"), "the table is on the page");

    let svgs = timelines(&page);
    let names: Vec<&str> = svgs.iter().map(|(a, _)| a["data-source"].as_str()).collect();
    assert_eq!(names, ["election", "fedi"]);
    for (attrs, inner) in &svgs {
        let source = &attrs["data-source"];
        let start = parse_time(&attrs["data-start"]);
        let end = parse_time(&attrs["data-end"]);
        assert_eq!(start, T0 as f64, "the axis starts at the minute of the first event");
        assert_eq!(end, T0 as f64 + 6060.0, "and ends at the minute after the last");
        let (x0, width) = (number(attrs, "data-plot-x"), number(attrs, "data-plot-width"));
        let x = |secs: f64| x0 + (T0 as f64 + secs - start) / (end - start) * width;
        let rects: Vec<_> =
            tags(inner, "rect").into_iter().filter(|r| r.get("class").is_some_and(|c| c == "gap")).collect();
        let expected: Vec<_> = GAPS.iter().filter(|g| g.0 == source).collect();
        assert_eq!(rects.len(), expected.len(), "{source}: {rects:?}");
        for (rect, (_, reason, from, to)) in rects.iter().zip(expected) {
            assert_eq!(&rect["data-reason"], reason);
            assert_eq!(parse_time(&rect["data-from"]), T0 as f64 + from);
            assert_eq!(parse_time(&rect["data-to"]), T0 as f64 + to);
            let (rx, rw) = (number(rect, "x"), number(rect, "width"));
            assert!((rx - x(*from)).abs() <= 1.0, "{source} {reason}: x {rx} vs {}", x(*from));
            assert!((rw - (x(*to) - x(*from))).abs() <= 1.0, "{source} {reason}: width {rw} vs {}", x(*to) - x(*from));
        }
        let bars = tags(inner, "rect").into_iter().filter(|r| r.get("class").is_some_and(|c| c == "bar")).count();
        let omissions =
            tags(inner, "rect").into_iter().filter(|r| r.get("class").is_some_and(|c| c == "omission")).count();
        let expected_bars = if source == "election" { 14 } else { 3 };
        assert_eq!(bars, expected_bars, "{source}: one bar per minute with events");
        assert_eq!(omissions, if source == "election" { 5 } else { 0 }, "{source}");
    }
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Colours of html.rs (bars, gap shading).
const BAR: [u8; 3] = [0x2f, 0x6d, 0xb5];
const GAP: [u8; 3] = [0xf2, 0xa5, 0x41];

fn close(a: &[u8], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 6)
}

#[test]
fn chromium_renders_the_page_with_bars_and_gaps() {
    if !Path::new(CHROMIUM).exists() {
        if std::env::var("STREAMHERD_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("skipped: {CHROMIUM} is not installed and STREAMHERD_SKIP_BROWSER=1");
            return;
        }
        panic!(
            "{CHROMIUM} is not installed: .ci/run installs it (apt-get install -y chromium); \
             set STREAMHERD_SKIP_BROWSER=1 to skip this test"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (page_path, page) = html_page(dir.path());
    let profile = dir.path().join("chromium-profile");
    let shot = dir.path().join("page.png");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1200,900")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page_path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    let exited = loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(shot.exists(), "no screenshot (chromium exited: {exited}): {stderr}");
    if std::env::var_os("STREAMHERD_KEEP_SCREENSHOT").is_some() {
        let _ = std::fs::copy(&shot, std::env::temp_dir().join("streamherd-coverage.png"));
    }
    // A screenshot written just before the kill may still be growing.
    wait_blocking(Duration::from_secs(5), "a complete PNG", || {
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).expect("open png"))).read_info().is_ok()
    });

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).expect("open png")));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let (w, h) = (info.width as usize, info.height as usize);
    let pixel = |x: usize, y: usize| &pixels[(y * w + x) * channels..(y * w + x) * channels + 3];

    let mut colours = std::collections::HashSet::new();
    for y in 0..h {
        for x in 0..w {
            colours.insert(pixel(x, y).to_vec());
        }
    }
    assert!(colours.len() > 50, "a blank page: {} colours", colours.len());

    // The first timeline sits at the body's left padding (24 px), unscaled;
    // the PNG may be at a device scale other than 1.
    let scale = w as f64 / 1200.0;
    let (attrs, inner) = &timelines(&page)[0];
    assert_eq!(attrs["data-source"], "election");
    // Columns between svg x `from` and `to` with a run of `colour` taller
    // than the legend's keys (12 px): shading or bars of a timeline.
    let columns_with = |colour: [u8; 3], from: f64, to: f64| {
        let (a, b) = (((24.0 + from) * scale).floor() as usize, ((24.0 + to) * scale).ceil() as usize);
        let tall = (30.0 * scale) as usize;
        (a..=b.min(w - 1)).filter(|&x| (0..h).filter(|&y| close(pixel(x, y), colour)).count() >= tall).count()
    };
    for rect in tags(inner, "rect").iter().filter(|r| r.get("class").is_some_and(|c| c == "gap")) {
        let (x, width) = (number(rect, "x"), number(rect, "width"));
        assert!(columns_with(GAP, x, x + width) > 0, "no gap shading at x {x}..{} of the screenshot", x + width);
    }
    for rect in tags(inner, "rect").iter().filter(|r| r.get("class").is_some_and(|c| c == "bar")).take(3) {
        let (x, width) = (number(rect, "x"), number(rect, "width"));
        assert!(columns_with(BAR, x, x + width) > 0, "no bar at x {x}..{} of the screenshot", x + width);
    }
    // Away from every gap (the first minutes of the axis) there is no shading.
    assert_eq!(columns_with(GAP, 72.0, 300.0), 0, "gap shading where there is no gap");
}

#[test]
fn fifty_megabytes_in_one_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    config(dir.path(), ARCHIVE_SINK);
    let data = dir.path().join("data/election");
    std::fs::create_dir_all(&data).expect("mkdir");
    let filler = "x".repeat(1500);
    let payload = format!("{{\"id_str\":\"1\",\"text\":\"{filler}\"}}");
    let mut text = String::with_capacity(52 << 20);
    let mut tweets = 0u64;
    let mut n = 0u64;
    while text.len() < 50 << 20 {
        let secs = n as f64 * 0.05;
        n += 1;
        if n % 5000 == 0 {
            text += &gap("election", "reconnect", Some(secs - 1.0), secs, 0);
        } else if n % 700 == 0 {
            text += &limit("election", secs, "election/0", n / 700);
        } else {
            text += &envelope("election", "tweet", secs, "election/0", &payload);
            tweets += 1;
        }
    }
    std::fs::write(data.join("2026-11-22.jsonl"), &text).expect("write");
    let started = Instant::now();
    let out = coverage(dir.path(), &[]);
    let elapsed = started.elapsed();
    let stdout = text_of(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let limits = (n / 700) - (n / 35_000);
    let rows = table(&stdout);
    let total = row(&rows, "election", "total");
    assert_eq!(total[0], (tweets + limits).to_string(), "{stdout}");
    assert!(stdout.contains("malformed lines: 0"), "{stdout}");
    let mb = text.len() as f64 / 1e6;
    eprintln!(
        "coverage throughput: {mb:.0} MB in {:.3} s = {:.0} MB/s (whole process, page cache warm)",
        elapsed.as_secs_f64(),
        mb / elapsed.as_secs_f64()
    );
}

fn text_of(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}
