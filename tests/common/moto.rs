//! A moto server (the AWS emulator, installed by `scripts/test` into `.venv`) started on a
//! free loopback port for one test and stopped when dropped.

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_cloudformation::Client as CfnClient;
use aws_sdk_ecs::Client as EcsClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

fn moto_server() -> String {
    std::env::var("MOTO_SERVER")
        .unwrap_or_else(|_| format!("{}/.venv/bin/moto_server", env!("CARGO_MANIFEST_DIR")))
}

impl Moto {
    /// Starts a fresh server; panics with the fix when moto is not installed.
    pub async fn start() -> Moto {
        Self::start_with(&[]).await
    }

    /// A fresh server with `env` (moto's settings, e.g. `INITIAL_NO_AUTH_ACTION_COUNT`).
    pub async fn start_with(env: &[(&str, &str)]) -> Moto {
        let bin = moto_server();
        assert!(
            std::path::Path::new(&bin).exists(),
            "moto is not installed at {bin}: run scripts/test (it creates .venv with moto[server]==5.2.5) \
             or set MOTO_SERVER"
        );
        Self::start_program(&[&bin], env).await
    }

    /// A fresh server whose ECS completes a rollout at once and returns a new revision's tags
    /// (`tests/moto/ecs_rollouts.py`): what moto leaves out of following a change to its end.
    pub async fn start_with_rollouts() -> Moto {
        let bin = moto_server();
        let python = std::path::Path::new(&bin).with_file_name("python");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto/ecs_rollouts.py");
        Self::start_program(&[&python.to_string_lossy(), script], &[]).await
    }

    async fn start_program(program: &[&str], env: &[(&str, &str)]) -> Moto {
        // The free port is found by binding and releasing it, so another process may take it
        // in between: try a few ports before giving up.
        for _ in 0..3 {
            if let Some(moto) = Self::try_start(program, env).await {
                return moto;
            }
        }
        panic!("moto_server did not start ({})", program.join(" "));
    }

    async fn try_start(program: &[&str], env: &[(&str, &str)]) -> Option<Moto> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let mut child = Command::new(program[0])
            .args(&program[1..])
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Running on") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            let _ = child.start_kill();
            return None;
        }
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }

    pub async fn sdk_config(&self, endpoint: &str) -> aws_config::SdkConfig {
        self.sdk_config_as(endpoint, "testing", "testing").await
    }

    /// The configuration of a client signing with this access key.
    pub async fn sdk_config_as(
        &self,
        endpoint: &str,
        key: &str,
        secret: &str,
    ) -> aws_config::SdkConfig {
        sdk_config_for(endpoint, key, secret).await
    }

    pub async fn clients(&self) -> (CfnClient, EcsClient) {
        let c = self.sdk_config(&self.endpoint).await;
        (CfnClient::new(&c), EcsClient::new(&c))
    }
}

/// The configuration of a client for `endpoint` (moto, or a canned server) signing with this
/// access key, in us-east-1.
pub async fn sdk_config_for(endpoint: &str, key: &str, secret: &str) -> aws_config::SdkConfig {
    aws_config::defaults(rack_reconciler::rack::aws::behavior_version())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            key, secret, None, None, "moto",
        ))
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_initial_backoff(Duration::from_millis(50)),
        )
        .load()
        .await
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
