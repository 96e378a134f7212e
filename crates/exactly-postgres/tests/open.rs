//! Opening the store: migrations raced by many instances, and the errors an operator gets
//! for a newer schema, a missing database, a role without rights, a missing store.
#![allow(clippy::unwrap_used)]

mod common;

use common::{acquire_at, connect, done_at, drop_schema, fresh_schema, now_ms, url};
use exactly_core::store::{Committed, RecordState, StateChanges};
use exactly_core::{DedupStore, Error, StoreKey};
use exactly_postgres::{PgStore, SCHEMA_VERSION};

/// The test database's URL with another database, or another user.
fn with(database: Option<&str>, user: Option<&str>) -> String {
    let mut u = url();
    if let Some(db) = database {
        let (base, _) = u.rsplit_once('/').unwrap();
        u = format!("{base}/{db}");
    }
    if let Some(user) = user {
        u = u.replacen("postgres@", &format!("{user}@"), 1);
    }
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_instances_starting_at_once_migrate_once() {
    let schema = fresh_schema("race");
    let opens = (0..10).map(|_| {
        let schema = schema.clone();
        tokio::spawn(async move { PgStore::builder(url()).schema(&schema).pool_size(1).open().await })
    });
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("every instance opens"));
    }
    let mut ids: Vec<i32> = stores.iter().map(PgStore::instance).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each instance has an id of its own");
    let client = connect().await;
    let versions: Vec<i32> = client
        .query(&format!("SELECT version FROM \"{schema}\".schema_version ORDER BY version"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>(), "each migration applied once");
    drop(stores);
    drop_schema(&schema);
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused_and_left_as_it_is() {
    let schema = fresh_schema("newer");
    drop(PgStore::builder(url()).schema(&schema).open().await.unwrap());
    let client = connect().await;
    let newer = SCHEMA_VERSION + 1;
    client.execute(&format!("INSERT INTO \"{schema}\".schema_version (version) VALUES ($1)"), &[&newer]).await.unwrap();

    let err = PgStore::builder(url()).schema(&schema).open().await.unwrap_err();
    assert!(matches!(err, Error::StoreFormat { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("version {newer}")) && text.contains(&schema) && text.contains("upgrade"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    let max: i32 =
        client.query_one(&format!("SELECT max(version) FROM \"{schema}\".schema_version"), &[]).await.unwrap().get(0);
    assert_eq!(max, newer, "the newer schema was not touched");
    drop_schema(&schema);
}

/// A store made by a build with schema version 1 (no `wrote` column) opens in this one:
/// migrated in place, its records read as before.
#[tokio::test]
async fn a_version_1_schema_is_migrated_and_its_records_kept() {
    let schema = fresh_schema("v1");
    let store = PgStore::builder(url()).schema(&schema).open().await.unwrap();
    let key = StoreKey::new("c", "k");
    let now = now_ms();
    let token = acquire_at(&store, &key, now).await;
    let done = done_at(&key, token, now, StateChanges::default());
    assert_eq!(store.complete(done).await.unwrap(), Committed::Ok);
    drop(store);
    // Back to version 1, as that build left it.
    let client = connect().await;
    client
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".records DROP COLUMN wrote;
             DROP TABLE \"{schema}\".outbox;
             DELETE FROM \"{schema}\".schema_version WHERE version > 1"
        ))
        .await
        .unwrap();

    let store = PgStore::builder(url()).schema(&schema).open().await.unwrap();
    let r = store.inspect(&key).await.unwrap().expect("the record is kept");
    assert!(matches!(r.state, RecordState::Done { .. }) && r.wrote.is_empty(), "{r:?}");
    let max: i32 =
        client.query_one(&format!("SELECT max(version) FROM \"{schema}\".schema_version"), &[]).await.unwrap().get(0);
    assert_eq!(max, SCHEMA_VERSION);
    drop(store);
    drop_schema(&schema);
}

#[tokio::test]
async fn a_missing_database_or_a_role_without_rights_is_named_with_what_to_do() {
    let err = PgStore::open(with(Some("exactly_no_such_db"), None)).await.unwrap_err().to_string();
    assert!(err.contains("exactly_no_such_db") && err.contains("create the database"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");

    // A role that may connect but not create a schema.
    let client = connect().await;
    let role = format!("exactly_ro_{}", std::process::id());
    client.batch_execute(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN")).await.unwrap();
    let database: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    client.batch_execute(&format!("REVOKE CREATE ON DATABASE \"{database}\" FROM PUBLIC, {role}")).await.unwrap();
    let schema = fresh_schema("ro");
    let err = PgStore::builder(with(None, Some(&role))).schema(&schema).open().await.unwrap_err().to_string();
    client.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
    assert!(err.contains("permission denied") && err.contains("grant the role CREATE"), "{err}");
}

#[tokio::test]
async fn a_missing_store_is_not_created_when_creating_is_off() {
    let schema = fresh_schema("missing");
    let err = PgStore::builder(url()).schema(&schema).create_if_missing(false).open().await.unwrap_err().to_string();
    assert!(err.contains(&schema) && err.contains("create_if_missing"), "{err}");
    let client = connect().await;
    let exists: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&schema])
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "no schema was made");
    drop(PgStore::builder(url()).schema(&schema).open().await.unwrap());
    drop(
        PgStore::builder(url()).schema(&schema).create_if_missing(false).open().await.expect("an existing store opens"),
    );
    drop_schema(&schema);
}
