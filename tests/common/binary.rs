//! The real binary, run against an AWS endpoint on loopback for one test: its log is followed
//! line by line (so a test waits for what the controller says, never for a length of time),
//! and it is stopped with SIGTERM, or killed when the test ends.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub struct Binary {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<String>>,
}

/// A free port on loopback for the controller's endpoints.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr").port()
}

/// `rack-reconciler --config CONFIG ARGS...` with the standard AWS environment pointed at
/// `endpoint`.
pub fn command(config: &std::path::Path, endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rack-reconciler"));
    cmd.args(["--config", &config.display().to_string()])
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NO_COLOR", "1")
        .env_remove("AWS_PROFILE");
    cmd
}

impl Binary {
    /// `rack-reconciler --config CONFIG run` with the standard AWS environment pointed at
    /// `endpoint` and `env` on top.
    pub fn run(config: &std::path::Path, endpoint: &str, env: &[(&str, &str)]) -> Binary {
        let mut child = command(config, endpoint, &["run"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run rack-reconciler");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                kept.lock().expect("log").push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Binary { child, lines, log }
    }

    /// Waits for a log line containing `needle` (a minute at most, or the test fails).
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("the controller never logged {needle:?}:\n{}", self.log()),
        }
    }

    /// `SIGKILL`: the process dies without a chance to clean up (its lease stays behind).
    pub async fn kill(mut self) -> String {
        self.child.kill().await.expect("kill -9");
        while self.lines.recv().await.is_some() {}
        self.log()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// SIGTERM, then the exit status (within 30 seconds, or the test fails).
    pub async fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().expect("pid");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("did not stop after SIGTERM")
            .expect("wait");
        // The log is complete once the pipe closes.
        while self.lines.recv().await.is_some() {}
        (exit, self.log())
    }
}
