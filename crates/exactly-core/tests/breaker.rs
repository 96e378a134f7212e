//! The breaker opens on a failing dependency, not on contention: a handler that keeps
//! losing the race for its state to another instance (state conflicts) is retried, and
//! the consumer is not paused.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exactly_core::{BreakerConfig, Context, DedupStore, MemoryStore, Message, Outcome, Processor, handler_fn};

fn msg(key: String) -> Message {
    Message::builder("1").header("idempotency-key", key).build()
}

#[tokio::test]
async fn state_conflicts_on_many_keys_do_not_open_the_breaker() {
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    // Another instance on the same store, writing the same account.
    let other = Processor::builder(
        "c",
        handler_fn(|_m: Message, ctx: Context| async move {
            let balance: i64 = ctx.state().get_json("account").await?.unwrap_or(0);
            ctx.state().put_json("account", &(balance + 1)).await?;
            Ok(())
        }),
    )
    .shared_store(store.clone())
    .build()
    .unwrap();
    // This instance reads the account, and the other one commits a write to it before
    // this one writes: every run's read is stale when it commits.
    let bumps = Arc::new(AtomicU64::new(0));
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let (other, bumps) = (other.clone(), bumps.clone());
        async move {
            let balance: i64 = ctx.state().get_json("account").await?.unwrap_or(0);
            let n = bumps.fetch_add(1, Ordering::SeqCst);
            assert_eq!(other.process(msg(format!("bump-{n}"))).await.unwrap().outcome, Outcome::Handled);
            ctx.state().put_json("account", &(balance + 10)).await?;
            Ok(())
        }
    });
    let p = Processor::builder("c", h)
        .shared_store(store)
        .max_state_conflicts(1)
        .breaker(BreakerConfig::new(3, Duration::from_secs(5), Duration::from_secs(5)).unwrap())
        .build()
        .unwrap();
    let mut outcomes = Vec::new();
    for i in 0..6 {
        outcomes.push(p.process(msg(format!("k{i}"))).await.unwrap().outcome);
    }
    assert_eq!(outcomes, vec![Outcome::Retry; 6], "lost races are retried; the consumer is not paused");
}
