//! The container image, tested as a user would run it but without a container runtime: in a
//! chroot of the image's mounted root filesystem (`scripts/image` builds the image, mounts
//! it and sets `RACK_RECONCILER_IMAGE_ROOT`). Without that variable there is no image to test
//! and the test says so.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::moto::Moto;
use common::rack_fixture::{self, STACK};

fn image_root() -> Option<PathBuf> {
    std::env::var_os("RACK_RECONCILER_IMAGE_ROOT").map(PathBuf::from)
}

/// `chroot ROOT /rack-reconciler ARGS...` with the AWS environment pointed at `endpoint`.
async fn in_image(root: &Path, endpoint: &str, args: &[&str]) -> Output {
    tokio::process::Command::new("chroot")
        .arg(root)
        .arg("/rack-reconciler")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .expect("chroot into the image")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn the_image_runs_version_validate_and_apply_against_moto() {
    let Some(root) = image_root() else {
        eprintln!("RACK_RECONCILER_IMAGE_ROOT is not set: no image to test (scripts/image builds and tests it)");
        return;
    };
    let version = in_image(&root, "http://127.0.0.1:1", &["--version"]).await;
    assert!(version.status.success(), "{}", text(&version));
    assert!(text(&version).contains(env!("CARGO_PKG_VERSION")));

    let work = root.join("work");
    std::fs::create_dir_all(&work).expect("work dir in the image");
    std::fs::write(work.join("params.yaml"), "ECSExec: \"No\"\n").expect("params");
    std::fs::write(
        work.join("sim.yaml"),
        "backend: sim\nrack: convox\nparams_file: params.yaml\n",
    )
    .expect("config");
    let valid = in_image(
        &root,
        "http://127.0.0.1:1",
        &["--config", "/work/sim.yaml", "validate"],
    )
    .await;
    assert!(valid.status.success(), "{}", text(&valid));
    assert!(text(&valid).contains("/work/params.yaml: valid"));

    // The real SDK path: the moto rack, over HTTP on loopback, from inside the image.
    let moto = Moto::start().await;
    rack_fixture::create(&moto).await;
    std::fs::write(
        work.join("aws.yaml"),
        format!(
            "backend: aws\nrack: {STACK}\nparams_file: params.yaml\nlease: none\nstatus_file: false\n\
             services:\n  - service: ServiceWebApi\n    task_definition: ApiWebTasks\n"
        ),
    )
    .expect("config");
    let applied = in_image(
        &root,
        &moto.endpoint,
        &["--config", "/work/aws.yaml", "apply", "--timeout", "60s"],
    )
    .await;
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    assert!(
        text(&applied).contains("ECSExec: Converged"),
        "{}",
        text(&applied)
    );
    std::fs::remove_dir_all(&work).expect("clean up");
}
