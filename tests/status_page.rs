//! The status page in a real browser: Debian's headless `chromium` loads `GET /ui/` of a real
//! `hoard serve` after known traffic, runs the page's script, and the rendered DOM must show the
//! numbers `/metrics` and `/status` report; a screenshot is written to
//! `target/tmp/status-page.png`. Without chromium the test fails under `CI=true` (`.ci/run`
//! installs it) and is skipped with a message elsewhere. (A real process: not under madsim.)
#![cfg(not(madsim))]

mod real_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use real_server::{cas_path, RealServer};

/// The browser: `$CHROMIUM`, or `chromium` on the `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("chromium"))
        .find(|path| path.is_file())
}

/// Runs headless chromium on `url` with `args` (a fresh profile each time) and returns stdout.
fn run_chromium(browser: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Time for the page's fetch of /ui/data and its render, in virtual time.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The attributes and the text of the element with `id` in `dom`.
fn element<'a>(dom: &'a str, id: &str) -> (&'a str, &'a str) {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the page"));
    let attrs_end = at + dom[at..].find('>').unwrap();
    let text_end = attrs_end + dom[attrs_end..].find('<').unwrap();
    (&dom[at..attrs_end], &dom[attrs_end + 1..text_end])
}

/// The value of attribute `name` in `attrs`.
fn attr<'a>(attrs: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    let start = attrs
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {attrs}"))
        + key.len();
    &attrs[start..start + attrs[start..].find('"').unwrap()]
}

/// The HTML inside the element with `id`, up to its closing `</tag>`.
fn inner<'a>(dom: &'a str, id: &str, tag: &str) -> &'a str {
    let (attrs, _) = element(dom, id);
    let start = dom.find(attrs).unwrap() + attrs.len() + 1;
    let end = start + dom[start..].find(&format!("</{tag}>")).unwrap();
    &dom[start..end]
}

/// The sum of the samples of `metric` in `metrics` whose labels include every one of `labels`.
fn metric_sum(metrics: &str, metric: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// The number after `"key":` in a flat JSON object.
fn json_number(json: &str, key: &str) -> u64 {
    let at = json.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
    json[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_page_shows_what_the_server_reports() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is missing; .ci/run installs it (apt-get install chromium)"
        );
        eprintln!("skipping: no chromium on PATH (apt-get install chromium, or set CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = RealServer::start(dir.path(), &["--max-size", "64M"]);
    let blobs: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("status page blob {i} ").repeat(5).into_bytes())
        .collect();
    for blob in &blobs {
        assert_eq!(server.request("PUT", &cas_path(blob), blob).0, 200);
    }
    for blob in &blobs[..2] {
        assert_eq!(server.request("GET", &cas_path(blob), b"").0, 200);
    }
    assert_eq!(
        server.request("GET", &cas_path(b"never stored"), b"").0,
        404
    );
    // A body that does not hash to its key: a client error and an upload failure.
    assert_eq!(server.request("PUT", &cas_path(b"one"), b"another").0, 400);
    let action_hash = "ef".repeat(32);
    let action = format!("/ci/ac/{action_hash}");
    assert_eq!(server.request("GET", &action, b"").0, 404);
    assert_eq!(server.request("PUT", &action, b"a ccache entry").0, 200);
    assert_eq!(server.request("GET", &action, b"").0, 200);
    assert_eq!(server.request("GET", &action, b"").0, 200);

    let status = server.get_text("/status");
    let metrics = server.get_text("/metrics");
    let served_before = json_number(&status, "http");
    let dom = run_chromium(&browser, &server.url("/ui/"), &["--dump-dom"]);

    assert_eq!(element(&dom, "error").1, "", "the page reported an error");
    assert!(
        dom.contains("data-rendered=\""),
        "the page's script never rendered:\n{dom}"
    );
    // Hit ratios: the page's figures are the store's counts.
    let ac = element(&dom, "ac-http").0;
    let ac_hits = metric_sum(
        &metrics,
        "hoard_ac_lookups_total",
        &["protocol=\"http\"", "result=\"hit\""],
    );
    let ac_misses = metric_sum(
        &metrics,
        "hoard_ac_lookups_total",
        &["protocol=\"http\"", "result=\"miss\""],
    );
    assert_eq!((ac_hits, ac_misses), (2, 1));
    assert_eq!(attr(ac, "data-hits"), ac_hits.to_string());
    assert_eq!(attr(ac, "data-misses"), ac_misses.to_string());
    assert_eq!(element(&dom, "ac-http").1, "66.7% (2/3)");
    let cas = element(&dom, "cas-http").0;
    let cas_hits = metric_sum(
        &metrics,
        "hoard_cas_lookups_total",
        &["protocol=\"http\"", "result=\"hit\""],
    ) - metric_sum(
        &metrics,
        "hoard_cas_lookups_total",
        &["operation=\"contains\"", "result=\"hit\""],
    );
    assert_eq!(attr(cas, "data-hits"), cas_hits.to_string());
    assert_eq!(attr(element(&dom, "ac-grpc").0, "data-hits"), "0");

    // Stored bytes against --max-size, as /status reports them.
    let blob_bytes = json_number(&status, "blob_bytes");
    assert_eq!(
        blob_bytes,
        blobs.iter().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(
        attr(element(&dom, "stored").0, "data-value"),
        blob_bytes.to_string()
    );
    assert_eq!(element(&dom, "stored").1, format!("{blob_bytes} B"));
    assert_eq!(
        attr(element(&dom, "max-size").0, "data-value"),
        (64u64 << 20).to_string()
    );
    assert_eq!(element(&dom, "max-size").1, "64.0 MiB");
    assert_eq!(
        attr(element(&dom, "blobs").0, "data-value"),
        json_number(&status, "blobs").to_string()
    );
    assert_eq!(attr(element(&dom, "actions").0, "data-value"), "1");
    // The stored chart draws a line per series and its legend names the latest values.
    let stored_chart = inner(&dom, "chart-stored", "svg");
    assert!(
        stored_chart.matches("<polyline").count() >= 3,
        "{stored_chart}"
    );
    let legend = inner(&dom, "legend-stored", "div");
    assert!(
        legend.contains(&format!("blob bytes: <b>{blob_bytes} B</b>")),
        "{legend}"
    );
    assert!(legend.contains("--max-size: <b>64.0 MiB</b>"), "{legend}");
    assert!(inner(&dom, "chart-hits", "svg").contains("<polyline"));

    // Requests: what /status counted, plus this test's /status and /metrics and the page's own
    // GET (and possibly a favicon request by the browser).
    let requests: u64 = attr(element(&dom, "requests-http").0, "data-value")
        .parse()
        .unwrap();
    assert!(
        (served_before + 3..=served_before + 4).contains(&requests),
        "{requests} requests shown, {served_before} before the browser"
    );
    // Errors by class and upload failures by reason.
    let errors = inner(&dom, "errors", "tbody");
    assert!(
        errors.contains("data-class=\"client\"><td>client</td><td>1</td>"),
        "{errors}"
    );
    let failures = inner(&dom, "upload-failures", "tbody");
    assert!(
        failures.contains("<td>hash_mismatch</td><td>1</td>"),
        "{failures}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "hoard_upload_failures_total",
            &["reason=\"hash_mismatch\""]
        ),
        1
    );
    // Upload latency: the three good PUTs, the bad one and the AC PUT were timed.
    assert_eq!(attr(element(&dom, "uploads").0, "data-value"), "5");
    assert!(
        element(&dom, "latency-p50").1.ends_with(" ms"),
        "{}",
        element(&dom, "latency-p50").1
    );
    // The busiest entries: the ccache entry under its instance, with the bytes it moved.
    let top = inner(&dom, "top", "tbody");
    assert!(top.contains(&action_hash), "{top}");
    assert!(top.contains("<td>ci <small>4 req"), "{top}");
    assert_eq!(element(&dom, "queue-depth").1, "no tier");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &server.url("/ui/"),
        &[
            "--window-size=1400,1100",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "not a screenshot"
    );
    eprintln!("screenshot: {}", shot.display());
}
