//! A real `redis-server` on 127.0.0.1 for the tests that need one
//! (installed by .ci/run when absent), started and killed by the test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{signal, Guard};

const T: Duration = Duration::from_secs(30);

/// A `redis-server` child on `port`, killed when dropped.
pub struct Redis {
    pub child: Guard,
    pub port: u16,
}

impl Redis {
    /// Starts one; `durable` keeps every acknowledged write across a SIGKILL
    /// (append-only file, fsync always) in `dir`.
    pub fn start(port: u16, dir: &Path, durable: bool) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]).current_dir(dir);
        if durable {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"]).arg(dir);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it: apt-get install -y redis-server)");
        let redis = Redis { child: Guard(child), port };
        let start = Instant::now();
        while redis.client().get_connection().is_err() {
            assert!(start.elapsed() < T, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        // An append-only file may still be loading: wait until it answers.
        while redis::cmd("PING").query::<String>(&mut redis.client().get_connection().unwrap()).is_err() {
            assert!(start.elapsed() < T, "redis-server did not answer PING");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap()
    }

    pub fn kill(mut self) {
        signal(&self.child, libc::SIGKILL);
        let _ = self.child.0.wait();
    }

    /// The URL tests and configs use.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}
