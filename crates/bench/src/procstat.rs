//! Process cost from `/proc`: CPU time (utime + stime) and resident memory.

#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

impl ProcSample {
    /// Several processes as one: CPU ticks, RSS and peak RSS added up (`None` for none).
    pub(crate) fn sum(samples: &[ProcSample]) -> Option<ProcSample> {
        samples.iter().copied().reduce(|a, b| ProcSample {
            cpu_ticks: a.cpu_ticks + b.cpu_ticks,
            rss_kb: a.rss_kb + b.rss_kb,
            hwm_kb: a.hwm_kb + b.hwm_kb,
        })
    }
}

/// Samples `/proc/<pid>` (`None` for the bench process itself).
pub(crate) fn sample(pid: Option<u32>) -> std::io::Result<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{dir}: unexpected format"),
        )
    };
    Ok(ProcSample {
        cpu_ticks: parse_stat_cpu(&stat).ok_or_else(bad)?,
        rss_kb: parse_status_kb(&status, "VmRSS:").ok_or_else(bad)?,
        hwm_kb: parse_status_kb(&status, "VmHWM:").unwrap_or(0),
    })
}

/// utime + stime (fields 14 and 15) from `/proc/<pid>/stat`; the command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace(); // field 3 (state) onwards
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS: 12345 kB` (a tab after the colon).
pub(crate) fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU used between two samples, in seconds.
pub(crate) fn cpu_secs(a: &ProcSample, b: &ProcSample) -> f64 {
    b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / clock_ticks_per_sec()
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_awkward_command_name() {
        let stat = "4242 (node) x (y)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 1234 567 0 0 20 0 11 0 100 1000000 5000 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(1234 + 567));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\therald\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn sums_several_processes() {
        let s = |cpu_ticks, rss_kb, hwm_kb| ProcSample {
            cpu_ticks,
            rss_kb,
            hwm_kb,
        };
        assert!(ProcSample::sum(&[]).is_none());
        let one = ProcSample::sum(&[s(5, 10, 20)]).unwrap();
        assert_eq!((one.cpu_ticks, one.rss_kb, one.hwm_kb), (5, 10, 20));
        let two = ProcSample::sum(&[s(5, 10, 20), s(1, 2, 3)]).unwrap();
        assert_eq!((two.cpu_ticks, two.rss_kb, two.hwm_kb), (6, 12, 23));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(None).unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
    }
}
