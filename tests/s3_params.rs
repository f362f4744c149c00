//! The params file as an S3 object (a rack's `Settings` bucket), against moto's S3: an edit
//! is picked up at the next poll, an unchanged object costs one conditional `GetObject`
//! answered 304 per poll, an invalid edit keeps the last valid desired state, and the status
//! document is written next to the object.

use crate::common;

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::moto::Moto;
use common::Harness;
use rack_reconciler::metrics::Metrics;
use rack_reconciler::reconcile::Trigger;
use rack_reconciler::store::{watch_object, Location, Store};
use tokio::sync::{mpsc, watch};

const BUCKET: &str = "convox-settings-1abc";
const KEY: &str = "rack-reconciler/params.yaml";

/// A client of moto's S3 with the Settings bucket holding the params object `text`.
async fn bucket_with(moto: &Moto, text: &str) -> aws_sdk_s3::Client {
    let sdk = moto.sdk_config(&moto.endpoint).await;
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    client
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("bucket");
    put(&client, text).await;
    client
}

/// The text of an object of the bucket.
async fn object(client: &aws_sdk_s3::Client, key: &str) -> String {
    let out = client
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    let body = out.body.collect().await.expect("body").to_vec();
    String::from_utf8(body).expect("text")
}

async fn put(client: &aws_sdk_s3::Client, text: &str) {
    client
        .put_object()
        .bucket(BUCKET)
        .key(KEY)
        .body(ByteStream::from(text.as_bytes().to_vec()))
        .send()
        .await
        .expect("put params");
}

fn count(metrics: &Metrics, outcome: &str) -> u64 {
    metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("rack_reconciler_aws_api_calls_total")
                && l.contains("operation=\"GetObject\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn the_params_object_is_polled_cheaply_and_validated_like_a_file() {
    let moto = Moto::start().await;
    let client = bucket_with(&moto, "ECSExec: \"No\"\n").await;
    let at = Location::S3 {
        bucket: BUCKET.into(),
        key: KEY.into(),
    };

    // The poller alone, on its own metrics: one conditional request per poll, 304 while
    // the object is unchanged, a wake-up once it changes.
    let poll_metrics = Metrics::new();
    let store = Store::with_s3(client.clone(), poll_metrics.clone());
    let (tx, mut wake) = mpsc::channel(1);
    let (stop, stopped) = watch::channel(false);
    let poll = Duration::from_millis(100);
    tokio::spawn(watch_object(store, at.clone(), poll, tx, stopped));
    while count(&poll_metrics, "not_modified") < 5 {
        tokio::time::sleep(poll).await;
    }
    assert_eq!(count(&poll_metrics, "success"), 1, "read once, then 304s");
    assert!(wake.try_recv().is_err(), "nothing changed");
    put(&client, "ECSExec: \"Yes\"\n").await;
    let woken = tokio::time::timeout(Duration::from_secs(10), wake.recv())
        .await
        .expect("the edit is seen within a few polls");
    assert_eq!(woken, Some(Trigger::ParamsChanged));
    assert_eq!(
        count(&poll_metrics, "success"),
        2,
        "the new version read once"
    );
    let _ = stop.send(true);

    // The loop reads the object (conditionally) and writes the status document next to it.
    let h = Harness::stack_first("ECSExec: \"No\"\n", Default::default());
    let mut settings = h.settings();
    settings.params_file = at.clone();
    settings.status_file = Some(at.status());
    let loop_metrics = Metrics::new();
    let mut rec = h
        .reconciler_with(settings)
        .with_store(Store::with_s3(client.clone(), loop_metrics.clone()))
        .await;
    rec.reconcile(Trigger::ParamsChanged).await;
    let desired = |rec: &rack_reconciler::reconcile::Reconciler| {
        common::param(rec, "ECSExec").desired.unwrap_or_default()
    };
    assert_eq!(desired(&rec), "Yes");
    rec.reconcile(Trigger::Timer).await;
    assert_eq!(count(&loop_metrics, "not_modified"), 1, "unchanged: a 304");

    // An invalid edit: rejected, the last valid desired state kept.
    put(&client, "ECSExec: \"Maybe\"\n").await;
    rec.reconcile(Trigger::ParamsChanged).await;
    let status = rec.status().get();
    assert!(!status.params_file.valid);
    assert!(
        status
            .params_file
            .error
            .as_deref()
            .is_some_and(|e| e.contains("s3://convox-settings-1abc/rack-reconciler/params.yaml")),
        "{:?}",
        status.params_file
    );
    assert_eq!(desired(&rec), "Yes", "the last valid desired state is kept");

    let doc = object(&client, "rack-reconciler/params.status.json").await;
    let written: rack_reconciler::status::Status =
        serde_json::from_str(&doc).expect("a status document");
    assert!(written.parameters.iter().any(|p| p.name == "ECSExec"));
}

#[tokio::test]
async fn set_validate_and_get_work_on_the_params_object() {
    let moto = Moto::start().await;
    let client = bucket_with(&moto, "# kept\nECSExec: \"No\"\n").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("rack-reconciler.yaml");
    std::fs::write(
        &config,
        format!("backend: sim\nrack: convox\nparams_file: s3://{BUCKET}/{KEY}\n"),
    )
    .expect("config");
    let run = |args: &'static [&'static str]| {
        let mut cmd = common::binary::command(&config, &moto.endpoint, args);
        async move { cmd.output().await.expect("run") }
    };

    let set = run(&["set", "ECSExec=Yes"]).await;
    assert_eq!(set.status.code(), Some(0), "{set:?}");
    assert_eq!(object(&client, KEY).await, "# kept\nECSExec: \"Yes\"\n");

    let refused = run(&["set", "ECSExec=Maybe"]).await;
    assert_eq!(refused.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("is unchanged"));

    let valid = run(&["validate"]).await;
    let out = String::from_utf8_lossy(&valid.stdout);
    assert!(
        valid.status.success() && out.contains(&format!("s3://{BUCKET}/{KEY}: valid")),
        "{out}"
    );
    let get = run(&["get", "ECSExec"]).await;
    let out = String::from_utf8_lossy(&get.stdout);
    assert!(get.status.success() && out.contains("Yes"), "{out}");
}
