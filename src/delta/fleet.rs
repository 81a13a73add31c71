//! The fleet policy: a signed target (`fleet.json`) of the repository that every instance
//! reads on each poll. It pins the fleet to a seq, halts it, releases deltas in waves, and
//! sets the health gate every new version must pass before it is served.
//!
//! Waves: each instance has a stable seed in `0..2048`. A delta published at time `t` is
//! taken by an instance once `now - t` reaches the `after` of the first wave whose
//! cumulative `percent` covers the instance's seed (seed < percent × 2048 / 100); an
//! instance beyond the last wave's percent takes it after the last wave's `after`. Deltas are
//! taken in order: an instance stops at the first delta whose wave has not started for it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::chain::delta_targets;
use super::publish::{published_targets, read_listed};
use crate::delta_store::{DeltaStore, RemoteSettings};
use crate::tuf::keys::load_signers;
use crate::tuf::repo::{NewTarget, RepoState};
use crate::tuf::{self, Expiries, Role};

/// The target name of the fleet policy.
pub const FLEET_TARGET: &str = "fleet.json";
/// How many seeds there are: an instance's seed is in `0..SEEDS`.
pub const SEEDS: u32 = 2048;
/// The largest fleet policy read.
pub const MAX_FLEET_BYTES: u64 = 1 << 20;

/// One rollout wave: from `after_seconds` past a delta's publication, instances whose seed
/// is within the first `percent` of seeds take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Seconds after the delta's publication.
    pub after_seconds: u64,
    /// The share of the fleet (cumulative), 1..=100.
    pub percent: u32,
}

/// A canary query a new version must answer as stated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The query text.
    pub query: String,
    /// How many results to ask for.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Ids that must be among the results.
    #[serde(default)]
    pub must_include: Vec<String>,
    /// Ids that must not be among the results.
    #[serde(default)]
    pub must_exclude: Vec<String>,
    /// The fewest results acceptable.
    #[serde(default)]
    pub min_results: usize,
}

fn default_top_k() -> usize {
    10
}

/// The checks a new version passes before readers see it. Fields this binary does not know
/// (from a newer publisher) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatePolicy {
    /// The largest share of items one swap may remove (percent of the served version's).
    pub max_removed_percent: f64,
    /// The fewest items a version may hold.
    pub min_items: u64,
    /// The slowest median search a new version may answer the canaries with, in
    /// milliseconds.
    pub latency_budget_ms: f64,
    /// Canary queries.
    #[serde(default)]
    pub canaries: Vec<Canary>,
}

impl GatePolicy {
    /// Checks a version's item count against the served one's (`previous`): at least
    /// `min_items`, at most `max_removed_percent` removed. Returns a short label and what
    /// failed.
    pub fn check_counts(&self, previous: u64, next: u64) -> Result<(), (&'static str, String)> {
        if next < self.min_items {
            return Err((
                "min-items",
                format!(
                    "it holds {next} items, fewer than min_items {}",
                    self.min_items
                ),
            ));
        }
        let removed = removed_percent(previous, next);
        if removed > self.max_removed_percent {
            return Err((
                "removed",
                format!(
                    "it removes {removed:.1}% of the items ({previous} to {next}), more than max_removed_percent {}",
                    self.max_removed_percent
                ),
            ));
        }
        Ok(())
    }
}

/// The share of `previous` items gone in `next` (0 when it grows), in percent.
pub fn removed_percent(previous: u64, next: u64) -> f64 {
    if previous == 0 || next >= previous {
        return 0.0;
    }
    (previous - next) as f64 * 100.0 / previous as f64
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            max_removed_percent: 25.0,
            min_items: 1,
            latency_budget_ms: 250.0,
            canaries: Vec::new(),
        }
    }
}

/// The fleet policy. Fields this binary does not know (from a newer publisher) are ignored,
/// so a policy never stops an older instance from following.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FleetPolicy {
    /// Serve exactly this seq (going back to it when newer), until unpinned.
    #[serde(default)]
    pub pin: Option<u64>,
    /// Apply nothing newer than what is served.
    #[serde(default)]
    pub halt: bool,
    /// Rollout waves, by `after_seconds`; none: every instance at once.
    #[serde(default)]
    pub waves: Vec<Wave>,
    /// The health gate (also what `publish-delta` checks a delta's counts against).
    #[serde(default)]
    pub gate: GatePolicy,
    /// When it was set (seconds since the epoch), for messages.
    #[serde(default)]
    pub set_at: u64,
}

impl FleetPolicy {
    /// Parses and checks a policy (from a verified target).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let policy: FleetPolicy =
            serde_json::from_slice(bytes).context("parse the fleet policy (fleet.json)")?;
        policy.check()?;
        Ok(policy)
    }

    /// Refuses waves that are not increasing in both `after` and `percent`, and percents
    /// outside 1..=100.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut previous: Option<Wave> = None;
        for wave in &self.waves {
            if !(1..=100).contains(&wave.percent) {
                bail!(
                    "wave percent {} is out of range: give 1..=100",
                    wave.percent
                );
            }
            if let Some(p) = previous
                && (wave.after_seconds < p.after_seconds || wave.percent < p.percent)
            {
                bail!(
                    "waves must grow in time and share: {}s/{}% follows {}s/{}%",
                    wave.after_seconds,
                    wave.percent,
                    p.after_seconds,
                    p.percent
                );
            }
            previous = Some(*wave);
        }
        if !(0.0..=100.0).contains(&self.gate.max_removed_percent) {
            bail!(
                "gate max_removed_percent {} is out of range: give 0..=100",
                self.gate.max_removed_percent
            );
        }
        Ok(())
    }

    /// How long after its publication a delta reaches the instance with `seed`, and the
    /// wave (1-based; 0 when there are no waves) that carries it.
    pub fn delay_for(&self, seed: u32) -> (Duration, usize) {
        if self.waves.is_empty() {
            return (Duration::ZERO, 0);
        }
        for (idx, wave) in self.waves.iter().enumerate() {
            if seed < wave.percent * SEEDS / 100 {
                return (Duration::from_secs(wave.after_seconds), idx + 1);
            }
        }
        let last = self.waves.len();
        (
            Duration::from_secs(self.waves[last - 1].after_seconds),
            last,
        )
    }

    /// Whether the instance with `seed` may take a delta published at `published_at` (seconds
    /// since the epoch) at `now`.
    pub fn released(&self, seed: u32, published_at: u64, now: u64) -> bool {
        let (delay, _) = self.delay_for(seed);
        now.saturating_sub(published_at) >= delay.as_secs()
    }
}

/// An instance's stable seed in `0..SEEDS`: the one given, or one derived from the machine
/// id (`/etc/machine-id`, else the host name), so the same instance lands in the same wave
/// every time.
pub fn instance_seed(given: Option<u32>) -> anyhow::Result<u32> {
    if let Some(seed) = given {
        if seed >= SEEDS {
            bail!("--instance-seed {seed} is out of range: give 0..{SEEDS}");
        }
        return Ok(seed);
    }
    let identity = ["/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty())
        })
        .context("no /etc/machine-id or host name to derive this instance's wave seed from: pass --instance-seed N (0..2048)")?;
    Ok(seed_of(&identity))
}

/// The seed of an identity (a machine id).
pub fn seed_of(identity: &str) -> u32 {
    let digest = crate::digest::sha256_hex(identity.as_bytes());
    u32::from_str_radix(&digest[..8], 16).unwrap_or(0) % SEEDS
}

/// A wave given on the command line: `DURATION=PERCENT`, e.g. `1h=5`.
pub fn parse_wave(text: &str) -> anyhow::Result<Wave> {
    let (after, percent) = text
        .split_once('=')
        .with_context(|| format!("wave {text:?}: write DURATION=PERCENT, e.g. 1h=5"))?;
    let after = humantime::parse_duration(after)
        .with_context(|| format!("wave {text:?}: {after:?} is not a duration like 1h"))?;
    let percent: u32 = percent
        .trim_end_matches('%')
        .parse()
        .with_context(|| format!("wave {text:?}: {percent:?} is not a percent"))?;
    Ok(Wave {
        after_seconds: after.as_secs(),
        percent,
    })
}

/// Reads a canaries file: a JSON list of canary queries.
pub fn read_canaries(path: &std::path::Path) -> anyhow::Result<Vec<Canary>> {
    let bytes = std::fs::read(path).with_context(|| format!("read canaries {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a JSON list of canaries ({{\"query\", \"top_k\", \"must_include\", \"must_exclude\", \"min_results\"}})",
            path.display()
        )
    })
}

/// Changes `fleet set` makes to the policy.
#[derive(Debug, Clone, Default)]
pub struct PolicyChange {
    /// Pin to this seq.
    pub pin: Option<u64>,
    /// Remove the pin.
    pub unpin: bool,
    /// Halt (`Some(true)`) or resume (`Some(false)`).
    pub halt: Option<bool>,
    /// Replace the waves (`Some(vec![])` clears them).
    pub waves: Option<Vec<Wave>>,
    /// A JSON file of canaries replacing the policy's.
    pub canaries: Option<PathBuf>,
    /// Gate thresholds.
    pub max_removed_percent: Option<f64>,
    /// Gate thresholds.
    pub min_items: Option<u64>,
    /// Gate thresholds.
    pub latency_budget_ms: Option<f64>,
}

impl PolicyChange {
    /// The policy `current` becomes.
    pub fn apply(&self, current: &FleetPolicy, now: u64) -> anyhow::Result<FleetPolicy> {
        let mut next = current.clone();
        if self.unpin {
            next.pin = None;
        }
        if let Some(pin) = self.pin {
            next.pin = Some(pin);
        }
        if let Some(halt) = self.halt {
            next.halt = halt;
        }
        if let Some(waves) = &self.waves {
            next.waves = waves.clone();
        }
        if let Some(path) = &self.canaries {
            next.gate.canaries = read_canaries(path)?;
        }
        if let Some(percent) = self.max_removed_percent {
            next.gate.max_removed_percent = percent;
        }
        if let Some(min_items) = self.min_items {
            next.gate.min_items = min_items;
        }
        if let Some(budget) = self.latency_budget_ms {
            next.gate.latency_budget_ms = budget;
        }
        next.set_at = now;
        next.check()?;
        Ok(next)
    }
}

/// Where the fleet policy is published, and with which keys.
#[derive(Debug, Clone)]
pub struct FleetStore {
    /// The delta store URL.
    pub store: String,
    /// The root the publisher trusts; `None` trusts the store's first root.
    pub trusted_root: Option<PathBuf>,
    /// Remote timeouts and retries.
    pub remote: RemoteSettings,
}

impl FleetStore {
    /// Opens the store and reads its verified repository.
    pub(crate) async fn read(&self) -> anyhow::Result<(DeltaStore, RepoState)> {
        let store = DeltaStore::open(&self.store, &self.remote).await?;
        let trusted_root = match &self.trusted_root {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("read trusted root {}", path.display()))?,
            ),
            None => None,
        };
        let state = RepoState::read(&store, trusted_root.as_deref()).await?;
        if state.current.is_none() {
            bail!(
                "{} holds no published metadata: create the repository first with `deltacache repo init`",
                store.describe()
            );
        }
        Ok((store, state))
    }
}

/// The fleet policy the verified repository names, if any; and the seqs it names.
pub async fn read_published(
    store: &DeltaStore,
    state: &RepoState,
) -> anyhow::Result<(Option<FleetPolicy>, Vec<u64>)> {
    let targets = published_targets(state);
    let mut seqs: Vec<u64> = Vec::new();
    for delta in delta_targets(&targets)? {
        if seqs.is_empty() {
            seqs.push(delta.meta.parent_seq);
        }
        seqs.push(delta.meta.seq);
    }
    let Some(target) = targets.iter().find(|t| t.name == FLEET_TARGET) else {
        return Ok((None, seqs));
    };
    if target.length > MAX_FLEET_BYTES {
        bail!(
            "{FLEET_TARGET} in {} is {} bytes, more than {MAX_FLEET_BYTES}",
            store.describe(),
            target.length
        );
    }
    let bytes = read_listed(store, FLEET_TARGET, &target.sha256, target.length).await?;
    Ok((Some(FleetPolicy::parse(&bytes)?), seqs))
}

/// `fleet show`: the policy the repository names (the defaults when none).
pub async fn show(at: &FleetStore) -> anyhow::Result<(Option<FleetPolicy>, Vec<u64>)> {
    let (store, state) = at.read().await?;
    read_published(&store, &state).await
}

/// `fleet set`: publishes the policy `change` makes of the current one, signed with `keys`
/// (the targets key and the online key, as for `publish-delta`). A pin must name a seq the
/// repository holds (a delta's, or the one its first delta follows). Returns the new
/// policy.
pub async fn set(
    at: &FleetStore,
    keys: &[PathBuf],
    change: &PolicyChange,
    expires_in: Duration,
) -> anyhow::Result<FleetPolicy> {
    let (signers, key_ids) = load_signers(keys)?;
    let (store, state) = at.read().await?;
    state.check_authorised(&key_ids, &[Role::Targets, Role::Snapshot, Role::Timestamp])?;
    let (current, seqs) = read_published(&store, &state).await?;
    let next = change.apply(&current.unwrap_or_default(), crate::clock::now_secs())?;
    if let Some(pin) = next.pin
        && !seqs.contains(&pin)
    {
        bail!(
            "--pin {pin}: {} names no delta of seq {pin} (it holds seqs {}); pin a published seq",
            store.describe(),
            describe_seqs(&seqs)
        );
    }
    let bytes = serde_json::to_vec_pretty(&next)?;
    let target = NewTarget {
        name: FLEET_TARGET.to_owned(),
        bytes,
        custom: Default::default(),
    };
    let expiries = Expiries {
        timestamp: expires_in,
        ..Expiries::default()
    };
    tuf::repo::publish(&store, &state, &signers, vec![target], expiries).await?;
    Ok(next)
}

fn describe_seqs(seqs: &[u64]) -> String {
    match (seqs.first(), seqs.last()) {
        (Some(first), Some(last)) => format!("{first}..={last}"),
        _ => "none".into(),
    }
}

impl FleetPolicy {
    /// One paragraph saying what the policy does, for the operator.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        lines.push(match (self.pin, self.halt) {
            (Some(pin), _) => format!("pinned: every instance serves seq {pin}"),
            (None, true) => "halted: instances apply nothing newer than what they serve".into(),
            (None, false) => "following: instances take each new delta".into(),
        });
        if self.waves.is_empty() {
            lines.push("waves: none (every instance at once)".into());
        } else {
            let waves: Vec<String> = self
                .waves
                .iter()
                .map(|w| {
                    format!(
                        "{}% after {}",
                        w.percent,
                        humantime::format_duration(Duration::from_secs(w.after_seconds))
                    )
                })
                .collect();
            lines.push(format!("waves: {}", waves.join(", ")));
        }
        lines.push(format!(
            "gate: at least {} items, at most {}% removed per swap, median search within {} ms, {} canaries",
            self.gate.min_items,
            self.gate.max_removed_percent,
            self.gate.latency_budget_ms,
            self.gate.canaries.len()
        ));
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_release_by_seed_and_time() {
        let policy = FleetPolicy {
            waves: vec![
                Wave {
                    after_seconds: 3600,
                    percent: 1,
                },
                Wave {
                    after_seconds: 4 * 3600,
                    percent: 5,
                },
                Wave {
                    after_seconds: 24 * 3600,
                    percent: 100,
                },
            ],
            ..Default::default()
        };
        // 1% of 2048 seeds is 20: seeds 0..20 are the first wave.
        assert_eq!(policy.delay_for(0), (Duration::from_secs(3600), 1));
        assert_eq!(policy.delay_for(19), (Duration::from_secs(3600), 1));
        assert_eq!(policy.delay_for(20), (Duration::from_secs(4 * 3600), 2));
        assert_eq!(policy.delay_for(2047), (Duration::from_secs(24 * 3600), 3));
        assert!(!policy.released(0, 1000, 1000 + 3599));
        assert!(policy.released(0, 1000, 1000 + 3600));
        assert!(!policy.released(100, 1000, 1000 + 3600));
        assert!(FleetPolicy::default().released(2047, 1000, 1000));
        let bad = FleetPolicy {
            waves: vec![
                Wave {
                    after_seconds: 10,
                    percent: 50,
                },
                Wave {
                    after_seconds: 5,
                    percent: 60,
                },
            ],
            ..Default::default()
        };
        assert!(bad.check().is_err());
        assert_eq!(
            parse_wave("4h=5%").unwrap(),
            Wave {
                after_seconds: 4 * 3600,
                percent: 5
            }
        );
    }
}
