//! The map writer: applies what [`crate::index::MeshIndex`] wants the program's maps to
//! hold, and remembers what it wrote, so each change costs a syscall only when the map
//! must really change. A write that fails is counted and never taken for done: the entry
//! stays wanted and is written again later (a full map above all, where a removal may make
//! room).

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use meshfilter_common::ipcache::RemoteEndpointInfo;

use crate::datapath::Datapath;
use crate::error::DatapathError;

/// One of the program's maps the writer fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKind {
    /// The standalone ipcache.
    Ipcache,
    /// The mesh pod CIDRs.
    MeshCidrs,
}

impl MapKind {
    /// Label value for metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            MapKind::Ipcache => "ipcache",
            MapKind::MeshCidrs => "mesh-cidrs",
        }
    }
}

/// What one map must hold for one prefix now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapChange {
    /// An ipcache entry: the value, or `None` when the entry must go.
    Ipcache {
        /// The prefix.
        prefix: IpNet,
        /// Its wanted value.
        wanted: Option<RemoteEndpointInfo>,
    },
    /// A mesh pod CIDR: its cluster ID, or `None` when it must go.
    MeshCidr {
        /// The prefix.
        prefix: IpNet,
        /// Its wanted cluster ID.
        wanted: Option<u16>,
    },
}

impl MapChange {
    /// The map and prefix changed.
    pub fn slot(&self) -> (MapKind, IpNet) {
        match *self {
            MapChange::Ipcache { prefix, .. } => (MapKind::Ipcache, prefix),
            MapChange::MeshCidr { prefix, .. } => (MapKind::MeshCidrs, prefix),
        }
    }
}

/// Why a write did not land.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WriteFailure {
    /// The map has no room for another entry.
    MapFull,
    /// Any other failure of the map operation.
    Error,
}

impl WriteFailure {
    /// Label value for metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteFailure::MapFull => "map-full",
            WriteFailure::Error => "error",
        }
    }

    fn of(error: &DatapathError) -> WriteFailure {
        match error {
            DatapathError::MapFull { .. } => WriteFailure::MapFull,
            _ => WriteFailure::Error,
        }
    }
}

/// Where the writer writes: the datapath's maps (a stand-in in unit tests).
pub trait MapTarget {
    /// Adds or replaces an ipcache entry.
    fn upsert_ipcache(&self, prefix: IpNet, info: RemoteEndpointInfo) -> Result<(), DatapathError>;
    /// Removes an ipcache entry; a missing one is not an error.
    fn remove_ipcache(&self, prefix: IpNet) -> Result<(), DatapathError>;
    /// Adds or replaces a mesh pod CIDR.
    fn upsert_mesh_cidr(&self, prefix: IpNet, cluster_id: u16) -> Result<(), DatapathError>;
    /// Removes a mesh pod CIDR; a missing one is not an error.
    fn remove_mesh_cidr(&self, prefix: IpNet) -> Result<(), DatapathError>;
}

impl MapTarget for Datapath {
    fn upsert_ipcache(&self, prefix: IpNet, info: RemoteEndpointInfo) -> Result<(), DatapathError> {
        Datapath::upsert_ipcache(self, prefix, info)
    }

    fn remove_ipcache(&self, prefix: IpNet) -> Result<(), DatapathError> {
        Datapath::remove_ipcache(self, prefix)
    }

    fn upsert_mesh_cidr(&self, prefix: IpNet, cluster_id: u16) -> Result<(), DatapathError> {
        Datapath::upsert_mesh_cidr(self, prefix, cluster_id)
    }

    fn remove_mesh_cidr(&self, prefix: IpNet) -> Result<(), DatapathError> {
        Datapath::remove_mesh_cidr(self, prefix)
    }
}

/// What one round of writes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Entries added or changed.
    pub written: usize,
    /// Entries removed.
    pub removed: usize,
    /// Changes that did not land, with why; they stay pending.
    pub failed: Vec<(MapChange, WriteFailure)>,
}

impl WriteReport {
    /// Why the change of `slot` failed in this round, if it did.
    pub fn failure_of(&self, slot: (MapKind, IpNet)) -> Option<WriteFailure> {
        self.failed
            .iter()
            .find(|(change, _)| change.slot() == slot)
            .map(|(_, failure)| *failure)
    }
}

/// The writer. See the module documentation.
#[derive(Debug, Default)]
pub struct MapWriter {
    ipcache: HashMap<IpNet, RemoteEndpointInfo>,
    mesh_cidrs: HashMap<IpNet, u16>,
    /// Changes that failed, by slot: the latest wanted value of each.
    pending: HashMap<(MapKind, IpNet), MapChange>,
    /// Failed map operations, by map and reason.
    errors: BTreeMap<(MapKind, WriteFailure), u64>,
}

impl MapWriter {
    /// A writer that believes the maps empty.
    pub fn new() -> MapWriter {
        MapWriter::default()
    }

    /// Applies `changes` to `target`: writes what differs from what was written, counts
    /// and keeps what fails. When something was removed (room made) the pending changes
    /// are tried again in the same round.
    pub fn apply(
        &mut self,
        changes: impl IntoIterator<Item = MapChange>,
        target: &dyn MapTarget,
    ) -> WriteReport {
        let mut report = WriteReport::default();
        for change in changes {
            self.apply_one(change, target, &mut report);
        }
        if report.removed > 0 && !self.pending.is_empty() {
            let retried = self.retry(target);
            report.written += retried.written;
            report.removed += retried.removed;
            // A retry's failure replaces the first one of the same slot.
            report
                .failed
                .retain(|(c, _)| retried.failure_of(c.slot()).is_none());
            report.failed.extend(retried.failed);
        }
        report
    }

    /// Tries every pending change once more.
    pub fn retry(&mut self, target: &dyn MapTarget) -> WriteReport {
        let mut report = WriteReport::default();
        let pending: Vec<MapChange> = self.pending.values().copied().collect();
        for change in pending {
            self.apply_one(change, target, &mut report);
        }
        report
    }

    /// Changes waiting for a retry.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Failed map operations so far, by map and reason.
    pub fn errors(&self) -> &BTreeMap<(MapKind, WriteFailure), u64> {
        &self.errors
    }

    /// The ipcache entry written for `prefix`.
    pub fn ipcache_entry(&self, prefix: IpNet) -> Option<&RemoteEndpointInfo> {
        self.ipcache.get(&prefix)
    }

    /// Entries written: `(ipcache, mesh CIDRs)`.
    pub fn written(&self) -> (usize, usize) {
        (self.ipcache.len(), self.mesh_cidrs.len())
    }

    fn apply_one(&mut self, change: MapChange, target: &dyn MapTarget, report: &mut WriteReport) {
        let result = match change {
            MapChange::Ipcache { prefix, wanted } => sync_slot(
                &mut self.ipcache,
                prefix,
                wanted,
                |v| target.upsert_ipcache(prefix, v),
                || target.remove_ipcache(prefix),
            ),
            MapChange::MeshCidr { prefix, wanted } => sync_slot(
                &mut self.mesh_cidrs,
                prefix,
                wanted,
                |v| target.upsert_mesh_cidr(prefix, v),
                || target.remove_mesh_cidr(prefix),
            ),
        };
        let slot = change.slot();
        match result {
            Ok(changed) => {
                self.pending.remove(&slot);
                let removal = matches!(
                    change,
                    MapChange::Ipcache { wanted: None, .. }
                        | MapChange::MeshCidr { wanted: None, .. }
                );
                match (changed, removal) {
                    (true, true) => report.removed += 1,
                    (true, false) => report.written += 1,
                    (false, _) => {}
                }
            }
            Err(error) => {
                let failure = WriteFailure::of(&error);
                *self.errors.entry((slot.0, failure)).or_default() += 1;
                tracing::warn!(map = slot.0.as_str(), prefix = %slot.1, %error, "map write failed; kept for a retry");
                self.pending.insert(slot, change);
                report.failed.push((change, failure));
            }
        }
    }
}

/// Brings one map slot to `wanted`, given what `written` says it holds: upserts a
/// different value, removes one no longer wanted, does nothing otherwise. `written`
/// follows only what succeeded. Whether a syscall changed the map.
fn sync_slot<V: Copy + PartialEq>(
    written: &mut HashMap<IpNet, V>,
    prefix: IpNet,
    wanted: Option<V>,
    upsert: impl FnOnce(V) -> Result<(), DatapathError>,
    remove: impl FnOnce() -> Result<(), DatapathError>,
) -> Result<bool, DatapathError> {
    match (wanted, written.get(&prefix)) {
        (Some(w), Some(held)) if w == *held => Ok(false),
        (Some(w), _) => upsert(w).map(|()| {
            written.insert(prefix, w);
            true
        }),
        (None, Some(_)) => remove().map(|()| {
            written.remove(&prefix);
            true
        }),
        (None, None) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::*;
    use crate::index::endpoint_info;

    /// Maps of a fixed size that record every operation.
    #[derive(Default)]
    struct FakeMaps {
        capacity: usize,
        ipcache: RefCell<BTreeMap<IpNet, RemoteEndpointInfo>>,
        mesh: RefCell<BTreeMap<IpNet, u16>>,
        ops: RefCell<usize>,
        broken: RefCell<BTreeSet<IpNet>>,
    }

    impl FakeMaps {
        fn with_capacity(capacity: usize) -> FakeMaps {
            FakeMaps {
                capacity,
                ..Default::default()
            }
        }

        fn op(&self, prefix: IpNet) -> Result<(), DatapathError> {
            *self.ops.borrow_mut() += 1;
            if self.broken.borrow().contains(&prefix) {
                return Err(DatapathError::ReadOnlyIpcache);
            }
            Ok(())
        }

        /// An insert into `map` as the kernel does it: no new key once full.
        fn insert<V>(
            &self,
            map: &RefCell<BTreeMap<IpNet, V>>,
            name: &'static str,
            prefix: IpNet,
            value: V,
        ) -> Result<(), DatapathError> {
            self.op(prefix)?;
            let mut map = map.borrow_mut();
            if !map.contains_key(&prefix) && map.len() >= self.capacity {
                return Err(DatapathError::MapFull { map: name });
            }
            map.insert(prefix, value);
            Ok(())
        }
    }

    impl MapTarget for FakeMaps {
        fn upsert_ipcache(
            &self,
            prefix: IpNet,
            info: RemoteEndpointInfo,
        ) -> Result<(), DatapathError> {
            self.insert(&self.ipcache, "IPCACHE", prefix, info)
        }

        fn remove_ipcache(&self, prefix: IpNet) -> Result<(), DatapathError> {
            self.op(prefix)?;
            self.ipcache.borrow_mut().remove(&prefix);
            Ok(())
        }

        fn upsert_mesh_cidr(&self, prefix: IpNet, cluster_id: u16) -> Result<(), DatapathError> {
            self.insert(&self.mesh, "MESH_CIDRS", prefix, cluster_id)
        }

        fn remove_mesh_cidr(&self, prefix: IpNet) -> Result<(), DatapathError> {
            self.op(prefix)?;
            self.mesh.borrow_mut().remove(&prefix);
            Ok(())
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn host(i: u8, identity: u32) -> MapChange {
        MapChange::Ipcache {
            prefix: net(&format!("198.51.100.{i}/32")),
            wanted: Some(endpoint_info(identity, None, 0)),
        }
    }

    #[test]
    fn writes_only_differences() {
        let maps = FakeMaps::with_capacity(10);
        let mut writer = MapWriter::new();
        let report = writer.apply([host(1, 70_000), host(2, 70_001)], &maps);
        assert_eq!((report.written, report.removed), (2, 0));
        assert_eq!(*maps.ops.borrow(), 2);
        // The same wanted values again: no syscall at all.
        let report = writer.apply([host(1, 70_000), host(2, 70_001)], &maps);
        assert_eq!(report, WriteReport::default());
        assert_eq!(*maps.ops.borrow(), 2);
        // A changed identity is written, a vanished entry removed, an entry never
        // written and not wanted costs nothing.
        let report = writer.apply(
            [
                host(1, 70_005),
                MapChange::Ipcache {
                    prefix: net("198.51.100.2/32"),
                    wanted: None,
                },
                MapChange::Ipcache {
                    prefix: net("198.51.100.3/32"),
                    wanted: None,
                },
            ],
            &maps,
        );
        assert_eq!((report.written, report.removed), (1, 1));
        assert_eq!(*maps.ops.borrow(), 4);
        let held: Vec<u32> = maps
            .ipcache
            .borrow()
            .values()
            .map(|v| v.sec_identity)
            .collect();
        assert_eq!(held, [70_005]);
        assert!(writer.errors().is_empty());
    }

    #[test]
    fn a_full_map_is_a_counted_failure_retried_when_room_is_made() {
        let maps = FakeMaps::with_capacity(2);
        let mut writer = MapWriter::new();
        let report = writer.apply([host(1, 1), host(2, 2), host(3, 3)], &maps);
        assert_eq!(report.written, 2);
        assert_eq!(report.failed, [(host(3, 3), WriteFailure::MapFull)]);
        assert_eq!(writer.pending(), 1);
        assert_eq!(
            writer.ipcache_entry(net("198.51.100.3/32")),
            None,
            "not taken for done"
        );
        assert_eq!(
            writer
                .errors()
                .get(&(MapKind::Ipcache, WriteFailure::MapFull)),
            Some(&1)
        );
        // Still full: a retry fails again and is counted again.
        let report = writer.retry(&maps);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(
            writer
                .errors()
                .get(&(MapKind::Ipcache, WriteFailure::MapFull)),
            Some(&2)
        );
        // A removal makes room: the pending entry lands in the same round.
        let report = writer.apply(
            [MapChange::Ipcache {
                prefix: net("198.51.100.1/32"),
                wanted: None,
            }],
            &maps,
        );
        assert_eq!((report.removed, report.written), (1, 1));
        assert!(report.failed.is_empty());
        assert_eq!(writer.pending(), 0);
        assert!(maps.ipcache.borrow().contains_key(&net("198.51.100.3/32")));
    }

    #[test]
    fn a_pending_change_follows_the_latest_wanted_value() {
        let maps = FakeMaps::with_capacity(1);
        let mut writer = MapWriter::new();
        writer.apply([host(1, 1), host(2, 2)], &maps);
        assert_eq!(writer.pending(), 1);
        // No longer wanted before it ever landed: nothing to retry.
        writer.apply(
            [MapChange::Ipcache {
                prefix: net("198.51.100.2/32"),
                wanted: None,
            }],
            &maps,
        );
        assert_eq!(writer.pending(), 0);
    }

    #[test]
    fn other_failures_are_counted_apart_and_keep_what_the_map_holds() {
        let maps = FakeMaps::with_capacity(10);
        let mut writer = MapWriter::new();
        writer.apply(
            [MapChange::MeshCidr {
                prefix: net("198.51.100.0/24"),
                wanted: Some(2),
            }],
            &maps,
        );
        maps.broken.borrow_mut().insert(net("198.51.100.0/24"));
        let report = writer.apply(
            [MapChange::MeshCidr {
                prefix: net("198.51.100.0/24"),
                wanted: None,
            }],
            &maps,
        );
        assert_eq!(report.failed.len(), 1);
        assert_eq!(
            writer
                .errors()
                .get(&(MapKind::MeshCidrs, WriteFailure::Error)),
            Some(&1)
        );
        assert_eq!(writer.written(), (0, 1), "the CIDR is still in the map");
        maps.broken.borrow_mut().clear();
        let report = writer.retry(&maps);
        assert_eq!(report.removed, 1);
        assert_eq!(writer.written(), (0, 0));
    }
}
