//! Trust through The Update Framework (spec 1.0, consistent snapshots), read and written
//! with the `tough` crate. The delta store is a TUF repository:
//!
//! ```text
//! metadata/N.root.json        every root version, kept forever (N+1 is signed by a
//!                             threshold of N's root keys and of its own)
//! metadata/timestamp.json     the newest snapshot (online key; its expiry bounds freshness)
//! metadata/N.snapshot.json    the newest targets version (online key)
//! metadata/N.targets.json     every target by name, length, sha256 and custom metadata
//!                             (targets key: the publisher's)
//! targets/<sha256>.<name>     the targets' bytes: deltas, named `000000000042.delta`
//! ```
//!
//! Instances bake `root.json` and trust nothing else; a newer root, signed by enough keys of
//! the old one, rotates any key without a new image. Verification is tough's; this module
//! only moves bytes ([`transport`]), builds and signs metadata ([`root`], [`repo`]), and
//! keeps the client's trusted metadata ([`client`]).

pub mod ceremony;
pub mod client;
pub mod keys;
pub mod repo;
pub mod root;
pub mod transport;

use std::time::Duration;

/// The TUF spec version written (tough's editor refuses any other).
pub const SPEC_VERSION: &str = "1.0.0";

/// The store folder holding metadata.
pub const METADATA_DIR: &str = "metadata";
/// The store folder holding targets.
pub const TARGETS_DIR: &str = "targets";

/// How long each role's metadata stays valid, and the longest accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Root: offline keys, rotated rarely.
    Root,
    /// Targets: names every delta.
    Targets,
    /// Snapshot: names the targets version.
    Snapshot,
    /// Timestamp: names the snapshot; its expiry is the freshness bound of every instance.
    Timestamp,
}

impl Role {
    /// The role's name in TUF metadata and in flags.
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    /// The default validity of newly signed metadata of this role.
    pub fn default_expiry(self) -> Duration {
        const DAY: u64 = 24 * 3600;
        Duration::from_secs(match self {
            Role::Root => 365 * DAY,
            Role::Targets => 365 * DAY,
            Role::Snapshot => 30 * DAY,
            Role::Timestamp => 7 * DAY,
        })
    }

    /// The longest validity accepted for this role: longer makes a frozen or replayed
    /// repository go unnoticed for longer.
    pub fn max_expiry(self) -> Duration {
        const DAY: u64 = 24 * 3600;
        Duration::from_secs(match self {
            Role::Root => 5 * 365 * DAY,
            Role::Targets => 3 * 365 * DAY,
            Role::Snapshot => 365 * DAY,
            Role::Timestamp => 30 * DAY,
        })
    }

    /// `now + validity`, refusing a validity of zero or above [`Role::max_expiry`] by name.
    pub fn expires_in(self, validity: Duration) -> anyhow::Result<jiff::Timestamp> {
        anyhow::ensure!(
            !validity.is_zero() && validity <= self.max_expiry(),
            "{} metadata expiry {} is out of range: give between 1s and {}",
            self.name(),
            short_duration(validity),
            short_duration(self.max_expiry())
        );
        let now = jiff::Timestamp::now().as_second();
        jiff::Timestamp::from_second(now + validity.as_secs() as i64)
            .map_err(|e| anyhow::anyhow!("{} expiry: {e}", self.name()))
    }
}

/// A duration as an operator writes it: `30d`, `12h`, `90s`.
fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s => format!("{s}s"),
    }
}

/// Metadata expiries for a publish or refresh, one per role it signs.
#[derive(Debug, Clone, Copy)]
pub struct Expiries {
    /// targets.json validity.
    pub targets: Duration,
    /// snapshot.json validity.
    pub snapshot: Duration,
    /// timestamp.json validity.
    pub timestamp: Duration,
}

impl Default for Expiries {
    fn default() -> Self {
        Expiries {
            targets: Role::Targets.default_expiry(),
            snapshot: Role::Snapshot.default_expiry(),
            timestamp: Role::Timestamp.default_expiry(),
        }
    }
}

/// Whole seconds: python-tuf parses only `%Y-%m-%dT%H:%M:%SZ`.
pub fn whole_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}
