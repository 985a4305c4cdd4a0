//! Progress of an apply on stderr: indicatif bars on a terminal, one-line
//! reports every few seconds elsewhere (cron, CI, verbose logs), nothing
//! under `-q`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tracing::info;

use crate::oci::Digest;
use crate::plan::render::human_bytes;

/// Time between two progress lines when no bars are drawn, unless
/// `SYNCER_PROGRESS_INTERVAL` (seconds, fractions allowed) sets another.
pub const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// Environment variable that sets the progress line interval in seconds.
pub const INTERVAL_VAR: &str = "SYNCER_PROGRESS_INTERVAL";

/// Blobs smaller than this get no bar of their own: they come and go too
/// fast to read, and the total bar counts their bytes anyway.
const BLOB_BAR_MIN_SIZE: u64 = 1 << 20;

/// Display mode of apply progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing (`-q`).
    Hidden,
    /// indicatif bars on stderr: total bytes and one bar per active blob.
    Bars,
    /// One line every `interval`, through the log when `-v` enabled info
    /// logs, else written to stderr as plain text.
    Lines { interval: Duration },
}

impl ProgressMode {
    /// Picks the mode from the log level and stderr. `-q` turns warnings
    /// off, so progress is hidden. Bars would garble info logs, so `-v`
    /// (or `RUST_LOG` at info or below) gets lines, and so does a stderr
    /// that is not a terminal.
    pub fn detect() -> Self {
        if !tracing::enabled!(tracing::Level::WARN) {
            ProgressMode::Hidden
        } else if std::io::stderr().is_terminal() && !tracing::enabled!(tracing::Level::INFO) {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines {
                interval: line_interval(),
            }
        }
    }
}

/// Allowed `SYNCER_PROGRESS_INTERVAL`, in seconds: a hundredth of a second
/// to a day. Outside it, `Duration::from_secs_f64` panics on huge values and
/// rounds tiny ones to zero, which tokio's interval rejects.
const INTERVAL_SECONDS: std::ops::RangeInclusive<f64> = 0.01..=86_400.0;

/// Reads the line interval from `SYNCER_PROGRESS_INTERVAL`. An unset value
/// gives the default, and so does an invalid or out-of-range one, with a
/// warning.
fn line_interval() -> Duration {
    let Ok(text) = std::env::var(INTERVAL_VAR) else {
        return LINE_INTERVAL;
    };
    parse_interval(&text).unwrap_or_else(|| {
        tracing::warn!(
            value = %text,
            "{INTERVAL_VAR} is not a number of seconds from {} to {}, using {}s",
            INTERVAL_SECONDS.start(),
            INTERVAL_SECONDS.end(),
            LINE_INTERVAL.as_secs()
        );
        LINE_INTERVAL
    })
}

/// Parses a number of seconds within [`INTERVAL_SECONDS`].
fn parse_interval(text: &str) -> Option<Duration> {
    let seconds = text.trim().parse::<f64>().ok()?;
    // A NaN fails `contains` too.
    INTERVAL_SECONDS
        .contains(&seconds)
        .then(|| Duration::from_secs_f64(seconds))
}

/// Counters shared by the bars, the line reporter and every blob.
#[derive(Default)]
struct Counters {
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    blobs_done: AtomicUsize,
    blobs_total: AtomicUsize,
    images_done: AtomicUsize,
    images_total: AtomicUsize,
}

/// Progress of one apply run, shared by reference. Methods update atomic
/// counters and the bars, which indicatif redraws at a limited rate.
pub struct Progress {
    counters: Arc<Counters>,
    bars: Option<Bars>,
    ticker: Option<JoinHandle<()>>,
    started: Instant,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
}

impl Progress {
    /// Starts showing progress in `mode`. `Lines` spawns a task on the
    /// current tokio runtime, so call it from inside one.
    pub fn new(mode: ProgressMode) -> Self {
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        let (bars, ticker) = match mode {
            ProgressMode::Hidden => (None, None),
            ProgressMode::Bars => (Some(Bars::new()), None),
            ProgressMode::Lines { interval } => {
                let ticker = spawn_line_reporter(counters.clone(), started, interval);
                (None, Some(ticker))
            }
        };
        Progress {
            counters,
            bars,
            ticker,
            started,
        }
    }

    /// Progress that shows nothing, for library callers and tests.
    pub fn hidden() -> Self {
        Progress::new(ProgressMode::Hidden)
    }

    /// Sets what the run has to do: bytes and blobs to read from sources,
    /// and images (operations) to finish.
    pub fn set_totals(&self, bytes: u64, blobs: usize, images: usize) {
        let counters = &self.counters;
        counters.bytes_total.store(bytes, Ordering::Relaxed);
        counters.blobs_total.store(blobs, Ordering::Relaxed);
        counters.images_total.store(images, Ordering::Relaxed);
        if let Some(bars) = &self.bars {
            bars.total.set_length(bytes);
            bars.total.set_message(images_message(counters));
        }
    }

    /// Starts tracking one blob read; dropping the handle marks it done.
    pub fn start_blob(&self, digest: &Digest, size: u64) -> BlobProgress {
        let bar = self
            .bars
            .as_ref()
            .filter(|_| size >= BLOB_BAR_MIN_SIZE)
            .map(|bars| bars.add_blob(digest, size));
        BlobProgress {
            counters: self.counters.clone(),
            total: self.bars.as_ref().map(|bars| bars.total.clone()),
            bar,
            counted: AtomicU64::new(0),
        }
    }

    /// Records one finished operation, whatever its outcome.
    pub fn image_done(&self) {
        self.counters.images_done.fetch_add(1, Ordering::Relaxed);
        if let Some(bars) = &self.bars {
            bars.total.set_message(images_message(&self.counters));
        }
    }

    /// Removes the bars and stops the line reporter, before the summary.
    pub fn finish(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if let Some(bars) = self.bars.take() {
            bars.total.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }

    /// Formats the one-line report that the `Lines` mode writes.
    pub fn line(&self) -> String {
        progress_line(&self.counters, self.started.elapsed())
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .expect("progress template is valid")
        .progress_chars("=> ");
        let total = multi.add(ProgressBar::new(0).with_style(style));
        Bars { multi, total }
    }

    fn add_blob(&self, digest: &Digest, size: u64) -> ProgressBar {
        let style = ProgressStyle::with_template("  {prefix} [{bar:30}] {bytes}/{total_bytes}")
            .expect("progress template is valid")
            .progress_chars("=> ");
        let short = &digest.hex()[..digest.hex().len().min(12)];
        let bar = ProgressBar::new(size)
            .with_style(style)
            .with_prefix(short.to_string());
        self.multi.add(bar)
    }
}

/// Progress of one blob read, fed by the fan-out as chunks arrive.
pub struct BlobProgress {
    counters: Arc<Counters>,
    total: Option<ProgressBar>,
    bar: Option<ProgressBar>,
    /// Bytes this blob added to the totals, taken back by `restart`.
    counted: AtomicU64,
}

impl BlobProgress {
    /// Counts `bytes` more read from the source.
    pub fn advance(&self, bytes: u64) {
        self.counted.fetch_add(bytes, Ordering::Relaxed);
        self.counters.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        if let Some(total) = &self.total {
            total.inc(bytes);
        }
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// Takes back what an abandoned attempt counted, before a retry reads
    /// the blob again, so the total never exceeds the work.
    pub fn restart(&self) {
        let counted = self.counted.swap(0, Ordering::Relaxed);
        self.counters
            .bytes_done
            .fetch_sub(counted, Ordering::Relaxed);
        if let Some(total) = &self.total {
            total.set_position(total.position().saturating_sub(counted));
        }
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        }
    }
}

impl Drop for BlobProgress {
    fn drop(&mut self) {
        self.counters.blobs_done.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn images_message(counters: &Counters) -> String {
    format!(
        "{}/{} images",
        counters.images_done.load(Ordering::Relaxed),
        counters.images_total.load(Ordering::Relaxed)
    )
}

/// Writes one line every `interval` until aborted. Uses the log when info
/// logs are on, so `--log-format json` stays parseable, else plain stderr.
fn spawn_line_reporter(
    counters: Arc<Counters>,
    started: Instant,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            ticks.tick().await;
            let line = progress_line(&counters, started.elapsed());
            if tracing::enabled!(tracing::Level::INFO) {
                info!("{line}");
            } else {
                eprintln!("{line}");
            }
        }
    })
}

fn progress_line(counters: &Counters, elapsed: Duration) -> String {
    let done = counters.bytes_done.load(Ordering::Relaxed);
    let total = counters.bytes_total.load(Ordering::Relaxed);
    let percent = if total > 0 {
        (done as f64 * 100.0 / total as f64).min(100.0)
    } else {
        100.0
    };
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        (done as f64 / seconds) as u64
    } else {
        0
    };
    format!(
        "apply progress: {} of {} read ({percent:.0}%), {} of {} blobs, {} of {} images, {}/s, {}s elapsed",
        human_bytes(done),
        human_bytes(total),
        counters.blobs_done.load(Ordering::Relaxed),
        counters.blobs_total.load(Ordering::Relaxed),
        counters.images_done.load(Ordering::Relaxed),
        counters.images_total.load(Ordering::Relaxed),
        human_bytes(rate),
        elapsed.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_counts_bytes_blobs_and_images() {
        let progress = Progress::hidden();
        progress.set_totals(4 << 20, 2, 3);
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let blob = progress.start_blob(&digest, 4 << 20);
        blob.advance(1 << 20);
        drop(blob);
        progress.image_done();
        let line = progress.line();
        assert!(line.contains("1.0 MiB of 4.0 MiB read (25%)"), "{line}");
        assert!(line.contains("1 of 2 blobs"), "{line}");
        assert!(line.contains("1 of 3 images"), "{line}");
    }

    #[test]
    fn interval_out_of_range_is_rejected() {
        assert_eq!(parse_interval("0.02"), Some(Duration::from_millis(20)));
        assert_eq!(parse_interval(" 86400 "), Some(Duration::from_secs(86_400)));
        for text in [
            "1e300", "1e-300", "0", "-1", "NaN", "inf", "0.001", "86401", "soon",
        ] {
            assert_eq!(parse_interval(text), None, "{text}");
        }
    }

    #[test]
    fn restart_takes_back_counted_bytes() {
        let progress = Progress::hidden();
        progress.set_totals(1000, 1, 1);
        let digest: Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
        let blob = progress.start_blob(&digest, 1000);
        blob.advance(600);
        blob.restart();
        blob.advance(1000);
        assert!(progress.line().contains("1000 B of 1000 B read (100%)"));
    }
}
