//! The rotation loop: the single writer of the Workload API's [`Snapshot`].
//!
//! Each registration entry has one SVID, minted once and shared by every stream of every
//! caller that matches it. An SVID is replaced at half of its lifetime, ±10 % jitter so
//! that many agents started together do not all hit their CA at once (SPIRE's
//! `rotationutil` uses the same half-life rule). An SVID that could not be replaced is
//! withdrawn when it expires: the agent never serves an expired SVID.
//!
//! The [`Signer`] can change while the agent runs (the `kms` upstream re-syncs its
//! material): a new CA re-mints every SVID at once; leaf material is served as it is.
//!
//! Time comes from a [`Clock`]: the wall clock for certificate validity, tokio's clock
//! for timers. Tests pause tokio's clock and derive the wall clock from it, so that a
//! rotation at half-life is seen without waiting for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use enclaveid_workload_api::{Identity, Selectors, Snapshot, Svid};
use prost::bytes::Bytes;
use spiffe::{SpiffeId, TrustDomain};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::authority::Authority;
use crate::config::Entry;
use crate::enclave::Enclave;
use crate::jwt::{JwtKey, JwtKeys};

/// After a failed mint, the first retry waits this long, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// How long a slot that has nothing to do sleeps.
const IDLE: Duration = Duration::from_secs(3600);

/// How often the wall clock is compared with the monotonic one, and how far they may
/// drift apart before it counts as a step (an NTP step, a suspended VM, an operator's
/// `date -s`): SVIDs are dated by the wall clock, timers run on the monotonic one.
const WALL_CHECK: Duration = Duration::from_secs(1);
const CLOCK_STEP: Duration = Duration::from_secs(2);

/// Where the rotator reads the wall-clock time from.
pub(crate) trait Clock: Send + Sync + 'static {
    /// Now, on the wall clock certificates are dated by.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// What SVIDs come from.
pub(crate) enum Signer {
    /// A CA: SVIDs are minted under it.
    Ca(Authority),
    /// One X.509-SVID made elsewhere, served to the entries with its SPIFFE ID.
    Leaf(LeafSvid),
}

/// An X.509-SVID issued by the Private CA itself.
pub(crate) struct LeafSvid {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The DER chain, leaf first, concatenated.
    pub chain_der: Vec<u8>,
    /// The PKCS#8 DER key.
    pub key_der: Zeroizing<Vec<u8>>,
    /// The earliest notAfter of the chain.
    pub not_after: SystemTime,
    /// The serial, for logs.
    pub serial: String,
}

/// Keeps one SVID per entry current and publishes every change.
pub(crate) struct Rotator {
    clock: Arc<dyn Clock>,
    signer: Option<Signer>,
    entries: Vec<Slot>,
    bundles: BTreeMap<String, Bytes>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    updates: Option<mpsc::Receiver<Option<Signer>>>,
    renew: Arc<tokio::sync::Notify>,
    jwt: Option<JwtKeys>,
    jwt_updates: Option<mpsc::Receiver<Option<JwtKey>>>,
    /// Entries of a reloaded configuration.
    reloads: Option<mpsc::Receiver<Vec<Entry>>>,
    /// The clocks at the last look, to notice a step of the wall clock.
    last_seen: Option<(Instant, SystemTime)>,
    /// The enclave's attestor, for entries with `attested = true`.
    enclave: Option<Arc<Enclave>>,
}

/// Asks the running agent to re-mint every SVID now (see [`Renewer::renew_now`]).
#[derive(Clone, Debug)]
pub struct Renewer(Arc<tokio::sync::Notify>);

impl Renewer {
    /// A renewer that wakes `notify`.
    pub(crate) fn from_notify(notify: Arc<tokio::sync::Notify>) -> Self {
        Self(notify)
    }

    /// Re-mints every SVID now, as if each had reached its rotation time: a forced
    /// rotation (`SIGUSR1` to `enclaveid run`). Leaf material (an SVID the Private CA
    /// issued) cannot be re-minted here and is left as is.
    pub fn renew_now(&self) {
        self.0.notify_one();
    }
}

struct Slot {
    entry: Entry,
    selectors: Selectors,
    svid: Option<Svid>,
    rotate_at: Instant,
    failures: u32,
}

// === impl Rotator ===

impl Rotator {
    /// A rotator for `entries` of `trust_domain`, whose bundle is `bundle_der`, signing
    /// with `signer` (none yet: SVIDs come with the first [`Rotator::set_signer`]).
    /// Nothing is minted until [`Rotator::rotate_due`] or [`Rotator::run`].
    pub(crate) fn new(
        trust_domain: &TrustDomain,
        bundle_der: Vec<u8>,
        signer: Option<Signer>,
        entries: &[Entry],
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let bundles = BTreeMap::from([(trust_domain.id_string(), Bytes::from(bundle_der))]);
        let now = Instant::now();
        let entries = entries
            .iter()
            .map(|entry| Slot {
                selectors: entry.selectors.iter().map(ToString::to_string).collect(),
                entry: entry.clone(),
                svid: None,
                rotate_at: now,
                failures: 0,
            })
            .collect();
        let (snapshots, rx) = watch::channel(Arc::new(Snapshot::default()));
        let mut rotator = Self {
            clock: Arc::new(SystemClock),
            signer: None,
            entries,
            bundles,
            snapshots,
            updates: None,
            renew: Arc::default(),
            jwt: None,
            jwt_updates: None,
            reloads: None,
            last_seen: None,
            enclave: None,
        };
        if let Some(signer) = signer {
            rotator.set_signer(signer);
        }
        rotator.publish();
        (rotator, rx)
    }

    /// Makes the documents of attested entries with `enclave`'s attestor.
    pub(crate) fn with_enclave(mut self, enclave: Arc<Enclave>) -> Self {
        self.enclave = Some(enclave);
        self
    }

    /// Reads the wall clock from `clock` instead of the system's.
    #[cfg(test)]
    fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Signers sent on `updates` replace the current one while [`Rotator::run`] runs;
    /// `None` withdraws the signer and every SVID (the material was revoked).
    pub(crate) fn with_updates(mut self, updates: mpsc::Receiver<Option<Signer>>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Signs JWT-SVIDs with `keys` and publishes their bundle.
    pub(crate) fn with_jwt_keys(mut self, keys: JwtKeys) -> Self {
        self.jwt = Some(keys);
        self.publish();
        self
    }

    /// Keys sent on `updates` become the JWT signing key while [`Rotator::run`] runs;
    /// `None` withdraws the current one (revoked).
    pub(crate) fn with_jwt_updates(mut self, updates: mpsc::Receiver<Option<JwtKey>>) -> Self {
        self.jwt_updates = Some(updates);
        self
    }

    /// Entries sent on `reloads` replace the current ones while [`Rotator::run`] runs
    /// ([`Rotator::set_entries`]).
    pub(crate) fn with_reloads(mut self, reloads: mpsc::Receiver<Vec<Entry>>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// The entries of a reloaded configuration: an entry unchanged (every field equal)
    /// keeps its slot and its SVID, so streams see no change; a removed one is dropped
    /// (its callers' streams end with `PermissionDenied` when it was their last
    /// identity); an added or changed one is minted at the next pass. File order is kept.
    pub(crate) fn set_entries(&mut self, entries: &[Entry]) {
        let now = Instant::now();
        let mut old: Vec<Option<Slot>> = std::mem::take(&mut self.entries)
            .into_iter()
            .map(Some)
            .collect();
        let (mut kept, mut added) = (0, 0);
        for entry in entries {
            let same = old
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(|s| s.entry == *entry))
                .and_then(Option::take);
            match same {
                Some(slot) => {
                    kept += 1;
                    self.entries.push(slot);
                }
                None => {
                    added += 1;
                    // Leaf material (an SVID the Private CA issued) is served as it is.
                    let svid = match &self.signer {
                        Some(Signer::Leaf(leaf)) if leaf.spiffe_id == entry.spiffe_id => Some(
                            Svid::new(leaf.chain_der.clone(), leaf.key_der.clone(), leaf.not_after),
                        ),
                        _ => None,
                    };
                    self.entries.push(Slot {
                        selectors: entry.selectors.iter().map(ToString::to_string).collect(),
                        entry: entry.clone(),
                        svid,
                        rotate_at: now,
                        failures: 0,
                    });
                }
            }
        }
        let removed = old.iter().flatten().count();
        tracing::info!(kept, added, removed, "entries reloaded");
        self.publish();
    }

    /// A handle that forces a rotation while [`Rotator::run`] runs.
    pub(crate) fn renewer(&self) -> Renewer {
        Renewer(self.renew.clone())
    }

    /// Makes every SVID due now (a CA signer re-mints them at the next pass) and
    /// replaces the JWT signing key.
    pub(crate) fn renew_all(&mut self) {
        let wall = self.clock.now();
        if let Some(jwt) = &mut self.jwt {
            match jwt.rotate(wall) {
                Ok(()) => self.publish(),
                Err(error) => {
                    tracing::error!(error = %enclaveid_checks::Chain(&error), "could not replace the JWT-SVID signing key")
                }
            }
        }
        if !matches!(self.signer, Some(Signer::Ca(_))) {
            tracing::warn!("renewal asked, but there is no CA to re-mint SVIDs with");
            return;
        }
        tracing::info!("renewing every X.509-SVID now");
        let now = Instant::now();
        for slot in &mut self.entries {
            slot.rotate_at = now;
            slot.failures = 0;
        }
    }

    /// A new JWT signing key (`None`: withdraw the current one).
    fn set_jwt_key(&mut self, key: Option<JwtKey>) {
        let wall = self.clock.now();
        let Some(jwt) = &mut self.jwt else {
            return;
        };
        let changed = match key {
            Some(key) => jwt.set(key, wall),
            None => {
                jwt.withdraw();
                true
            }
        };
        if changed {
            self.publish();
        }
    }

    /// Withdraws the signer and every SVID it issued.
    pub(crate) fn withdraw(&mut self) {
        self.signer = None;
        for slot in &mut self.entries {
            slot.svid = None;
            slot.rotate_at = crate::time::later(Instant::now(), IDLE);
        }
        tracing::error!("every X.509-SVID withdrawn: the upstream material was revoked");
        self.publish();
    }

    /// Replaces the signer: a CA re-mints every SVID at the next pass; a leaf is
    /// served at once to the entries with its SPIFFE ID, and no other.
    pub(crate) fn set_signer(&mut self, signer: Signer) {
        let now = Instant::now();
        match &signer {
            Signer::Ca(_) => {
                for slot in &mut self.entries {
                    slot.rotate_at = now;
                    slot.failures = 0;
                }
            }
            Signer::Leaf(leaf) => {
                for slot in &mut self.entries {
                    slot.rotate_at = crate::time::later(now, IDLE);
                    slot.svid = (slot.entry.spiffe_id == leaf.spiffe_id).then(|| {
                        Svid::new(leaf.chain_der.clone(), leaf.key_der.clone(), leaf.not_after)
                    });
                    if slot.svid.is_some() && slot.entry.attested {
                        // The Private CA signed this leaf: no document can be added.
                        tracing::error!(
                            spiffe_id = %slot.entry.spiffe_id,
                            "the entry has attested = true, and the upstream hands over a leaf the Private CA signed, which cannot carry an attestation; not served (give the agent CA material, or set attested = false)"
                        );
                        slot.svid = None;
                    }
                }
                tracing::info!(
                    spiffe_id = %leaf.spiffe_id,
                    serial = %leaf.serial,
                    not_after = %humantime::format_rfc3339(leaf.not_after),
                    "serving the Private CA's X.509-SVID"
                );
                self.publish();
            }
        }
        self.signer = Some(signer);
    }

    /// Mints what is due, withdraws what expired, publishes if anything changed, and
    /// returns when to look again.
    pub(crate) fn rotate_due(&mut self) -> Instant {
        let now = Instant::now();
        let wall = self.clock.now();
        if let Some(step) = self.wall_clock_step(now, wall) {
            // SVIDs minted before the step are dated on the other side of it: expired, or
            // not yet valid, for peers whose clocks agree with the new time. Re-mint all.
            tracing::warn!(
                step = %step,
                "the wall clock stepped; re-minting every X.509-SVID with the new time"
            );
            for slot in &mut self.entries {
                slot.rotate_at = now;
            }
        }
        let mut changed = self.jwt.as_mut().is_some_and(|jwt| jwt.update(now, wall));
        for slot in &mut self.entries {
            if slot
                .svid
                .as_ref()
                .is_some_and(|svid| svid.not_after() <= wall)
            {
                tracing::error!(spiffe_id = %slot.entry.spiffe_id, "X.509-SVID expired before it could be replaced; withdrawn");
                slot.svid = None;
                changed = true;
            }
            if slot.rotate_at > now {
                continue;
            }
            let Some(Signer::Ca(authority)) = &self.signer else {
                slot.rotate_at = crate::time::later(now, IDLE);
                continue;
            };
            let started = std::time::Instant::now();
            match authority.mint(&slot.entry, wall, self.enclave.as_deref()) {
                Ok(minted) => {
                    let mint_us = started.elapsed().as_micros() as u64;
                    let lifetime = minted
                        .not_after
                        .duration_since(minted.issued_at)
                        .unwrap_or_default();
                    let delay = rotation_delay(lifetime, rand::random_range(-1.0..=1.0));
                    tracing::info!(
                        spiffe_id = %slot.entry.spiffe_id,
                        serial = %minted.serial,
                        not_after = %humantime::format_rfc3339(minted.not_after),
                        rotate_in = ?delay,
                        mint_us,
                        "issued X.509-SVID"
                    );
                    crate::telemetry::metrics()
                        .svid_issued(&slot.entry.spiffe_id.to_string(), slot.svid.is_some());
                    slot.svid = Some(Svid::new(
                        minted.cert_chain_der,
                        minted.private_key_der,
                        minted.not_after,
                    ));
                    slot.rotate_at = crate::time::later(now, delay);
                    slot.failures = 0;
                    changed = true;
                }
                Err(error) => {
                    let delay = retry_delay(slot.failures);
                    slot.failures = slot.failures.saturating_add(1);
                    slot.rotate_at = crate::time::later(now, delay);
                    tracing::error!(error = %enclaveid_checks::Chain(&error), spiffe_id = %slot.entry.spiffe_id, retry_in = ?delay, "could not issue X.509-SVID");
                }
            }
        }
        if changed {
            self.publish();
        }
        self.next_wakeup(now, wall)
    }

    /// Runs until `shutdown` resolves; dropping the rotator then closes the snapshot
    /// channel, which ends every open Workload API stream.
    pub(crate) async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut updates = self.updates.take();
        let mut jwt_updates = self.jwt_updates.take();
        let mut reloads = self.reloads.take();
        let renew = self.renew.clone();
        loop {
            let next = self.rotate_due();
            let update = async {
                match updates.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let jwt_update = async {
                match jwt_updates.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let reload = async {
                match reloads.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = renew.notified() => self.renew_all(),
                entries = reload => match entries {
                    Some(entries) => self.set_entries(&entries),
                    None => reloads = None,
                },
                update = jwt_update => match update {
                    Some(update) => self.set_jwt_key(update),
                    None => jwt_updates = None,
                },
                update = update => match update {
                    Some(Some(signer)) => self.set_signer(signer),
                    Some(None) => self.withdraw(),
                    None => updates = None,
                },
                () = &mut shutdown => return,
            }
        }
    }

    /// How far the wall clock moved apart from the monotonic one since the last look
    /// (`+` forward, `-` back), when it is more than [`CLOCK_STEP`].
    fn wall_clock_step(&mut self, now: Instant, wall: SystemTime) -> Option<String> {
        let last = self.last_seen.replace((now, wall));
        let (then, then_wall) = last?;
        let expected = crate::time::later_wall(then_wall, now.saturating_duration_since(then));
        let (sign, by) = match wall.duration_since(expected) {
            Ok(ahead) => ('+', ahead),
            Err(behind) => ('-', behind.duration()),
        };
        let by = Duration::from_millis(u64::try_from(by.as_millis()).unwrap_or(u64::MAX));
        (by > CLOCK_STEP).then(|| format!("{sign}{}", humantime::format_duration(by)))
    }

    fn next_wakeup(&self, now: Instant, wall: SystemTime) -> Instant {
        self.entries
            .iter()
            .flat_map(|slot| {
                let expiry = slot.svid.as_ref().map(|svid| {
                    crate::time::later(
                        now,
                        svid.not_after().duration_since(wall).unwrap_or_default(),
                    )
                });
                std::iter::once(slot.rotate_at).chain(expiry)
            })
            .chain(self.jwt.as_ref().and_then(|jwt| jwt.next_wakeup(now, wall)))
            .chain(std::iter::once(crate::time::later(now, WALL_CHECK)))
            .min()
            .unwrap_or_else(|| crate::time::later(now, MAX_RETRY))
    }

    fn publish(&mut self) {
        let identities = self
            .entries
            .iter()
            .map(|slot| Identity {
                spiffe_id: slot.entry.spiffe_id.clone(),
                selectors: slot.selectors.clone(),
                hint: slot.entry.hint.clone(),
                svid: slot.svid.clone(),
                jwt_ttl: slot.entry.jwt_ttl,
                federates_with: Vec::new(),
            })
            .collect();
        self.snapshots.send_replace(Arc::new(Snapshot {
            identities,
            bundles: self.bundles.clone(),
            jwt_bundles: self.jwt.as_ref().map(JwtKeys::bundles).unwrap_or_default(),
            jwt_issuer: self.jwt.as_ref().and_then(JwtKeys::issuer),
        }));
    }
}

/// When to replace an SVID valid for `lifetime`: at half of it, moved by `jitter` (in
/// -1..=1) times 10 % of that half.
pub(crate) fn rotation_delay(lifetime: Duration, jitter: f64) -> Duration {
    let half = lifetime.as_secs_f64() / 2.0;
    Duration::from_secs_f64(half * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0)))
}

fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_happens_between_45_and_55_percent_of_the_lifetime() {
        for _ in 0..10_000 {
            let lifetime = Duration::from_millis(rand::random_range(5_000..100_000_000));
            let jitter: f64 = rand::random_range(-3.0..3.0);
            let delay = rotation_delay(lifetime, jitter).as_secs_f64();
            let lifetime = lifetime.as_secs_f64();
            assert!(
                delay >= lifetime * 0.45 - 1e-6 && delay <= lifetime * 0.55 + 1e-6,
                "{delay} of {lifetime}"
            );
        }
        assert_eq!(
            rotation_delay(Duration::from_secs(100), 0.0),
            Duration::from_secs(50)
        );
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let delays: Vec<_> = (0..10).map(retry_delay).collect();
        assert_eq!(delays[0], FIRST_RETRY);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), MAX_RETRY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[tokio::test]
    async fn each_entry_gets_one_svid_shared_until_rotation() {
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let entry = |path: &str, uid: u32| Entry {
            spiffe_id: spiffe::SpiffeId::new(format!("spiffe://example.org/{path}")).unwrap(),
            selectors: vec![crate::selector::Selector::Uid(uid)],
            dns_names: vec![],
            ttl: Duration::from_secs(600),
            jwt_ttl: Duration::from_secs(300),
            hint: String::new(),
            attested: false,
        };
        let authority = Authority::generate_dev(&td).unwrap();
        let (mut rotator, rx) = Rotator::new(
            &td,
            authority.bundle_der(),
            Some(Signer::Ca(authority)),
            &[entry("a", 1), entry("b", 2)],
        );
        assert!(
            rx.borrow().identities.iter().all(|i| i.svid.is_none()),
            "nothing before the first pass"
        );

        let next = rotator.rotate_due();
        let first = rx.borrow().clone();
        assert!(first.identities.iter().all(|i| i.svid.is_some()));
        // The rotator looks at the clocks every second; the SVIDs rotate much later.
        assert!(next - Instant::now() <= WALL_CHECK);
        let rotate_at = rotator.entries.iter().map(|slot| slot.rotate_at).min();
        let wait = rotate_at.unwrap() - Instant::now();
        assert!(
            wait > Duration::from_secs(260) && wait <= Duration::from_secs(330),
            "{wait:?}"
        );
        assert_eq!(
            first.bundles.keys().collect::<Vec<_>>(),
            ["spiffe://example.org"]
        );

        // A second pass before anything is due changes nothing.
        rotator.rotate_due();
        let again = rx.borrow().clone();
        assert!(
            Arc::ptr_eq(&first, &again),
            "no new snapshot when nothing is due"
        );
    }

    /// A wall clock that moves with tokio's clock, which these tests pause and advance.
    struct TokioClock {
        wall: SystemTime,
        start: Instant,
    }

    impl TokioClock {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                wall: SystemTime::now(),
                start: Instant::now(),
            })
        }
    }

    impl Clock for TokioClock {
        fn now(&self) -> SystemTime {
            self.wall + (Instant::now() - self.start)
        }
    }

    /// [`TokioClock`] that an operator can step forward or back.
    struct SteppedClock {
        inner: Arc<TokioClock>,
        /// Seconds added to the inner clock (negative: back).
        offset: std::sync::atomic::AtomicI64,
    }

    impl Clock for SteppedClock {
        fn now(&self) -> SystemTime {
            let offset = self.offset.load(std::sync::atomic::Ordering::Relaxed);
            let by = Duration::from_secs(offset.unsigned_abs());
            if offset >= 0 {
                self.inner.now() + by
            } else {
                self.inner.now() - by
            }
        }
    }

    fn validity(chain: &[u8]) -> (SystemTime, SystemTime) {
        let (_, cert) = x509_parser::parse_x509_certificate(chain).unwrap();
        let at = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().unsigned_abs())
        };
        (
            at(cert.validity().not_before),
            at(cert.validity().not_after),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_step_either_way_re_mints_every_svid_at_once() {
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let clock = Arc::new(SteppedClock {
            inner: TokioClock::new(),
            offset: std::sync::atomic::AtomicI64::new(0),
        });
        let authority = Authority::generate_dev(&td).unwrap();
        let (rotator, rx) = Rotator::new(
            &td,
            authority.bundle_der(),
            Some(Signer::Ca(authority)),
            &[entry("a", Duration::from_secs(3600))],
        );
        let rotator = rotator.with_clock(clock.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(rotator.run(stop.clone().cancelled_owned()));
        settle().await;
        let first = chain(&rx).unwrap();

        // Forward two hours, past the SVID's notAfter: within a second, a new SVID valid
        // at the new time (not the expired one, and not after its 30-minute rotation).
        clock
            .offset
            .store(7200, std::sync::atomic::Ordering::Relaxed);
        tokio::time::advance(WALL_CHECK).await;
        settle().await;
        let second = chain(&rx).unwrap();
        assert_ne!(second, first, "still serving the SVID the step expired");
        let (not_before, not_after) = validity(&second);
        assert!(not_before <= clock.now() && clock.now() < not_after);

        // Back again: the SVID minted in the future is not valid yet for anyone whose
        // clock agrees; it is replaced too.
        clock.offset.store(0, std::sync::atomic::Ordering::Relaxed);
        tokio::time::advance(WALL_CHECK).await;
        settle().await;
        let third = chain(&rx).unwrap();
        assert_ne!(third, second, "still serving an SVID from the future");
        let (not_before, not_after) = validity(&third);
        assert!(not_before <= clock.now() && clock.now() < not_after);

        // No step: nothing re-minted.
        tokio::time::advance(WALL_CHECK * 5).await;
        settle().await;
        assert_eq!(chain(&rx).unwrap(), third);
        stop.cancel();
        running.await.unwrap();
    }

    fn entry(path: &str, ttl: Duration) -> Entry {
        Entry {
            spiffe_id: spiffe::SpiffeId::new(format!("spiffe://example.org/{path}")).unwrap(),
            selectors: vec![crate::selector::Selector::Uid(1)],
            dns_names: vec![],
            ttl,
            jwt_ttl: Duration::from_secs(300),
            hint: String::new(),
            attested: false,
        }
    }

    /// Lets the spawned rotator run what is due, without letting the paused clock move.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn chain(rx: &watch::Receiver<Arc<Snapshot>>) -> Option<Vec<u8>> {
        rx.borrow().identities[0]
            .svid
            .as_ref()
            .map(|svid| svid.cert_chain_der().to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn rotation_replaces_an_svid_at_half_its_lifetime_on_the_injected_clock() {
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let clock = TokioClock::new();
        let authority = Authority::generate_dev(&td).unwrap();
        let (rotator, rx) = Rotator::new(
            &td,
            authority.bundle_der(),
            Some(Signer::Ca(authority)),
            &[entry("a", Duration::from_secs(600))],
        );
        let rotator = rotator.with_clock(clock.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(rotator.run(stop.clone().cancelled_owned()));
        settle().await;
        let first = chain(&rx).expect("an SVID at start");

        // Half of 600 s, ±10 %: nothing before 270 s, a new SVID by 330 s.
        tokio::time::advance(Duration::from_secs(265)).await;
        settle().await;
        assert_eq!(
            chain(&rx).unwrap(),
            first,
            "rotated before 45 % of its lifetime"
        );
        tokio::time::advance(Duration::from_secs(70)).await;
        settle().await;
        let second = chain(&rx).unwrap();
        assert_ne!(second, first, "not rotated by 55 % of its lifetime");

        // The new SVID is dated by the injected clock, not the system's.
        let (_, cert) = x509_parser::parse_x509_certificate(&second).unwrap();
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().unsigned_abs());
        let expected = clock.now() + Duration::from_secs(600);
        let skew = expected
            .duration_since(not_after)
            .unwrap_or_else(|e| e.duration());
        assert!(
            skew <= Duration::from_secs(70),
            "notAfter {not_after:?}, expected near {expected:?}"
        );
        stop.cancel();
        running.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn rotation_withdraws_an_svid_that_cannot_be_replaced_when_it_expires() {
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let clock = TokioClock::new();
        // Leaf material from the Private CA is served as it is and cannot be re-minted.
        let authority = Authority::generate_dev(&td).unwrap();
        let minted = authority
            .mint(&entry("a", Duration::from_secs(60)), clock.now(), None)
            .unwrap();
        let leaf = LeafSvid {
            spiffe_id: spiffe::SpiffeId::new("spiffe://example.org/a").unwrap(),
            chain_der: minted.cert_chain_der,
            key_der: minted.private_key_der,
            not_after: minted.not_after,
            serial: minted.serial,
        };
        let (rotator, rx) = Rotator::new(
            &td,
            authority.bundle_der(),
            Some(Signer::Leaf(leaf)),
            &[entry("a", Duration::from_secs(60))],
        );
        let rotator = rotator.with_clock(clock.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(rotator.run(stop.clone().cancelled_owned()));
        settle().await;
        assert!(chain(&rx).is_some(), "served while valid");
        tokio::time::advance(Duration::from_secs(55)).await;
        settle().await;
        assert!(chain(&rx).is_some(), "still valid at 55 s");
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert!(chain(&rx).is_none(), "served past its notAfter");
        stop.cancel();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn a_forced_renewal_re_mints_every_svid_and_the_bundle_stays() {
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let entry = Entry {
            spiffe_id: spiffe::SpiffeId::new("spiffe://example.org/a").unwrap(),
            selectors: vec![crate::selector::Selector::Uid(1)],
            dns_names: vec![],
            ttl: Duration::from_secs(600),
            jwt_ttl: Duration::from_secs(300),
            hint: String::new(),
            attested: false,
        };
        let authority = Authority::generate_dev(&td).unwrap();
        let (rotator, mut rx) = Rotator::new(
            &td,
            authority.bundle_der(),
            Some(Signer::Ca(authority)),
            &[entry],
        );
        let renewer = rotator.renewer();
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(rotator.run(stop.clone().cancelled_owned()));
        let svid = |rx: &watch::Receiver<Arc<Snapshot>>| rx.borrow().identities[0].svid.clone();
        rx.wait_for(|s| s.identities[0].svid.is_some())
            .await
            .unwrap();
        let (first, bundles) = (svid(&rx).unwrap(), rx.borrow().bundles.clone());

        renewer.renew_now();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a renewal publishes at once")
            .unwrap();
        let second = svid(&rx).unwrap();
        assert_ne!(
            second.cert_chain_der(),
            first.cert_chain_der(),
            "a new certificate"
        );
        assert_eq!(rx.borrow().bundles, bundles, "same CA, same bundle");
        stop.cancel();
        running.await.unwrap();
    }
}
