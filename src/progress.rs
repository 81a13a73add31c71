//! Progress for long work: a bar on a terminal, plain log lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over a known number of bytes (or items): draws a bar when stderr is a terminal
/// and logs a line every tenth of the way when it is not.
pub struct Progress {
    /// The bar; hidden (draws nothing) when stderr is not a terminal.
    bar: ProgressBar,
    /// What is being done, for the log lines.
    what: &'static str,
    /// Total units of work.
    total: u64,
    /// The next tenth at which to log a line when no bar is drawn.
    next_log_tenth: u64,
}

impl Progress {
    /// Starts progress over `total` bytes.
    pub fn bytes(what: &'static str, total: u64) -> Self {
        Self::with_template(
            what,
            total,
            "{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    /// Starts progress over `total` items.
    pub fn items(what: &'static str, total: u64) -> Self {
        Self::with_template(
            what,
            total,
            "{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
    }

    fn with_template(what: &'static str, total: u64, template: &str) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what);
        Progress {
            bar,
            what,
            total: total.max(1),
            next_log_tenth: 1,
        }
    }

    /// Records that `done` units are complete.
    pub fn set(&mut self, done: u64) {
        self.bar.set_position(done);
        if self.bar.is_hidden() && done * 10 >= self.next_log_tenth * self.total {
            tracing::info!(
                "{}: {}% ({done} of {})",
                self.what,
                done * 100 / self.total,
                self.total
            );
            self.next_log_tenth = done * 10 / self.total + 1;
        }
    }

    /// Ends the bar.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
