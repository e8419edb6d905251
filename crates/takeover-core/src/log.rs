//! The handover journal's records and the metadata the core keeps about a log.
//!
//! The core never holds the whole journal: the shell stores records, the core holds a
//! [`LogMeta`] — the last index and the table of where each epoch begins — which is all
//! the journal rules need: assigning `(epoch, index)` to appends, finding the last common
//! record of two logs when an SL rejoins, and deciding what a rejoining SL must cut.
//!
//! Log matching: records of one epoch are written by the one node that created the epoch,
//! at consecutive indices, and an SL only ever stores a prefix of its active's log (it cuts
//! its own log to the common prefix first). So `(epoch, index)` names one record
//! cluster-wide, and two logs that share a record share every record before it.

use crate::types::Epoch;

/// One journal record: the handover information of F0.1.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    pub epoch: Epoch,
    /// Position in the log, from 1.
    pub index: u64,
    /// CRC-32 (IEEE) over epoch, index and payload, from [`record_checksum`].
    pub checksum: u32,
    pub payload: Vec<u8>,
}

impl Record {
    /// A record with its checksum computed.
    pub fn new(epoch: Epoch, index: u64, payload: Vec<u8>) -> Record {
        let checksum = record_checksum(epoch, index, &payload);
        Record { epoch, index, checksum, payload }
    }

    /// Whether the stored checksum matches epoch, index and payload.
    pub fn verify(&self) -> bool {
        self.checksum == record_checksum(self.epoch, self.index, &self.payload)
    }
}

/// The checksum of a record: CRC-32 (IEEE) over the epoch, the index and the payload.
pub fn record_checksum(epoch: Epoch, index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&epoch.counter.to_le_bytes());
    hasher.update(&epoch.node.to_le_bytes());
    hasher.update(&[epoch.forced as u8]);
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Where the records of one epoch begin in a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EpochStart {
    pub epoch: Epoch,
    pub first_index: u64,
}

/// What the core knows of a log: its last index and where each epoch's records begin.
/// Only epochs with at least one record appear in `epochs`, in log order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct LogMeta {
    epochs: Vec<EpochStart>,
    last_index: u64,
}

/// Why a rejoining SL cut part of its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiscardReason {
    /// The records were written by an active that failed before its SL had them, so they
    /// were never acknowledged; the cluster continued without them.
    Unreplicated,
    /// A force start on the peer continued from an older state; these records may have
    /// been acknowledged and are counted apart from lost records (F0.6).
    ForceStart,
}

impl LogMeta {
    /// Metadata of an empty log.
    pub fn empty() -> LogMeta {
        LogMeta::default()
    }

    /// Builds the metadata from records in log order, as the shell finds them on disk.
    /// Returns `None` if the indices are not 1, 2, 3, … or epochs go backwards.
    pub fn from_records<'a>(records: impl IntoIterator<Item = (Epoch, u64)> + 'a) -> Option<LogMeta> {
        let mut meta = LogMeta::empty();
        for (epoch, index) in records {
            if index != meta.last_index + 1 {
                return None;
            }
            if let Some(last) = meta.epochs.last()
                && epoch < last.epoch
            {
                return None;
            }
            meta.push(epoch, 1);
        }
        Some(meta)
    }

    /// Rebuilds metadata received from a peer. Returns `None` unless the epochs are in
    /// increasing order, each begins after the previous one, and the last begins at or
    /// before `last_index` (so every epoch in the table holds at least one record).
    pub fn from_parts(epochs: Vec<EpochStart>, last_index: u64) -> Option<LogMeta> {
        let mut previous: Option<EpochStart> = None;
        for start in &epochs {
            let ordered = match previous {
                None => start.first_index == 1,
                Some(prev) => prev.epoch < start.epoch && prev.first_index < start.first_index,
            };
            if !ordered || start.first_index > last_index {
                return None;
            }
            previous = Some(*start);
        }
        if epochs.is_empty() && last_index != 0 {
            return None;
        }
        Some(LogMeta { epochs, last_index })
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn epochs(&self) -> &[EpochStart] {
        &self.epochs
    }

    /// The epoch of the last record, if any.
    pub fn last_epoch(&self) -> Option<Epoch> {
        self.epochs.last().map(|it| it.epoch)
    }

    /// The epoch of the record at `index`, `None` for 0 or past the end.
    pub fn epoch_at(&self, index: u64) -> Option<Epoch> {
        if index == 0 || index > self.last_index {
            return None;
        }
        let pos = self.epochs.partition_point(|it| it.first_index <= index);
        Some(self.epochs[pos - 1].epoch)
    }

    /// The last index of the records of the epoch at table position `pos`.
    fn end_of(&self, pos: usize) -> u64 {
        match self.epochs.get(pos + 1) {
            Some(next) => next.first_index - 1,
            None => self.last_index,
        }
    }

    /// Records `n` new records of `epoch` at the end. `epoch` must not be older than the
    /// last record's epoch.
    pub fn push(&mut self, epoch: Epoch, n: u64) {
        if n == 0 {
            return;
        }
        match self.epochs.last() {
            Some(last) if last.epoch == epoch => {}
            _ => self.epochs.push(EpochStart { epoch, first_index: self.last_index + 1 }),
        }
        self.last_index += n;
    }

    /// Forgets every record after `keep_upto`.
    pub fn truncate(&mut self, keep_upto: u64) {
        if keep_upto >= self.last_index {
            return;
        }
        self.epochs.retain(|it| it.first_index <= keep_upto);
        self.last_index = keep_upto;
    }

    /// The index of the last record both logs hold: they agree on every record up to it
    /// and on none after it. Walks both epoch tables from the start, so it stays right
    /// even for logs that broke log matching (it then stops at the first disagreement).
    pub fn common_prefix(&self, other: &LogMeta) -> u64 {
        let mut common = 0;
        for (pos, (mine, theirs)) in self.epochs.iter().zip(other.epochs.iter()).enumerate() {
            if mine != theirs {
                break;
            }
            let (my_end, their_end) = (self.end_of(pos), other.end_of(pos));
            common = my_end.min(their_end);
            if my_end != their_end {
                break;
            }
        }
        common
    }

    /// Whether some forced epoch of this log began after `index`: then the records another
    /// log holds past `index` were abandoned by a force start.
    pub fn forced_after(&self, index: u64) -> bool {
        self.epochs.iter().any(|it| it.epoch.forced && it.first_index > index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ep(counter: u64, node: u16) -> Epoch {
        Epoch { counter, node, forced: false }
    }

    fn meta(runs: &[(Epoch, u64)]) -> LogMeta {
        let mut m = LogMeta::empty();
        for &(e, n) in runs {
            m.push(e, n);
        }
        m
    }

    #[test]
    fn record_checksum_detects_any_change() {
        let r = Record::new(ep(3, 1), 7, b"abc".to_vec());
        assert!(r.verify());
        let mut changed = r.clone();
        changed.payload[0] ^= 1;
        assert!(!changed.verify());
        let mut moved = r.clone();
        moved.index = 8;
        assert!(!moved.verify());
        let mut other_epoch = r;
        other_epoch.epoch.counter = 4;
        assert!(!other_epoch.verify());
    }

    #[test]
    fn epoch_at_follows_the_table() {
        let m = meta(&[(ep(1, 0), 3), (ep(2, 1), 2)]);
        assert_eq!(m.epoch_at(0), None);
        assert_eq!(m.epoch_at(1), Some(ep(1, 0)));
        assert_eq!(m.epoch_at(3), Some(ep(1, 0)));
        assert_eq!(m.epoch_at(4), Some(ep(2, 1)));
        assert_eq!(m.epoch_at(5), Some(ep(2, 1)));
        assert_eq!(m.epoch_at(6), None);
    }

    #[test]
    fn rejoin_cut_is_at_last_common_epoch_and_index() {
        // The old active wrote 4 and 5 in epoch 1 before failing; the SL had 1..=3 and
        // continued at 4 in epoch 2.
        let old_active = meta(&[(ep(1, 0), 5)]);
        let new_active = meta(&[(ep(1, 0), 3), (ep(2, 1), 4)]);
        assert_eq!(old_active.common_prefix(&new_active), 3);
        assert_eq!(new_active.common_prefix(&old_active), 3);
    }

    #[test]
    fn rejoin_cut_keeps_everything_when_one_log_extends_the_other() {
        let short = meta(&[(ep(1, 0), 2)]);
        let long = meta(&[(ep(1, 0), 3), (ep(2, 1), 4)]);
        assert_eq!(short.common_prefix(&long), 2);
        assert_eq!(long.common_prefix(&short), 2);
    }

    #[test]
    fn rejoin_cut_of_disjoint_histories_is_zero() {
        let a = meta(&[(ep(1, 0), 2)]);
        let b = meta(&[(ep(1, 1), 2)]);
        assert_eq!(a.common_prefix(&b), 0);
    }

    #[test]
    fn truncate_drops_whole_epochs_after_the_cut() {
        let mut m = meta(&[(ep(1, 0), 3), (ep(2, 1), 2)]);
        m.truncate(2);
        assert_eq!(m, meta(&[(ep(1, 0), 2)]));
        m.truncate(0);
        assert_eq!(m, LogMeta::empty());
    }

    #[test]
    fn from_records_rejects_gaps_and_backward_epochs() {
        assert_eq!(LogMeta::from_records([(ep(1, 0), 1), (ep(1, 0), 2)]), Some(meta(&[(ep(1, 0), 2)])));
        assert_eq!(LogMeta::from_records([(ep(1, 0), 1), (ep(1, 0), 3)]), None);
        assert_eq!(LogMeta::from_records([(ep(2, 0), 1), (ep(1, 0), 2)]), None);
    }

    #[test]
    fn from_parts_accepts_only_well_formed_tables() {
        let good = meta(&[(ep(1, 0), 3), (ep(2, 1), 2)]);
        assert_eq!(LogMeta::from_parts(good.epochs().to_vec(), 5), Some(good.clone()));
        assert_eq!(LogMeta::from_parts(vec![], 0), Some(LogMeta::empty()));
        assert_eq!(LogMeta::from_parts(vec![], 3), None);
        // An epoch that would hold no record, epochs out of order, a gap at the start.
        assert_eq!(LogMeta::from_parts(good.epochs().to_vec(), 3), None);
        let swapped = vec![good.epochs()[1], good.epochs()[0]];
        assert_eq!(LogMeta::from_parts(swapped, 5), None);
        assert_eq!(LogMeta::from_parts(vec![EpochStart { epoch: ep(1, 0), first_index: 2 }], 5), None);
    }

    #[test]
    fn forced_after_names_a_force_start_past_the_cut() {
        let forced = Epoch { counter: 5, node: 1, forced: true };
        let m = meta(&[(ep(1, 0), 3), (forced, 2)]);
        assert!(m.forced_after(3));
        assert!(!m.forced_after(4));
    }

    /// Builds two logs that follow log matching: a shared prefix, then each continues in
    /// epochs of its own.
    fn diverging_logs() -> impl Strategy<Value = (LogMeta, LogMeta, u64)> {
        (
            proptest::collection::vec(1u64..4, 0..4),
            proptest::collection::vec(1u64..4, 0..3),
            proptest::collection::vec(1u64..4, 0..3),
            0u64..3,
        )
            .prop_map(|(shared, a_runs, b_runs, partial)| {
                let mut a = LogMeta::empty();
                let mut counter = 0;
                for n in shared {
                    counter += 1;
                    a.push(ep(counter, 0), n);
                }
                // The shared prefix may end in the middle of an epoch that both extend.
                let mut b = a.clone();
                if let Some(last) = a.last_epoch() {
                    a.push(last, partial);
                }
                let common = b.last_index();
                for n in a_runs {
                    counter += 1;
                    a.push(ep(counter, 1), n);
                }
                for n in b_runs {
                    counter += 1;
                    b.push(ep(counter, 2), n);
                }
                (a, b, common)
            })
    }

    proptest! {
        #[test]
        fn rejoin_cut_finds_the_shared_prefix((a, b, common) in diverging_logs()) {
            prop_assert_eq!(a.common_prefix(&b), common);
            prop_assert_eq!(b.common_prefix(&a), common);
            for i in 1..=common {
                prop_assert_eq!(a.epoch_at(i), b.epoch_at(i));
            }
        }

        #[test]
        fn truncate_then_push_is_a_prefix((a, _b, common) in diverging_logs()) {
            let mut cut = a.clone();
            cut.truncate(common);
            prop_assert_eq!(cut.last_index(), common.min(a.last_index()));
            prop_assert_eq!(cut.common_prefix(&a), cut.last_index());
        }
    }
}
