//! Length limits on the text a module hands the host, in one place.
//!
//! A module chooses its decision reasons, its log lines and the messages of a rejected
//! config or a failed self-test, and a trap message carries a backtrace as deep as the
//! module's stack. All of it ends up in memos, logs, `/status` and verdicts, so each kind is
//! cut at a fixed length before the host keeps it: a module cannot make the host hold or
//! print more than these bounds, whatever it sends. A cut is visible (the text ends in a
//! marker giving the original length) and counted in `meshfilter_filter_truncated_total`.

use std::borrow::Cow;

use crate::metrics::FilterMetrics;

/// Longest decision reason kept, in bytes, marker included. Reasons are held in every
/// memoised decision and shown per endpoint, so they stay short.
pub const MAX_REASON_BYTES: usize = 256;

/// Longest guest log line (host `log` calls and stdout/stderr lines), in bytes, marker
/// included.
pub const MAX_LOG_LINE_BYTES: usize = 1024;

/// Longest error message kept from a module or about one (rejected config, failed
/// self-test, trap, load and reload errors), in bytes, marker included.
pub const MAX_ERROR_BYTES: usize = 4096;

/// What kind of text was cut, as the `what` label of the truncation counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextKind {
    /// A decision reason.
    Reason,
    /// A guest log line.
    LogLine,
    /// An error message.
    Error,
}

impl TextKind {
    /// The limit that applies to this kind.
    pub(crate) fn limit(self) -> usize {
        match self {
            TextKind::Reason => MAX_REASON_BYTES,
            TextKind::LogLine => MAX_LOG_LINE_BYTES,
            TextKind::Error => MAX_ERROR_BYTES,
        }
    }

    /// Label value in metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TextKind::Reason => "reason",
            TextKind::LogLine => "log",
            TextKind::Error => "error",
        }
    }
}

/// [`truncate`] to the limit of `kind`, counting a cut against `module`.
pub(crate) fn bound<'a>(
    text: &'a str,
    kind: TextKind,
    module: &str,
    metrics: &FilterMetrics,
) -> Cow<'a, str> {
    let out = truncate(text, kind.limit());
    if matches!(out, Cow::Owned(_)) {
        metrics.truncated(module, kind.as_str());
    }
    out
}

/// `text` if it fits in `limit` bytes, else its longest prefix ending on a char boundary
/// followed by `… (truncated, N bytes)` (N the original length), the whole at most `limit`
/// bytes. Borrowed when nothing is cut, so the common case costs nothing.
pub(crate) fn truncate(text: &str, limit: usize) -> Cow<'_, str> {
    truncate_len(text, text.len(), limit)
}

/// Like [`truncate`] for a `text` that is itself a prefix of something `total` bytes long
/// (a log line whose tail was never buffered).
pub(crate) fn truncate_len(text: &str, total: usize, limit: usize) -> Cow<'_, str> {
    if total <= limit && text.len() == total {
        return Cow::Borrowed(text);
    }
    let marker = format!("… (truncated, {total} bytes)");
    let room = limit.saturating_sub(marker.len()).min(text.len());
    let cut = text.floor_char_boundary(room);
    let mut out = String::with_capacity(cut + marker.len());
    out.push_str(&text[..cut]);
    // A limit smaller than the marker itself only happens in tests; never exceed it.
    if marker.len() <= limit {
        out.push_str(&marker);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_borrowed_unchanged() {
        let t = truncate("kept", 16);
        assert!(matches!(t, Cow::Borrowed("kept")));
        assert!(matches!(truncate("", 0), Cow::Borrowed("")));
        let exact = "x".repeat(MAX_REASON_BYTES);
        assert!(matches!(
            truncate(&exact, MAX_REASON_BYTES),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn long_text_is_cut_to_the_limit_with_a_marker() {
        let long = "a".repeat(10_000);
        let t = truncate(&long, 100);
        assert_eq!(t.len(), 100, "{t}");
        assert!(t.ends_with("… (truncated, 10000 bytes)"), "{t}");
        assert!(t.starts_with("aaaa"));
    }

    #[test]
    fn cuts_fall_on_char_boundaries() {
        // 'é' is two bytes: no prefix length may split one.
        let long = "é".repeat(1000);
        for limit in 40..60 {
            let t = truncate(&long, limit);
            assert!(t.len() <= limit, "{limit}: {} bytes", t.len());
            let kept = t
                .strip_suffix("… (truncated, 2000 bytes)")
                .unwrap_or_else(|| panic!("no marker: {t}"));
            assert!(kept.chars().all(|c| c == 'é'), "{kept}");
        }
    }

    #[test]
    fn a_prefix_of_a_longer_text_reports_the_whole_length() {
        let t = truncate_len("partial", 5000, 64);
        assert_eq!(t, "partial… (truncated, 5000 bytes)");
    }

    #[test]
    fn a_limit_below_the_marker_still_holds() {
        let t = truncate("abcdefghijklmnopqrstuvwxyz", 4);
        assert!(t.len() <= 4, "{t}");
    }

    #[test]
    fn limits_are_ordered_and_documented() {
        assert_eq!(TextKind::Reason.limit(), 256);
        assert_eq!(TextKind::LogLine.limit(), 1024);
        assert_eq!(TextKind::Error.limit(), 4096);
        assert_eq!(
            [TextKind::Reason, TextKind::LogLine, TextKind::Error].map(TextKind::as_str),
            ["reason", "log", "error"]
        );
    }
}
