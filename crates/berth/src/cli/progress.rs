//! Progress on long operations (`berth demo`, `berth worker-image build`).
//!
//! On a terminal: a live status line (spinner, elapsed time, what is
//! happening now) under the event lines. Anywhere else (CI logs, pipes) the
//! status line is not drawn and only the timestamped event lines are
//! written, so captured output stays plain text.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    /// A progress display on stderr; stdout is left to results.
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
                .expect("a valid progress template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    /// An event line, stamped with the time since the start; written above
    /// the status line.
    pub fn say(&self, line: &str) {
        let stamp = self.started.elapsed().as_secs_f64();
        // `suspend` clears the status line, prints, and redraws it; unlike
        // `println` it also prints when the bar is hidden (not a terminal).
        self.bar.suspend(|| eprintln!("[{stamp:>6.2}s] {line}"));
    }

    /// What is happening now (only drawn on a terminal).
    pub fn status(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }

    /// Removes the status line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
