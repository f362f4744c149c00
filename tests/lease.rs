//! One active writer, against moto's DynamoDB: the lease's conditional writes, a paused
//! holder that wakes after its lease ran out and writes nothing, two `run` processes on one
//! rack of which only the holder writes, the standby taking over from a killed holder, and
//! `apply` refusing to write while another controller holds the lease.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use common::binary::{command, free_port, Binary};
use common::moto::Moto;
use common::rack_fixture::{self, STACK, WEB};
use rack_reconciler::lease::dynamodb::DynamoLeaseStore;
use rack_reconciler::lease::{Lease, LeaseStore, Timing};
use rack_reconciler::metrics::Metrics;
use rack_reconciler::rack::fenced::FencedRack;
use rack_reconciler::rack::sim::{SimRack, SimSettings};
use rack_reconciler::rack::{Rack, RackError};

const TABLE: &str = "convox-rack-reconciler-lease";

/// The lease table as deploy/controller.yaml creates it.
async fn create_table(moto: &Moto) -> aws_sdk_dynamodb::Client {
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config(&moto.endpoint).await);
    client
        .create_table()
        .table_name(TABLE)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("name")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("name")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create the lease table");
    client
}

fn lease(client: &aws_sdk_dynamodb::Client, holder: &str, timing: Timing) -> Lease {
    let store: Arc<dyn LeaseStore> = Arc::new(DynamoLeaseStore::new(
        client.clone(),
        TABLE,
        STACK,
        Metrics::new(),
    ));
    Lease::new(store, holder, timing)
}

#[tokio::test]
async fn a_holder_paused_past_its_lease_writes_nothing() {
    let moto = Moto::start().await;
    let client = create_table(&moto).await;
    let timing = Timing::for_duration(Duration::from_secs(3));
    let a = lease(&client, "a", timing);
    let b = lease(&client, "b", timing);
    a.tick().await.expect("a looks");
    b.tick().await.expect("b looks");
    assert!(a.is_leader() && !b.is_leader());

    // a's writes go to a rack through the fence.
    let sim = Arc::new(SimRack::new(SimSettings::default()));
    let rack = FencedRack::new(sim.clone(), a.clone(), Metrics::new());
    let cluster = sim.resources().get("Cluster").cloned().expect("cluster");
    let web = sim.service_snapshot("ServiceWebApi").expect("web");
    let (service, td) = (web.name.clone(), web.deployments[0].task_definition.clone());
    rack.update_service(&cluster, &service, &td)
        .await
        .expect("the holder writes");

    // a stops renewing (paused); b sees the record unchanged for a lease duration and takes it.
    for _ in 0..40 {
        tokio::time::sleep(timing.retry).await;
        b.tick().await.expect("b looks");
        if b.is_leader() {
            break;
        }
    }
    assert!(b.is_leader(), "the standby never took over");
    assert_eq!(b.view().fence, 2);

    // a wakes and tries to write: the fence refuses, and says who holds the lease.
    let writes = sim.writes();
    let refused = rack
        .update_service(&cluster, &service, &td)
        .await
        .expect_err("a paused holder must not write");
    assert!(
        matches!(&refused, RackError::NotLeader { message } if message.contains("b (fence 2)")),
        "{refused}"
    );
    assert_eq!(sim.writes(), writes, "nothing was written");
    assert!(!a.is_leader());
}

/// A controller on the moto rack, managing the web service only, with the shared lease.
fn config(dir: &std::path::Path, name: &str, port: u16) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "backend: aws\nrack: {STACK}\nparams_file: params.yaml\nstatus_file: true\n\
             listen: 127.0.0.1:{port}\n\
             lease:\n  table: {TABLE}\n  duration: 3s\n  holder: {name}\n\
             services:\n  - service: ServiceWebApi\n    task_definition: ApiWebTasks\n\
             intervals:\n  poll: 500ms\n  resync: 2s\n  min_write: 100ms\n"
        ),
    )
    .expect("config");
    path
}

fn writes(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("event=write_made") && l.contains("reason=UpdateService"))
        .count()
}

#[tokio::test]
async fn two_controllers_one_writer_takeover_and_apply_refused() {
    let moto = Moto::start().await;
    let _rack = rack_fixture::create(&moto).await;
    let (_, ecs) = moto.clients().await;
    create_table(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"No\"\n").expect("params");

    let mut first = Binary::run(
        &config(dir.path(), "first", free_port()),
        &moto.endpoint,
        &[],
    );
    first.wait_for("lease acquired").await;
    let mut second = Binary::run(
        &config(dir.path(), "second", free_port()),
        &moto.endpoint,
        &[],
    );
    second
        .wait_for("another controller holds the lease; standing by")
        .await;
    second.wait_for("phase=Converged").await;

    // Both see the edit; only the holder writes, the standby says it stands by.
    let before = rack_fixture::service_task_definition(&ecs, WEB).await;
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("edit");
    first.wait_for("reason=UpdateService").await;
    second.wait_for("reason=\"Standby\"").await;
    assert_eq!(writes(&second.log()), 0, "{}", second.log());
    let rolled = rack_fixture::service_task_definition(&ecs, WEB).await;
    assert_ne!(before, rolled, "the holder rolled the web service");

    // The holder dies without releasing the lease. (moto's ECS never moves a deployment
    // on, so the change still looks unfinished.) The standby takes over once the lease
    // has gone unrenewed for its duration and makes the change itself.
    let first_log = first.kill().await;
    assert!(writes(&first_log) >= 1);
    second.wait_for("lease acquired").await;
    second.wait_for("reason=UpdateService").await;

    // A workstation `apply` while the second controller holds the lease writes nothing and
    // says who holds it until when.
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("edit");
    let out = command(
        &config(dir.path(), "workstation", free_port()),
        &moto.endpoint,
        &["apply"],
    )
    .output()
    .await
    .expect("apply");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("another controller holds the lease: second (fence 2) until"),
        "{stdout}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("reason=UpdateService"),
        "apply wrote"
    );
    let (_, second_log) = second.terminate().await;
    assert!(second_log.contains("lease released"), "{second_log}");
}

/// What moto does not show: the SDK resending a conditional write whose first attempt had
/// landed (its answer was lost), so the resent one fails its condition. DynamoDB returns the
/// item with the failure; the store tells its own write from someone else's by it.
#[tokio::test]
async fn a_resent_write_that_had_landed_is_not_a_lost_lease() {
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::types::error::ConditionalCheckFailedException;
    use aws_sdk_dynamodb::types::AttributeValue;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    use rack_reconciler::lease::LeaseRecord;

    let mine = LeaseRecord {
        holder: "a".into(),
        fence: 3,
        renewals: 8,
        expires_at: std::time::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000),
        duration: Duration::from_secs(30),
    };
    let item = |holder: &str| {
        [
            ("name", AttributeValue::S(STACK.into())),
            ("holder", AttributeValue::S(holder.into())),
            ("fence", AttributeValue::N("3".into())),
            ("renewals", AttributeValue::N("8".into())),
            ("expires_at_ms", AttributeValue::N("1800000000000".into())),
            ("duration_ms", AttributeValue::N("30000".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect::<std::collections::HashMap<_, _>>()
    };
    for (stored_holder, landed) in [("a", true), ("b", false)] {
        let stored = item(stored_holder);
        let put = mock!(aws_sdk_dynamodb::Client::put_item).then_error(move || {
            PutItemError::ConditionalCheckFailedException(
                ConditionalCheckFailedException::builder()
                    .set_item(Some(stored.clone()))
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, &[&put]);
        let store = DynamoLeaseStore::new(client, TABLE, STACK, Metrics::new());
        let before = LeaseRecord {
            renewals: 7,
            ..mine.clone()
        };
        assert_eq!(
            store.swap(Some(&before), &mine).await.expect("swap"),
            landed,
            "the stored item is {stored_holder}'s"
        );
    }
}

/// A fence whose lease ran out a moment ago, as a process resumed after a pause holds one.
/// A fence whose lease is good for another 30 s.
fn live_fence(fence: u64) -> rack_reconciler::lease::Fence {
    rack_reconciler::lease::Fence {
        fence,
        deadline: rack_reconciler::lease::Deadline::after(
            tokio::time::Instant::now(),
            std::time::SystemTime::now(),
            Duration::from_secs(30),
        ),
    }
}

fn lapsed_fence(fence: u64) -> rack_reconciler::lease::Fence {
    use rack_reconciler::lease::{Deadline, Fence};
    let past = Duration::from_secs(1);
    Fence {
        fence,
        deadline: Deadline {
            mono: tokio::time::Instant::now() - past,
            wall: std::time::SystemTime::now() - past,
        },
    }
}

/// The check happens inside the AWS client, right before each attempt is transmitted: a
/// write whose lease ran out after the controller's own check (a pause between the check and
/// the send) reaches moto's ECS not at all.
#[tokio::test]
async fn an_attempt_past_the_lease_never_reaches_aws() {
    use rack_reconciler::lease::fence;
    use rack_reconciler::rack::aws::AwsRack;
    let moto = Moto::start().await;
    let fixture = rack_fixture::create(&moto).await;
    let (cfn, ecs) = moto.clients().await;
    let metrics = Metrics::new();
    let rack = AwsRack::new(STACK, cfn, ecs.clone(), metrics.clone());
    let other = rack_fixture::revisions(&ecs, "convox-web").await;
    assert!(!other.is_empty());
    let sent = fence::scoped(
        lapsed_fence(4),
        metrics.clone(),
        rack.update_service(rack_fixture::CLUSTER, WEB, &fixture.monitor_task_definition),
    )
    .await;
    let err = sent.expect_err("the attempt went out");
    assert!(err.to_string().contains("fence 4"), "{err}");
    assert_eq!(
        rack_fixture::service_task_definition(&ecs, WEB).await,
        fixture.web_task_definition,
        "the service was moved"
    );
    let text = metrics.render();
    assert!(
        text.contains(r#"rack_reconciler_writes_refused_total{operation="UpdateService"} 1"#),
        "{text}"
    );
    // Under a live fence the same call goes through.
    let live = live_fence(5);
    fence::scoped(
        live,
        metrics.clone(),
        rack.update_service(rack_fixture::CLUSTER, WEB, &fixture.web_task_definition),
    )
    .await
    .expect("a live fence writes");
}

/// The rack's `Settings` bucket in moto.
const SETTINGS_BUCKET: &str = "convox-settings-1abc";

/// A store on a new `Settings` bucket in moto, and the metrics it counts into.
async fn settings_bucket(moto: &Moto) -> (rack_reconciler::store::Store, Metrics) {
    let sdk = moto.sdk_config(&moto.endpoint).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket(SETTINGS_BUCKET)
        .send()
        .await
        .expect("bucket");
    let metrics = Metrics::new();
    (
        rack_reconciler::store::Store::with_s3(s3, metrics.clone()),
        metrics,
    )
}

/// The status document in S3 is written over the version its writer last saw, carrying its
/// fence: a paused former holder cannot overwrite its successor's, and says why.
#[tokio::test]
async fn a_former_holder_cannot_overwrite_its_successors_status_document() {
    use rack_reconciler::reconcile::document::{fence_of, StatusDocument};
    use rack_reconciler::status::Status;
    let moto = Moto::start().await;
    let (store, metrics) = settings_bucket(&moto).await;
    let at = rack_reconciler::store::Location::S3 {
        bucket: SETTINGS_BUCKET.into(),
        key: "rack-reconciler/params.status.json".into(),
    };
    let body = |fence: u64| {
        let mut s = Status::default();
        s.controller.fence = Some(fence);
        serde_json::to_string(&s).expect("json")
    };
    let live = |fence: u64| Some((live_fence(fence), &metrics));
    let mut a = StatusDocument::new(at.clone(), store.clone());
    let mut b = StatusDocument::new(at.clone(), store.clone());
    a.write(&body(1), live(1)).await.expect("a writes first");
    // b takes over: reads, then claims the document under fence 2.
    assert_eq!(
        b.read().await.expect("read").as_deref().and_then(fence_of),
        Some(1)
    );
    b.write(&body(2), live(2)).await.expect("b claims it");
    // a, resumed with a lease it still believes in, writes over the version it saw: refused.
    let refused = a
        .write(&body(1), live(1))
        .await
        .expect_err("a overwrote b's document");
    assert!(
        refused.contains("fence 2, newer than this controller's 1"),
        "{refused}"
    );
    let mut reader = StatusDocument::new(at.clone(), store.clone());
    let stored = reader.read().await.expect("read").expect("document");
    assert_eq!(fence_of(&stored), Some(2));
    // A document changed under an older fence (or by hand) is overwritten by the holder.
    reader
        .write(&body(1), None)
        .await
        .expect("an old copy lands");
    b.write(&body(2), live(2))
        .await
        .expect("the holder writes over it");
    let stored = reader.read().await.expect("read").expect("document");
    assert_eq!(fence_of(&stored), Some(2));
    // Past its lease, the holder's write does not go out at all.
    let lapsed = Some((lapsed_fence(2), &metrics));
    assert!(b.write(&body(2), lapsed).await.is_err());
    assert!(
        metrics
            .render()
            .contains(r#"rack_reconciler_writes_refused_total{operation="PutObject"} 1"#),
        "{}",
        metrics.render()
    );
}

/// Each controller honours the holder's duration as its record states it: a standby set to
/// a short lease does not take over from a holder that renews as its long lease says.
#[tokio::test]
async fn a_standby_honours_the_holders_lease_duration() {
    let moto = Moto::start().await;
    let client = create_table(&moto).await;
    let holder = lease(
        &client,
        "a",
        Timing::for_duration(Duration::from_millis(1500)),
    );
    let short = Timing::for_duration(Duration::from_millis(300));
    let standby = lease(&client, "b", short);
    holder.tick().await.expect("a takes the lease");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let kept = tokio::spawn(holder.clone().keep(stopped));
    // 1.2 s: the holder renews every 0.5 s, so the record never stands still for 1.5 s,
    // though it does for longer than the standby's own 0.3 s.
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while tokio::time::Instant::now() < until {
        standby.tick().await.expect("b looks");
        assert!(!standby.is_leader(), "b took the lease from a live holder");
        tokio::time::sleep(short.retry).await;
    }
    assert!(holder.is_leader());
    stop.send(true).expect("stop");
    kept.await.expect("keep");
}

/// Two controllers on moto's DynamoDB and ECS: the holder is held between its lease check and
/// its `UpdateService` (the test hook) while the standby takes the lease over; when it resumes,
/// its write is not sent, and moto's service runs what it ran.
#[tokio::test]
async fn a_holder_held_between_its_check_and_its_send_writes_nothing_to_moto() {
    use rack_reconciler::rack::aws::AwsRack;
    let moto = Moto::start().await;
    let client = create_table(&moto).await;
    let fixture = rack_fixture::create(&moto).await;
    let timing = Timing::for_duration(Duration::from_millis(800));
    let (a, b) = (lease(&client, "a", timing), lease(&client, "b", timing));
    a.tick().await.expect("a looks");
    b.tick().await.expect("b looks");
    assert!(a.is_leader());
    let (cfn, ecs) = moto.clients().await;
    let metrics = Metrics::new();
    let aws: Arc<dyn Rack> = Arc::new(AwsRack::new(STACK, cfn, ecs.clone(), metrics.clone()));
    let rack = Arc::new(FencedRack::new(aws, a.clone(), metrics.clone()));
    let pause = rack.pause_point();
    pause.arm("UpdateService");
    let held = {
        let rack = rack.clone();
        let td = fixture.monitor_task_definition.clone();
        tokio::spawn(async move { rack.update_service(rack_fixture::CLUSTER, WEB, &td).await })
    };
    pause.reached().await;
    while !b.is_leader() {
        tokio::time::sleep(timing.retry).await;
        b.tick().await.expect("b looks");
    }
    pause.resume();
    let refused = held
        .await
        .expect("a's write")
        .expect_err("a's write went out");
    assert!(matches!(refused, RackError::NotLeader { .. }), "{refused}");
    assert_eq!(
        rack_fixture::service_task_definition(&ecs, WEB).await,
        fixture.web_task_definition,
        "the held write moved the service"
    );
    assert!(
        metrics
            .render()
            .contains(r#"rack_reconciler_writes_refused_total{operation="UpdateService"} 1"#),
        "{}",
        metrics.render()
    );
}

/// The history in S3 is written under the holder's fence, over the version it last saw: a
/// successor appends to what its predecessor wrote, a paused former holder's late events
/// are refused once its successor wrote under a newer fence, and past its lease nothing
/// goes out.
#[tokio::test]
async fn the_history_in_s3_is_written_under_the_fence_and_appended_to() {
    use rack_reconciler::history::{Actor, Event, Kind};
    use rack_reconciler::reconcile::journal::Journal;
    let moto = Moto::start().await;
    let (store, metrics) = settings_bucket(&moto).await;
    let at = rack_reconciler::store::Location::S3 {
        bucket: SETTINGS_BUCKET.into(),
        key: "rack-reconciler/params.history.jsonl".into(),
    };
    let now = std::time::SystemTime::now();
    let event = |holder: &str, fence: u64, kind: Kind| {
        let actor = Actor::Controller {
            holder: holder.into(),
            fence: Some(fence),
        };
        Event::new(now, kind, "Test", format!("{holder} {kind}"), actor)
    };
    let live = live_fence;
    let journal = || Journal::new(Some(at.clone()), store.clone(), Default::default());
    let stored = || async {
        let mut reader = journal();
        reader.load(now).await.expect("read");
        reader
            .select(None, None)
            .into_iter()
            .map(|e| e.message)
            .collect::<Vec<_>>()
    };

    let mut a = journal();
    a.keep(event("a", 1, Kind::LeaseAcquired), now);
    a.flush(Some((live(1), &metrics)), now)
        .await
        .expect("a writes");
    a.keep(event("a", 1, Kind::WriteMade), now);
    a.flush(Some((live(1), &metrics)), now)
        .await
        .expect("a appends");

    // b takes over and appends to a's history.
    let mut b = journal();
    b.keep(event("b", 2, Kind::LeaseTakenOver), now);
    b.flush(Some((live(2), &metrics)), now)
        .await
        .expect("b appends");
    assert_eq!(
        stored().await,
        vec!["a lease_acquired", "a write_made", "b lease_taken_over"]
    );

    // a, resumed with a lease it still believes in: its write over the version it saw is
    // refused by the condition, and what it finds there carries a newer fence.
    a.keep(event("a", 1, Kind::RolloutStarted), now);
    let refused = a
        .flush(Some((live(1), &metrics)), now)
        .await
        .expect_err("a wrote after its successor");
    assert!(
        refused.contains("fence 2, newer than this controller's 1"),
        "{refused}"
    );
    assert_eq!(stored().await.len(), 3, "nothing of a's was written");
    // And at its next write too: it reads the history again, and still finds it is not the
    // writer.
    a.keep(event("a", 1, Kind::RolloutProgress), now);
    let again = a
        .flush(Some((live(1), &metrics)), now)
        .await
        .expect_err("a wrote at its second attempt");
    assert!(again.contains("newer than this controller's 1"), "{again}");
    assert_eq!(stored().await.len(), 3, "still nothing of a's");

    // A copy written without a fence (by hand) since b's write: b appends to it.
    let mut by_hand = Journal::new(Some(at.clone()), store.clone(), Default::default());
    by_hand.load(now).await.expect("read");
    by_hand.keep(event("operator", 0, Kind::PhaseChanged), now);
    by_hand.flush(None, now).await.expect("written by hand");
    b.keep(event("b", 2, Kind::WriteMade), now);
    b.flush(Some((live(2), &metrics)), now)
        .await
        .expect("b appends to it");
    assert_eq!(
        stored().await,
        vec![
            "a lease_acquired",
            "a write_made",
            "b lease_taken_over",
            "operator phase_changed",
            "b write_made"
        ]
    );

    // Past its lease, b's next write does not go out at all; the event waits for the next.
    b.keep(event("b", 2, Kind::Converged), now);
    assert!(b
        .flush(Some((lapsed_fence(2), &metrics)), now)
        .await
        .is_err());
    assert_eq!(stored().await.len(), 5);
    assert!(metrics
        .render()
        .contains(r#"rack_reconciler_writes_refused_total{operation="PutObject"} 1"#));
    b.flush(Some((live(2), &metrics)), now)
        .await
        .expect("then written");
    assert_eq!(
        stored().await.last().map(String::as_str),
        Some("b converged")
    );
}
