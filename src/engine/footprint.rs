//! What a loaded model costs in memory, from the process's anonymous RSS
//! (see [`LoadedModel::footprint_bytes`](super::LoadedModel::footprint_bytes)).

use super::ModelFormat;

/// The process's anonymous resident memory (`RssAnon` in `/proc/self/status`),
/// in bytes; `None` where that cannot be read (not Linux, no `/proc`).
///
/// Anonymous memory is what `malloc` hands out, so it grows with what ONNX
/// Runtime allocates for a session, and not with the pages of a mapped model
/// file (those are file-backed, counted in `RssFile`).
///
/// ```
/// if cfg!(target_os = "linux") {
///     assert!(model_router::engine::anon_rss_bytes().unwrap() > 0);
/// }
/// ```
pub fn anon_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_anon(&status)
}

fn parse_rss_anon(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The footprint rule documented on `LoadedModel::footprint_bytes`.
pub(super) fn footprint_bytes(
    format: ModelFormat,
    file_bytes: u64,
    before: Option<u64>,
    after: Option<u64>,
) -> u64 {
    let Some(grown) = before
        .zip(after)
        .map(|(before, after)| after.saturating_sub(before))
    else {
        return file_bytes;
    };
    match format {
        ModelFormat::Ort => file_bytes.saturating_add(grown),
        ModelFormat::Onnx => grown.max(file_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_anon_from_proc_status() {
        let status = "Name:\tx\nVmRSS:\t  2048 kB\nRssAnon:\t    1500 kB\nRssFile:\t 548 kB\n";
        assert_eq!(parse_rss_anon(status), Some(1500 * 1024));
        assert_eq!(parse_rss_anon("VmRSS:\t 2048 kB\n"), None);
    }

    #[test]
    fn footprint_counts_the_mapping_for_ort_and_at_least_the_file_for_onnx() {
        let mib = 1 << 20;
        // .ort: mapping plus what ONNX Runtime allocated.
        assert_eq!(
            footprint_bytes(ModelFormat::Ort, 100 * mib, Some(10 * mib), Some(13 * mib)),
            103 * mib
        );
        // .onnx: the growth when it exceeds the file...
        assert_eq!(
            footprint_bytes(
                ModelFormat::Onnx,
                100 * mib,
                Some(10 * mib),
                Some(160 * mib)
            ),
            150 * mib
        );
        // ...and never less than the file, even if malloc reused freed memory.
        assert_eq!(
            footprint_bytes(ModelFormat::Onnx, 100 * mib, Some(10 * mib), Some(40 * mib)),
            100 * mib
        );
        assert_eq!(
            footprint_bytes(ModelFormat::Onnx, 100 * mib, Some(50 * mib), Some(40 * mib)),
            100 * mib
        );
        // No /proc: the file's size.
        assert_eq!(
            footprint_bytes(ModelFormat::Ort, 100 * mib, None, None),
            100 * mib
        );
    }
}
