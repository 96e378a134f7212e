//! Start-up refusals: each stops the app with an error naming the cause, before any
//! message is taken.
#![allow(clippy::unwrap_used)]

use exactly_app::{App, Config, Error};
use exactly_core::{Context, Message, handler_fn};
use tokio_util::sync::CancellationToken;

fn config(dir: &std::path::Path, port: u16) -> Config {
    Config::from_toml(&format!(
        "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[amqp.orders]\nurl = \"amqp://127.0.0.1:1/%2f\"\nqueue = \"q\"\n",
        dir.join("store").display()
    ))
    .unwrap()
}

fn noop() -> impl exactly_core::Handler<Output = ()> {
    handler_fn(|_m: Message, _c: Context| async { Ok(()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = App::new(config(tmp.path(), port)).handler("orders", noop()).run_until(CancellationToken::new()).await;
    match err {
        Err(Error::Http { addr, .. }) => assert_eq!(addr.port(), port),
        other => panic!("expected an http error, got {other:?}"),
    }
    assert!(!tmp.path().join("store").exists(), "nothing was opened before the port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_without_a_handler_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = App::new(config(tmp.path(), port)).handler("other", noop()).run_until(CancellationToken::new()).await;
    let text = err.unwrap_err().to_string();
    assert!(text.contains("amqp.orders") && text.contains("no handler"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_store_stops_the_start_when_creating_one_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = config(tmp.path(), port);
    cfg.store.create_if_missing = false;
    let err = App::new(cfg).handler("orders", noop()).run_until(CancellationToken::new()).await;
    let text = err.unwrap_err().to_string();
    assert!(text.contains("no store there") && text.contains("create_if_missing"), "{text}");
    assert!(!tmp.path().join("store").exists(), "no empty store was made");
}

#[test]
fn creating_a_missing_store_is_on_unless_the_file_says_otherwise() {
    let sub = "[amqp.orders]\nurl = \"amqp://127.0.0.1/%2f\"\nqueue = \"q\"\n";
    let on = Config::from_toml(&format!("[store]\npath = \"s\"\n{sub}")).unwrap();
    assert!(on.store.create_if_missing);
    let off = Config::from_toml(&format!("[store]\npath = \"s\"\ncreate_if_missing = false\n{sub}")).unwrap();
    assert!(!off.store.create_if_missing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_engine_names_what_it_is_missing_or_cannot_reach() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = config(tmp.path(), port);
    cfg.store.engine = exactly_app::Engine::Postgres;
    let err = App::new(cfg.clone()).handler("orders", noop()).run_until(CancellationToken::new()).await;
    let text = err.unwrap_err().to_string();
    assert!(text.contains("store.url") && text.contains("postgres"), "{text}");

    cfg.store.url = Some("postgres://app:hunter2@127.0.0.1:1/orders".into());
    let err = App::new(cfg).handler("orders", noop()).run_until(CancellationToken::new()).await;
    let text = err.unwrap_err().to_string();
    assert!(text.contains("127.0.0.1:1") && !text.contains("hunter2"), "{text}");
}
