//! What the kernel counts for a process, read from `/proc/PID/stat`: the figures benchmarks
//! divide by requests (CPU time is steadier than requests per second on a shared machine).

use std::fs;

/// CPU time and minor page faults of one process so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    pub minor_faults: f64,
}

/// Linux reports /proc times in USER_HZ, 100 on every architecture it supports.
const USER_HZ: f64 = 100.0;

/// The usage of `pid`, or zeros when it has exited.
pub fn usage(pid: u32) -> Usage {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the parenthesised command name: state is field 3, minflt 10, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    Usage { cpu_seconds: (field(11) + field(12)) / USER_HZ, minor_faults: field(7) }
}

/// The usage of several processes (the workers of one nginx), summed.
pub fn total_usage(pids: &[u32]) -> Usage {
    pids.iter()
        .map(|&p| usage(p))
        .fold(Usage::default(), |a, b| Usage { cpu_seconds: a.cpu_seconds + b.cpu_seconds, minor_faults: a.minor_faults + b.minor_faults })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_spent_cpu_and_an_absent_one_none() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(usage(std::process::id()).cpu_seconds > 0.0);
        assert!(usage(std::process::id()).minor_faults > 0.0);
        assert_eq!(usage(u32::MAX), Usage::default());
    }
}
