//! Secrets never appear in `Debug` or `Display` output: every configuration type that can
//! hold a password is formatted with one and searched for it.
#![allow(clippy::unwrap_used)]

use exactly::{Context, MemoryStore, Message, Processor, handler_fn};

const SECRET: &str = "hunter2-Sup3r-Secret";

fn processor() -> Processor {
    Processor::builder("p", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
        .store(MemoryStore::new())
        .build()
        .unwrap()
}

fn assert_hidden(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the password: {text}");
}

#[tokio::test]
async fn no_configuration_type_shows_a_password() {
    let url = format!("amqp://guest:{SECRET}@127.0.0.1:5672/%2f");
    let toml = format!(
        "[amqp.p]\nurl = \"{url}\"\nqueue = \"q\"\n\
         [kafka.k]\nbrokers = \"u:{SECRET}@127.0.0.1:9092\"\ngroup = \"g\"\ntopics = [\"t\"]\n\
         [kafka.k.librdkafka]\n\"sasl.password\" = \"{SECRET}\"\n\"ssl.key.password\" = \"{SECRET}\"\n\
         \"sasl.oauthbearer.client.secret\" = \"{SECRET}\"\n"
    );
    let toml = format!("[store]\nengine = \"postgres\"\nurl = \"postgres://u:{SECRET}@127.0.0.1:5432/db\"\n{toml}");
    let config = exactly::app::Config::from_toml(&toml).unwrap();
    assert_hidden("StoreConfig", &format!("{:?} {}", config.store, config.store.describe()));
    assert_hidden("app::Config", &format!("{config:?} {config:#?}"));
    assert_hidden("AmqpSubscription", &format!("{:?}", config.amqp["p"]));
    assert_hidden("KafkaSubscription", &format!("{:?}", config.kafka["k"]));
    let app = exactly::app::App::new(config.clone());
    assert_hidden("app::App", &format!("{app:?}"));

    let amqp = exactly::amqp::Consumer::builder(url.clone(), "q");
    assert_hidden("amqp::ConsumerBuilder", &format!("{amqp:?}"));
    let consumer = amqp.build(processor()).unwrap();
    assert_hidden("amqp::Consumer", &format!("{consumer:?}"));

    let kafka = exactly::kafka::Consumer::builder("127.0.0.1:9092", "g")
        .topic("t")
        .set("sasl.password", SECRET)
        .set("sasl.username", "u");
    assert_hidden("kafka::ConsumerBuilder", &format!("{kafka:?}"));
    let consumer = kafka.build(processor()).unwrap();
    assert_hidden("kafka::Consumer", &format!("{consumer:?}"));
}

#[tokio::test]
async fn a_kafka_setting_librdkafka_refuses_is_named_without_its_value() {
    // librdkafka's own message quotes the value of a setting it refuses. These two are
    // refused by a librdkafka built without OpenSSL and libcurl, as the vendored one is
    // here; where they are accepted, the consumer is built and its Debug must hide them.
    for setting in ["ssl.key.password", "sasl.oauthbearer.client.secret"] {
        let kafka = exactly::kafka::Consumer::builder("127.0.0.1:9092", "g").topic("t").set(setting, SECRET);
        assert_hidden("kafka::ConsumerBuilder", &format!("{kafka:?}"));
        match kafka.build(processor()) {
            Ok(consumer) => assert_hidden("kafka::Consumer", &format!("{consumer:?}")),
            Err(err) => {
                let text = format!("{err} {err:?}");
                assert!(text.contains(setting), "the error names the setting: {text}");
                assert_hidden("kafka::Error::Create", &text);
            }
        }
    }
}

#[tokio::test]
async fn the_postgres_store_never_shows_its_password() {
    let url = format!("postgres://u:{SECRET}@127.0.0.1:1/db");
    let builder =
        exactly::postgres::PgStore::builder(url.clone()).connect_timeout(std::time::Duration::from_millis(500));
    assert_hidden("PgStoreBuilder", &format!("{builder:?}"));
    let err = builder.open().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("127.0.0.1:1") && text.contains("PostgreSQL running"), "{text}");
    assert_hidden("PgStore's open error", &text);
    let bad = format!("postgres://u:{SECRET}@127.0.0.1:notaport/db");
    let err = exactly::postgres::PgStore::open(bad).await.unwrap_err();
    assert_hidden("PgStore's URL error", &format!("{err} {err:?}"));
}

#[tokio::test]
async fn errors_of_a_url_with_a_password_do_not_show_it() {
    // A malformed URL: the error names it, without the password.
    let bad = format!("amqp://guest:{SECRET}@127.0.0.1:notaport/%2f");
    let err = exactly::amqp::Consumer::builder(bad, "q").build(processor()).unwrap_err();
    assert_hidden("amqp::Error::Url", &format!("{err} {err:?}"));

    // A connection that fails: the error names the URL, without the password.
    let url = format!("amqp://guest:{SECRET}@127.0.0.1:1/%2f");
    let consumer = exactly::amqp::Consumer::builder(url, "q")
        .initial_connect_timeout(std::time::Duration::from_millis(300))
        .build(processor())
        .unwrap();
    let err = consumer.run().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert_hidden("amqp::Error::ConnectTimeout", &text);
}
