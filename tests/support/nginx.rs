//! A running nginx from a bundle, stopped (gracefully, then by force) when dropped.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub struct Nginx {
    /// The bundle root, used as nginx's prefix (`-p`).
    pub prefix: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    /// The emulator a foreign-architecture binary runs under (`qemu-aarch64-static`).
    runner: Option<String>,
}

impl Nginx {
    /// Writes `conf` as `<prefix>/conf/<name>.conf`, starts `sbin/nginx -p prefix -c ...` in
    /// the foreground and waits until every port in `ports` accepts connections on a socket
    /// this nginx holds (another process answering on the port does not count).
    ///
    /// `conf` is a complete nginx.conf; its `error_log`/`pid` default to the prefix's `logs/`.
    pub fn start(prefix: &Path, conf: &str, ports: &[u16]) -> Nginx {
        Nginx::try_start(prefix, conf, ports).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(prefix: &Path, conf: &str, ports: &[u16]) -> Result<Nginx, String> {
        Nginx::try_start_with(None, prefix, conf, ports)
    }

    /// [`Nginx::start`] for a binary of another architecture, run by `runner`. Worker
    /// processes cannot be told apart under an emulator ([`Nginx::worker_pids`] finds none).
    pub fn start_under(runner: &str, prefix: &Path, conf: &str, ports: &[u16]) -> Nginx {
        Nginx::try_start_with(Some(runner), prefix, conf, ports).unwrap_or_else(|e| panic!("{e}"))
    }

    fn command(runner: Option<&str>, prefix: &Path) -> Command {
        match runner {
            Some(runner) => {
                let mut cmd = Command::new(runner);
                cmd.arg(prefix.join("sbin/nginx"));
                cmd
            }
            None => Command::new(prefix.join("sbin/nginx")),
        }
    }

    fn try_start_with(runner: Option<&str>, prefix: &Path, conf: &str, ports: &[u16]) -> Result<Nginx, String> {
        let conf_path = prefix.join("conf/test.conf");
        fs::create_dir_all(prefix.join("logs")).unwrap();
        fs::write(&conf_path, conf).unwrap();
        let _ = fs::remove_file(prefix.join("logs/error.log"));
        let child = Nginx::command(runner, prefix)
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg("conf/test.conf")
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", prefix.join("sbin/nginx").display()))?;
        let mut nginx = Nginx { prefix: prefix.to_path_buf(), conf: conf_path, child: Some(child), runner: runner.map(str::to_owned) };
        let deadline = Instant::now() + Duration::from_secs(15);
        for &port in ports {
            loop {
                let pid = nginx.child.as_ref().unwrap().id();
                if TcpStream::connect(("127.0.0.1", port)).is_ok() && listens_on(pid, port) {
                    break;
                }
                if let Some(status) = nginx.child.as_mut().unwrap().try_wait().unwrap() {
                    let mut stderr = String::new();
                    use std::io::Read;
                    let _ = nginx.child.as_mut().unwrap().stderr.take().map(|mut s| s.read_to_string(&mut stderr));
                    nginx.child = None;
                    return Err(format!("nginx exited with {status} at start:\n{stderr}\n{}", nginx.error_log()));
                }
                if Instant::now() > deadline {
                    return Err(format!("nginx did not listen on 127.0.0.1:{port} within 15 s:\n{}", nginx.error_log()));
                }
                sleep(Duration::from_millis(20));
            }
        }
        Ok(nginx)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }

    /// Runs `sbin/nginx -p prefix -c conf -s SIGNAL`.
    pub fn signal(&self, signal: &str) {
        let status =
            Nginx::command(self.runner.as_deref(), &self.prefix).arg("-p").arg(&self.prefix).arg("-c").arg(&self.conf).arg("-s").arg(signal).status().unwrap();
        assert!(status.success(), "nginx -s {signal} failed:\n{}", self.error_log());
    }

    /// Replaces the configuration and reloads, waiting until the old workers are gone.
    pub fn reload(&mut self, conf: &str) {
        let before = self.worker_pids();
        fs::write(&self.conf, conf).unwrap();
        self.signal("reload");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let now = self.worker_pids();
            if !now.is_empty() && now.iter().all(|p| !before.contains(p)) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("workers were not replaced within 15 s of a reload:\n{}", self.error_log());
    }

    pub fn master_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The current worker processes (children of the master named "nginx: worker process").
    pub fn worker_pids(&self) -> Vec<u32> {
        let Some(master) = self.master_pid() else { return Vec::new() };
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
            let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            let ppid: u32 = after_comm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let cmdline = fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
            if ppid == master && cmdline.starts_with("nginx: worker process") && !cmdline.contains("shutting down") {
                pids.push(pid);
            }
        }
        pids.sort();
        pids
    }

    /// `-s quit`, then waits for the master to exit; returns its exit status.
    pub fn quit(mut self) -> std::process::ExitStatus {
        self.signal("quit");
        self.wait(Duration::from_secs(15)).expect("nginx exits within 15 s of -s quit")
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(master) = self.master_pid() else { return };
        let workers = self.worker_pids();
        // SIGQUIT lets workers finish; if the master hangs, SIGKILL it and its workers, which
        // would otherwise outlive it holding the test's ports.
        unsafe { libc_kill(master as i32, 3) };
        if self.wait(Duration::from_secs(5)).is_none() {
            for pid in workers {
                unsafe { libc_kill(pid as i32, 9) };
            }
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Whether process `pid` holds a socket listening on TCP `port` (any address): the inodes of
/// listening sockets in `/proc/net/tcp{,6}` against the process's open descriptors.
fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else { continue };
            let local_port = local.rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if *state == LISTEN && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str())))
}

#[cfg(test)]
mod tests {
    use super::listens_on;

    #[test]
    fn a_listening_socket_is_found_only_in_the_process_that_holds_it() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        assert!(!listens_on(1, port), "pid 1 does not hold this test's socket");
        drop(listener);
        assert!(!listens_on(std::process::id(), port), "a closed listener is not found");
    }

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| crate::free_port()).collect();
        let unique: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|&p| (20_000..32_000).contains(&p)), "below the ephemeral range");
    }
}
