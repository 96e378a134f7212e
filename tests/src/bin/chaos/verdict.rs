//! The verdict of a run: every good key credited once, the balances, the external effects,
//! the dead-letters, nothing left on the broker; and the report's row.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use exactly::DedupStore;
use exactly_tests::{ACCOUNTS, count_lines, state_of};

use crate::broker::Broker;
use crate::consumer::Consumer;
use crate::database::Database;
use crate::{Args, Faults};

/// What the verdict looks at.
pub(crate) struct Run<'a> {
    pub(crate) args: &'a Args,
    pub(crate) consumers: &'a [Consumer],
    pub(crate) db: Option<&'a Database>,
    pub(crate) broker: &'a Broker,
    pub(crate) good: &'a [u64],
    pub(crate) poison: &'a HashSet<u64>,
    pub(crate) sent: u64,
    pub(crate) unique: u64,
    pub(crate) faults: &'a Faults,
    pub(crate) elapsed: Duration,
}

/// Every key's external effects, over all consumers' logs.
pub(crate) fn effects(consumers: &[Consumer]) -> HashMap<String, u64> {
    let mut all: HashMap<String, u64> = HashMap::new();
    for c in consumers {
        for (k, n) in count_lines(&c.dir.join("effects.log")) {
            *all.entry(k).or_default() += n;
        }
    }
    all
}

/// Prints the report's row; what failed (nothing when the run passed).
pub(crate) async fn judge(run: &Run<'_>) -> anyhow::Result<Vec<String>> {
    let Run { args, consumers, db, broker, good, poison, sent, unique, faults, elapsed } = *run;
    let mut lost = Vec::new();
    let mut doubled_tx = Vec::new();
    let mut cross_instance = 0u64;
    let stores: Vec<Arc<dyn DedupStore>> = match db {
        Some(db) => vec![Arc::new(db.open().await.context("opening the shared store after the run")?)],
        None => consumers
            .iter()
            .map(|c| exactly_tests::open_store(&args.engine, &c.store()))
            .collect::<Result<_, _>>()
            .context("opening the stores after the run")?,
    };
    // The ledger's own tables (written through `ctx.postgres()` on the shared store).
    let sql = match db {
        Some(db) => Some(db.ledger_tables().await.context("reading the ledger's own tables")?),
        None => None,
    };
    let mut sql_disagrees = Vec::new();
    let mut credited_total = 0i64;
    for k in good {
        let mut per = Vec::with_capacity(stores.len());
        for s in &stores {
            per.push(state_of(s.as_ref(), &format!("applied/k{k}")).await);
        }
        let total: i64 = per.iter().sum();
        if total == 0 {
            lost.push(*k);
        }
        if per.iter().any(|n| *n > 1) {
            doubled_tx.push(*k);
        }
        if per.iter().filter(|n| **n > 0).count() > 1 {
            cross_instance += 1;
        }
        if let Some((applied, _)) = &sql
            && applied.get(&format!("k{k}")).copied().unwrap_or(0) != total
        {
            sql_disagrees.push(*k);
        }
        credited_total += total;
    }
    let mut balances = 0i64;
    for s in &stores {
        for a in 0..ACCOUNTS {
            balances += state_of(s.as_ref(), &format!("account/{a}")).await;
        }
    }
    let seen = effects(consumers);
    let doubled_fx = seen.values().filter(|n| **n > 1).count() as u64;
    let dead = broker.dead_letters().await?;
    let want_dead: HashSet<String> = poison.iter().map(|k| format!("k{k}")).collect();
    let wrong_reason: Vec<String> = dead.iter().filter(|(_, r)| r != "decode").map(|(k, _)| k.clone()).collect();
    let dead_keys: HashSet<String> = dead.into_iter().map(|(k, _)| k).collect();
    let missing_dead: Vec<&String> = want_dead.difference(&dead_keys).collect();
    let leftover = broker.leftover().await?;

    match db {
        Some(db) => println!("store engine: postgres, shared by every consumer (schema {})", db.schema()),
        None => println!("store engine: {}, one per consumer", args.engine),
    }
    println!(
        "| broker | sent | duplicates | poison keys | consumers | SIGKILL | SIGSTOP | cuts | disk full | read-only | \
         outages | db faults | exits | lost | doubled tx | cross-instance | doubled external | dead-lettered | time | seed |"
    );
    println!("|{}", "---|".repeat(20));
    println!(
        "| {:?} | {} | {} | {} | {} | {} ({} working) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0?} | {} |",
        args.broker,
        sent,
        sent - unique,
        poison.len(),
        args.consumers,
        faults.kills,
        faults.kills_working,
        faults.stops,
        faults.cuts,
        faults.disk_full,
        faults.read_only,
        faults.outages,
        faults.db_faults,
        faults.exits,
        lost.len(),
        doubled_tx.len(),
        cross_instance,
        doubled_fx,
        want_dead.len() - missing_dead.len(),
        elapsed,
        args.seed,
    );
    let mut failures = Vec::new();
    if let Some((applied, sum)) = &sql {
        println!(
            "the handler's own tables (ctx.postgres()): {} keys credited, balances {sum}, {} keys disagreeing with \
             the transactional state",
            applied.len(),
            sql_disagrees.len()
        );
        if !sql_disagrees.is_empty() {
            failures.push(format!(
                "{} keys credited differently in the handler's tables than in its state, e.g. {:?}",
                sql_disagrees.len(),
                &sql_disagrees[..sql_disagrees.len().min(5)]
            ));
        }
        if *sum != credited_total {
            failures.push(format!("the handler's tables' balances {sum} != credits {credited_total}"));
        }
    }
    if !lost.is_empty() {
        failures.push(format!("{} keys lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]));
    }
    if !doubled_tx.is_empty() {
        failures.push(format!(
            "{} keys credited twice in one store, e.g. {:?}",
            doubled_tx.len(),
            &doubled_tx[..doubled_tx.len().min(5)]
        ));
    }
    // Each store's balances add up to its credits when one store saw every credit.
    let shared = db.is_some();
    if (args.consumers == 1 || shared) && balances != credited_total {
        failures.push(format!("balances {balances} != credits {credited_total}"));
    }
    // A kill repeats at most the external effects of the messages in flight in that
    // process (handled, done-record not yet durable); so does a database fault (the
    // completions it cut short are retried). With several consumers there is no such
    // bound: on their own stores a duplicate that reaches another consumer runs again,
    // and on a shared store handlers on different instances that change the same state
    // (the ledger's ten accounts) conflict, and a conflict runs the handler again.
    let bound = u64::from(faults.kills + faults.exits + faults.db_faults) * broker.in_flight();
    if args.consumers == 1 && doubled_fx > bound {
        failures.push(format!("{doubled_fx} external effects repeated, more than kills x in-flight = {bound}"));
    }
    // The shared store has no disk to fill: a consumer that stopped on its own gave up on
    // a database fault it should have waited out.
    if shared && faults.exits > 0 {
        failures.push(format!("{} consumer exits on their own: a database fault must be waited out", faults.exits));
    }
    if !missing_dead.is_empty() || !wrong_reason.is_empty() {
        failures.push(format!(
            "dead-letters: {} missing (e.g. {:?}), {} with a wrong reason (e.g. {:?})",
            missing_dead.len(),
            &missing_dead[..missing_dead.len().min(5)],
            wrong_reason.len(),
            &wrong_reason[..wrong_reason.len().min(5)],
        ));
    }
    if leftover > 0 {
        failures.push(format!("{leftover} messages left unacknowledged or uncommitted"));
    }
    Ok(failures)
}
