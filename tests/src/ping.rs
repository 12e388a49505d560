//! Reading `ping`'s output: the summary line, and the reply timestamps of
//! `ping -D`.

/// (transmitted, received) from ping's summary line
/// (`N packets transmitted, M received, …`); panics showing the output if
/// there is none.
pub fn summary(out: &str) -> (usize, usize) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{out}"));
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// The Unix times (`ping -D`'s `[SECONDS]` prefix) of the echo replies.
pub fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?;
            ts.parse().ok()
        })
        .collect()
}

/// Starts `ping -i 0.01 -W 1 -c count ip` in the background in `ns`.
pub fn spawn(
    lab: &crate::Lab,
    ns: impl AsRef<std::path::Path>,
    ip: impl std::fmt::Display,
    count: usize,
) -> crate::Process {
    lab.spawn(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            &ip.to_string(),
        ],
    )
}

/// (transmitted, received) of a ping started by [`spawn`], once it is done
/// (waited for at most a minute).
pub fn counts(p: &mut crate::Process) -> (usize, usize) {
    let st = p.wait_timeout(std::time::Duration::from_secs(60));
    let log = p.log_text();
    assert!(
        log.contains("packets transmitted"),
        "ping ended {st:?}:\n{log}"
    );
    summary(&log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_timestamps() {
        let out = "[1700000000.5] 64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=0.05 ms\n\
                   --- 10.0.0.1 ping statistics ---\n\
                   600 packets transmitted, 598 received, 0.3% packet loss, time 6000ms\n";
        assert_eq!(summary(out), (600, 598));
        assert_eq!(reply_times(out), [1_700_000_000.5]);
    }
}
