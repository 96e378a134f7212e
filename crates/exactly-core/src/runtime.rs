//! Blocking work from async code, without holding up a runtime's other tasks.

/// Runs `f`, which blocks for a while (a purge's engine reads that miss the cache,
/// librdkafka's transaction calls), without holding up the other tasks of the tokio
/// worker thread it is called on. On a multi-threaded runtime the worker first hands
/// them to another thread ([`tokio::task::block_in_place`]). On a current-thread
/// runtime, or outside a runtime, `f` just runs and blocks the thread.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() {
/// let answer = exactly_core::runtime::blocking(|| {
///     std::thread::sleep(std::time::Duration::from_millis(1));
///     42
/// });
/// assert_eq!(answer, 42);
/// # }
/// ```
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Waits for `f` from code that cannot be async (a callback a C library calls, such as
/// librdkafka's rebalance callback): on a multi-threaded runtime through
/// [`blocking`] and the runtime's `block_on`; elsewhere only a future that is ready at
/// once can be waited for, and `None` says it was not.
pub fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    use futures_util::FutureExt;
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Some(tokio::task::block_in_place(|| h.block_on(f)))
        }
        _ => f.now_or_never(),
    }
}
