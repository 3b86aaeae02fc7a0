//! The publishing loop: registry changes in, confirmed messages out, through any outage.
//!
//! One task owns the [`Outbox`]. It keeps taking changes from its subscription whatever the
//! broker does (so the fold never waits for the broker), sends one batch at a time and waits
//! for its confirms under a timeout, and on any failure puts the batch back, drops the
//! connection, and reconnects after a jittered, capped, growing delay. Ids only rise on the
//! wire and the broker deduplicates by them, so re-sending after an uncertain failure is safe:
//! nothing is lost, nothing is stored twice.
//!
//! The broker itself sits behind [`StreamBroker`], so tests drive this loop with a double that
//! loses confirms, hangs, or refuses connections on cue.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use pipeline::{Registry, Subscription, Timestamp, Update};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::Tuning;
use super::error::BrokerError;
use super::message::Outgoing;
use super::outbox::{BatchLimits, Outbox};
use crate::backoff::Backoff;
use crate::telemetry::PublisherState;

/// The largest frame the broker accepts unless configured otherwise (RabbitMQ's default).
pub const FRAME_MAX: usize = 1_048_576;

/// What a successful connection learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connected {
    /// The named producer's last stored publishing id, if it ever published.
    pub last_publishing_id: Option<u64>,
    /// Something operators should know though publishing works (say, the stream exists with
    /// other retention arguments than configured).
    pub notice: Option<String>,
}

/// The broker as the publisher needs it: one stream, one named deduplicating producer.
///
/// Futures returned by `send_batch` and `lost` own what they need (`'static`), so the loop can
/// keep one in flight while it takes in changes. The loop bounds every call with its own
/// timeout; implementations need not.
pub trait StreamBroker: Send + 'static {
    /// Connect, create the stream if missing, declare the producer. Replaces any earlier
    /// connection.
    fn connect(&mut self) -> BoxFuture<'_, Result<Connected, BrokerError>>;

    /// Publish `batch` in order with the publishing ids it carries; resolves once every
    /// message is confirmed, or with the first failure.
    fn send_batch(&mut self, batch: Vec<Outgoing>) -> BoxFuture<'static, Result<(), BrokerError>>;

    /// Resolves when the current connection is lost (immediately when there is none).
    fn lost(&self) -> BoxFuture<'static, ()>;

    /// Close the connection, releasing the producer.
    fn disconnect(&mut self) -> BoxFuture<'_, ()>;

    /// The named producer's last stored publishing id, asked on the current connection (`None`:
    /// it never published). The publisher asks before every batch: a mark above every id it
    /// sent means another writer uses the name. A broker that cannot tell keeps this default,
    /// which turns the check off.
    fn last_publishing_id(&self) -> BoxFuture<'static, Result<Option<u64>, BrokerError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// Why the connected phase ended without an error.
enum Stop {
    /// Shutdown was asked for.
    Shutdown,
    /// The registry stopped and everything it emitted is confirmed.
    Drained,
}

type SendInFlight = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// The publishing loop over a broker `B`.
pub struct Publisher<B> {
    /// The batch awaiting its confirms. Never abandoned while the connection lives: re-sending
    /// an id the same producer still waits for would confuse the client library. Declared
    /// before `broker` so that, should the task be dropped mid-send, the send (and whatever
    /// it holds of the broker's connection) goes first and the broker can close cleanly.
    sending: Option<SendInFlight>,
    broker: B,
    outbox: Outbox,
    /// `None` once the registry has stopped.
    updates: Option<Subscription>,
    tuning: Tuning,
    limits: BatchLimits,
    state: Arc<PublisherState>,
    connected_before: bool,
    /// The highest publishing id this publisher ever sent (before the first send: the id just
    /// below the run's first, its floor). A broker mark above it was not set by this process.
    sent_up_to: u64,
    /// Whether the outbox is shedding changes, to log once per episode rather than per change.
    overflowing: bool,
    /// Whether a batch was confirmed on the current connection.
    progressed: bool,
}

impl<B: StreamBroker> Publisher<B> {
    /// A publisher of every change of this run of `registry`, from its first.
    ///
    /// It subscribes right away, so nothing emitted after this call is missed; changes the
    /// registry emitted before are replayed from its log (or, if the log has moved on, stood
    /// for by a resync with the full list).
    pub fn new(broker: B, registry: &Registry, tuning: Tuning, state: Arc<PublisherState>) -> Self {
        let floor = registry.snapshot().floor;
        let updates = registry.subscribe_after(floor);
        Publisher {
            sending: None,
            broker,
            outbox: Outbox::starting_run(tuning.outbox_capacity, floor, Timestamp::now()),
            updates: Some(updates),
            tuning,
            limits: BatchLimits::new(tuning.batch_size, FRAME_MAX),
            state,
            connected_before: false,
            sent_up_to: floor.saturating_sub(1),
            overflowing: false,
            progressed: false,
        }
    }

    /// Publish until `shutdown` (then flush what is pending, within one timeout) or until the
    /// registry stops and everything is confirmed. Broker failures are never fatal.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.tuning.reconnect_min, self.tuning.reconnect_max);
        let mut connect_limit = ConnectLimit::new(self.tuning.timeout);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if self.updates.is_none() && self.outbox.is_empty() {
                break;
            }
            // Shutdown does not wait for a connection attempt: the flush below makes its own,
            // within its own timeout.
            let attempt = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                attempt = tokio::time::timeout(connect_limit.current(), self.broker.connect()) => attempt,
            };
            let result = match attempt {
                Ok(Ok(connected)) => {
                    connect_limit.succeeded();
                    let since = Instant::now();
                    let result = match self.on_connected(connected) {
                        Ok(()) => self.publish_while_connected(&shutdown).await,
                        Err(error) => Err(error),
                    };
                    // A connection that did real work, or lived long, starts the delays
                    // over; one that fails at once (say, every publish refused) keeps
                    // backing off instead of reconnecting in a tight loop.
                    if self.progressed || since.elapsed() >= self.tuning.reconnect_max {
                        backoff.reset();
                    }
                    result
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(BrokerError::Timeout {
                    operation: "connecting",
                    after: connect_limit.timed_out(),
                }),
            };
            match result {
                Ok(Stop::Drained) => break,
                Ok(Stop::Shutdown) => break,
                Err(error @ BrokerError::AnotherWriter { .. }) => {
                    self.halt(&error);
                    self.disconnect().await;
                    return;
                }
                Err(error) => {
                    self.on_failure(&error, backoff.is_reset());
                    self.disconnect().await;
                }
            }
            let delay = backoff.next(rand::random::<f64>());
            tracing::debug!(?delay, "reconnecting to the broker after a delay");
            if !self.take_changes_for(delay, &shutdown).await {
                break;
            }
        }
        self.flush().await;
        self.disconnect().await;
    }

    /// Take in what a connection learned. Fails with [`BrokerError::AnotherWriter`] when the
    /// producer's mark is above every id this process sent.
    fn on_connected(&mut self, connected: Connected) -> Result<(), BrokerError> {
        if self.connected_before {
            self.state.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("reconnected to the broker");
        } else {
            tracing::info!("connected to the broker");
        }
        self.connected_before = true;
        self.progressed = false;
        if let Some(notice) = connected.notice {
            self.record_error(notice);
        }
        if let Some(last) = connected.last_publishing_id {
            // The broker drops ids at or below `last` as duplicates: changes this run has not
            // sent yet with such ids would vanish. The run's floor is above the mark the
            // broker had at start-up, so only another publisher under the same producer name
            // (or, when the broker could not be asked at start-up, a clock set far back)
            // can cause it.
            check_mark(last, self.sent_up_to)?;
            // At or below what we sent: ours, possibly from a batch whose confirm was lost.
            self.state.last_confirmed.fetch_max(last, Ordering::Relaxed);
        }
        self.state.connected.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stop publishing for the rest of the run: another writer uses the producer name, so
    /// whatever this process sends would be discarded or, worse, interleave with the other
    /// writer's ids. Says so in the log and in /health, and lets go of the subscription.
    fn halt(&mut self, error: &BrokerError) {
        if let BrokerError::AnotherWriter { broker_last, .. } = error {
            self.state
                .foreign_publishing_id
                .store(*broker_last, Ordering::Relaxed);
        }
        self.state.connected.store(false, Ordering::Relaxed);
        tracing::error!(unpublished = self.outbox.len(), "{error}");
        self.record_error(error.to_string());
        self.updates = None;
        self.sending = None;
    }

    /// Note a failure. Only the first of a series is a warning; the rest of an outage logs
    /// at debug level so it does not flood the log (the last error stays in /health).
    fn on_failure(&mut self, error: &BrokerError, first: bool) {
        if self.state.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, "lost the broker; changes wait in the outbox");
        } else if first {
            tracing::warn!(%error, "cannot reach the broker; retrying");
        } else {
            tracing::debug!(%error, "still cannot reach the broker");
        }
        self.record_error(error.to_string());
    }

    fn record_error(&self, message: String) {
        if let Ok(mut last) = self.state.last_error.lock() {
            *last = Some(message);
        }
    }

    async fn disconnect(&mut self) {
        self.state.connected.store(false, Ordering::Relaxed);
        // A close that hangs is abandoned: the connection is dropped all the same.
        let _ = tokio::time::timeout(self.tuning.timeout, self.broker.disconnect()).await;
    }

    /// Send batches and take in changes until something fails, shutdown, or the registry is
    /// done and drained.
    async fn publish_while_connected(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Stop, BrokerError> {
        let mut lost = self.broker.lost();
        loop {
            if self.sending.is_none() {
                self.sending = self.start_batch();
            }
            if self.sending.is_none() && self.updates.is_none() {
                return Ok(Stop::Drained);
            }
            tokio::select! {
                biased;
                // A batch in flight stays in `self.sending`: the flush awaits it.
                _ = shutdown.cancelled() => return Ok(Stop::Shutdown),
                result = in_flight(&mut self.sending) => {
                    self.sending = None;
                    if let Err(error) = result {
                        self.batch_failed();
                        return Err(error);
                    }
                    self.batch_confirmed();
                }
                _ = &mut lost => {
                    if self.sending.take().is_some() {
                        self.batch_failed();
                    }
                    return Err(BrokerError::ConnectionLost);
                }
                update = next_update(&mut self.updates) => self.take(update),
            }
        }
    }

    /// Cut the next batch, if any, and start sending it under the timeout.
    fn start_batch(&mut self) -> Option<SendInFlight> {
        if !self.outbox.has_unsent() {
            return None;
        }
        let batch = self.outbox.next_batch(self.limits);
        for oversized in &batch.oversized {
            self.state.failed.fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "change {} ({}) is {} bytes, more than a broker frame holds; it is not published",
                oversized.publishing_id, oversized.routing_key, oversized.bytes
            );
            tracing::error!("{message}");
            self.record_error(message);
        }
        self.report_outbox();
        let last = batch.messages.last()?.publishing_id;
        self.state
            .published
            .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        let timeout = self.tuning.timeout;
        // Asked before the batch goes out: if another writer raised the mark, this batch
        // would vanish as duplicates. (What races the check is lost either way; the next
        // check stops publishing.)
        let mark = self.broker.last_publishing_id();
        let sent_before = self.sent_up_to;
        self.sent_up_to = self.sent_up_to.max(last);
        let send = self.broker.send_batch(batch.messages);
        let checked_send = async move {
            if let Some(broker_last) = mark.await? {
                check_mark(broker_last, sent_before)?;
            }
            send.await
        };
        Some(Box::pin(async move {
            match tokio::time::timeout(timeout, checked_send).await {
                Ok(result) => result,
                Err(_) => Err(BrokerError::Timeout {
                    operation: "waiting for publish confirms",
                    after: timeout,
                }),
            }
        }))
    }

    fn batch_confirmed(&mut self) {
        self.progressed = true;
        let (count, last) = self.outbox.confirm_in_flight();
        self.state
            .confirmed
            .fetch_add(count as u64, Ordering::Relaxed);
        if let Some(last) = last {
            self.state.last_confirmed.fetch_max(last, Ordering::Relaxed);
        }
        self.overflowing = false;
        self.report_outbox();
    }

    fn batch_failed(&mut self) {
        let (count, dropped) = self.outbox.requeue();
        self.state.failed.fetch_add(count as u64, Ordering::Relaxed);
        self.note_dropped(dropped);
        self.report_outbox();
    }

    /// Take in changes (and nothing else) for `delay`. False when shutdown was asked for.
    async fn take_changes_for(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                _ = &mut sleep => return true,
                update = next_update(&mut self.updates) => self.take(update),
            }
        }
    }

    fn take(&mut self, update: Option<Update>) {
        match update {
            Some(Update::Change(change)) => {
                let dropped = self.outbox.push(change);
                self.note_dropped(dropped);
            }
            Some(Update::Reset { snapshot, reason }) => {
                tracing::warn!(
                    %reason,
                    revision = snapshot.revision,
                    "the publisher fell behind the registry's change log; publishing the full list"
                );
                let skipped = self.outbox.reset(
                    snapshot.revision,
                    snapshot.services.clone(),
                    Timestamp::now(),
                );
                self.note_dropped(skipped);
            }
            None => {
                tracing::debug!("the registry stopped; publishing what remains");
                self.updates = None;
            }
        }
        self.report_outbox();
    }

    fn note_dropped(&mut self, dropped: u64) {
        if dropped == 0 {
            return;
        }
        self.state.dropped.fetch_add(dropped, Ordering::Relaxed);
        if !self.overflowing {
            self.overflowing = true;
            let message = format!(
                "the outbox is full ({} changes): dropping the oldest; a services.updated with the \
                 full list will stand for them",
                self.outbox.capacity()
            );
            tracing::warn!("{message}");
            self.record_error(message);
        }
    }

    fn report_outbox(&self) {
        self.state
            .outbox_len
            .store(self.outbox.len() as u64, Ordering::Relaxed);
    }

    /// At shutdown: take what the registry already emitted, then try, within one timeout, to
    /// get everything confirmed (connecting first if need be).
    async fn flush(&mut self) {
        while let Some(Some(update)) = self.updates.as_mut().map(|u| u.next().now_or_never()) {
            self.take(update);
        }
        if self.outbox.is_empty() && self.sending.is_none() {
            return;
        }
        let pending = self.outbox.len();
        let result = tokio::time::timeout(self.tuning.timeout, self.flush_unbounded()).await;
        match result {
            Ok(Ok(())) => tracing::info!(pending, "published the outbox before stopping"),
            Ok(Err(error @ BrokerError::AnotherWriter { .. })) => self.halt(&error),
            Ok(Err(error)) => {
                self.on_failure(&error, true);
                tracing::warn!(
                    left = self.outbox.len(),
                    "stopping with unpublished changes"
                );
            }
            Err(_) => tracing::warn!(
                left = self.outbox.len(),
                "stopping with unpublished changes: the broker did not confirm in time"
            ),
        }
    }

    async fn flush_unbounded(&mut self) -> Result<(), BrokerError> {
        if let Some(send) = self.sending.take() {
            match send.await {
                Ok(()) => self.batch_confirmed(),
                Err(error) => {
                    self.batch_failed();
                    return Err(error);
                }
            }
        }
        if !self.state.is_connected() {
            let connected = self.broker.connect().await?;
            self.on_connected(connected)?;
        }
        while let Some(send) = self.start_batch() {
            match send.await {
                Ok(()) => self.batch_confirmed(),
                Err(error) => {
                    self.batch_failed();
                    return Err(error);
                }
            }
        }
        Ok(())
    }
}

/// How long one connection attempt may take. It starts at the broker timeout and doubles
/// after each attempt that ran out of time, up to [`ConnectLimit::GROWTH`] times the timeout,
/// then falls back after a success. Connecting opens several connections (environment, query,
/// producer) and declares the stream; a broker that is still booting, or starved of CPU, can
/// take longer for all of that than the timeout at every attempt, and a fixed limit would then
/// cut every attempt short and never connect.
#[derive(Debug, Clone, Copy)]
struct ConnectLimit {
    base: Duration,
    current: Duration,
}

impl ConnectLimit {
    /// The longest limit, as a multiple of the timeout (40 s at the default 5 s).
    const GROWTH: u32 = 8;

    fn new(base: Duration) -> Self {
        ConnectLimit {
            base,
            current: base,
        }
    }

    fn current(&self) -> Duration {
        self.current
    }

    /// The attempt took the whole limit: returns that limit and raises the next one.
    fn timed_out(&mut self) -> Duration {
        let spent = self.current;
        self.current = (spent * 2).min(self.base * Self::GROWTH).max(self.base);
        spent
    }

    fn succeeded(&mut self) {
        self.current = self.base;
    }
}

/// Fails when the broker's mark for the producer (`broker_last`) is above every id this
/// process sent (`sent_up_to`): only another writer can have put it there.
fn check_mark(broker_last: u64, sent_up_to: u64) -> Result<(), BrokerError> {
    if broker_last > sent_up_to {
        return Err(BrokerError::AnotherWriter {
            broker_last,
            sent_up_to,
        });
    }
    Ok(())
}

/// The in-flight send's result, or never when nothing is in flight.
async fn in_flight(sending: &mut Option<SendInFlight>) -> Result<(), BrokerError> {
    match sending {
        Some(send) => send.await,
        None => std::future::pending().await,
    }
}

/// The next update, or never once the registry has stopped.
async fn next_update(updates: &mut Option<Subscription>) -> Option<Update> {
    match updates {
        Some(updates) => updates.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectLimit;
    use std::time::Duration;

    #[test]
    fn the_connect_limit_doubles_after_timeouts_up_to_its_cap_and_falls_back() {
        let mut limit = ConnectLimit::new(Duration::from_secs(5));
        let spent: Vec<u64> = (0..6).map(|_| limit.timed_out().as_secs()).collect();
        assert_eq!(spent, [5, 10, 20, 40, 40, 40]);
        limit.succeeded();
        assert_eq!(limit.current(), Duration::from_secs(5));
    }
}
