//! Consume-transform-produce in one Kafka transaction.

use std::time::Duration;

use exactly_core::OutboundRecord;
// librdkafka's transaction calls block; they run off the async scheduler.
use exactly_core::runtime::blocking;
use rdkafka::TopicPartitionList;
use rdkafka::error::{KafkaError, RDKafkaError};
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::util::Timeout;

use crate::state::Committer;
use crate::{Error, convert};

const TIMEOUT: Duration = Duration::from_secs(10);

fn rd(e: &KafkaError) -> Option<&RDKafkaError> {
    match e {
        KafkaError::Transaction(e) => Some(e),
        _ => None,
    }
}

/// Produces `records` and commits `offsets` in one transaction. A failed transaction is
/// aborted (and its records and offsets go into the next one); an error librdkafka calls
/// fatal is returned as such: the producer cannot go on.
pub(crate) async fn commit(
    producer: &FutureProducer,
    consumer: &dyn Committer,
    offsets: &TopicPartitionList,
    records: &[OutboundRecord],
) -> Result<(), Error> {
    let step = |step: &'static str| move |source| Error::Transaction { step, source };
    if let Err(e) = blocking(|| producer.begin_transaction()) {
        if rd(&e).is_some_and(RDKafkaError::is_fatal) {
            return Err(Error::TransactionFatal { step: "begin", source: e });
        }
        return Err(step("begin")(e));
    }
    let produced = async {
        for r in records {
            producer
                .send(convert::outbound_record(r), Timeout::After(TIMEOUT))
                .await
                .map_err(|(source, _)| Error::Produce { topic: r.destination.clone(), source })?;
        }
        if offsets.count() > 0 {
            let meta = consumer.group_metadata().ok_or_else(|| Error::Config {
                field: "transactional".into(),
                reason: "the consumer has no group metadata".into(),
            })?;
            blocking(|| producer.send_offsets_to_transaction(offsets, &meta, TIMEOUT)).map_err(step("offsets"))?;
        }
        // A retriable failure of the commit itself is retried as librdkafka asks.
        let mut tries = 0;
        loop {
            match blocking(|| producer.commit_transaction(TIMEOUT)) {
                Ok(()) => return Ok(()),
                Err(e) if rd(&e).is_some_and(RDKafkaError::is_retriable) && tries < 3 => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "committing the transaction again");
                }
                Err(e) => return Err(Error::Transaction { step: "commit", source: e }),
            }
        }
    }
    .await;
    if let Err(Error::Transaction { step, source }) = &produced
        && rd(source).is_some_and(RDKafkaError::is_fatal)
    {
        return Err(Error::TransactionFatal { step, source: source.clone() });
    }
    if let Err(e) = &produced {
        tracing::warn!(error = %e, "aborting the transaction; its records and offsets go into the next one");
        if let Err(abort) = blocking(|| producer.abort_transaction(TIMEOUT)) {
            tracing::error!(error = %abort, "aborting the transaction failed");
            return Err(Error::Transaction { step: "abort", source: abort });
        }
    }
    produced
}
