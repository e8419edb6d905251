//! The seed's pair-state diagram (its Fig. 2) and the map from model worlds onto it.
//!
//! The seed treats a transition of the pair as one atomic step. Our nodes decide apart,
//! persist before acting and learn of failures late, so one seed transition is several
//! model steps. The abstraction below names the seed state a world is in, such that every
//! model step either keeps the seed state or makes one transition of Fig. 2:
//! - a node that is down, or in X, is X;
//! - an SL is SL while the run it follows is up and active; if that run is gone, it is SM
//!   when its active had confirmed the sync (it is taking over, 4-3/4-4), else X (5-2/5-6);
//!   if that run is up but not (yet) active, it is X (the (X X) decision is under way);
//! - an M is M only while its SL is up and has received Promoted; otherwise SM (the SL
//!   was lost: 4-1/4-2; or the promotion has not reached the SL yet).

use crate::world::World;
use takeover_core::Role;

/// A node's seed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seed {
    X,
    Sl,
    Sm,
    M,
}

use Seed::{M, Sl, Sm, X};

/// Every transition of Fig. 2, by label: (A B) before → (A B) after, A = node 0.
/// (SL SM)→(SL M) is 1-1-2 or 3-1-2 depending on how (SL SM) was entered (same for the
/// mirror), which [`label`] resolves from the world's ghost.
/// The seed states of (node 0, node 1).
pub type Pair = (Seed, Seed);

pub const FIG2: [(&str, Pair, Pair); 22] = [
    ("1-1-1", (X, X), (Sl, Sm)),
    ("1-1-2", (Sl, Sm), (Sl, M)),
    ("1-2-1", (X, X), (Sm, Sl)),
    ("1-2-2", (Sm, Sl), (M, Sl)),
    ("2-1", (X, X), (X, Sm)),
    ("2-2", (X, X), (Sm, X)),
    ("3-1-1", (X, Sm), (Sl, Sm)),
    ("3-1-2", (Sl, Sm), (Sl, M)),
    ("3-2-1", (Sm, X), (Sm, Sl)),
    ("3-2-2", (Sm, Sl), (M, Sl)),
    ("4-1", (Sl, M), (X, Sm)),
    ("4-2", (M, Sl), (Sm, X)),
    ("4-3", (Sl, M), (Sm, X)),
    ("4-4", (M, Sl), (X, Sm)),
    ("5-1", (Sl, M), (X, X)),
    ("5-2", (Sl, Sm), (X, X)),
    ("5-3", (Sl, Sm), (X, Sm)),
    ("5-4", (X, Sm), (X, X)),
    ("5-5", (M, Sl), (X, X)),
    ("5-6", (Sm, Sl), (X, X)),
    ("5-7", (Sm, Sl), (Sm, X)),
    ("5-8", (Sm, X), (X, X)),
];

/// The seed state of node `i`.
pub fn seed_state(w: &World, i: usize) -> Seed {
    let Some(run) = &w.nodes[i].run else { return X };
    let peer = w.nodes[1 - i].run.as_ref();
    match run.core.role() {
        Role::X => X,
        Role::Sm => Sm,
        Role::M => {
            let confirmed_sl = run
                .core
                .followed_by()
                .zip(peer)
                .is_some_and(|(sl, p)| p.inc == sl && p.core.following() == Some((run.inc, true)));
            if confirmed_sl { M } else { Sm }
        }
        Role::Sl => {
            let (master, confirmed) = run.core.following().expect("an SL follows a run");
            match peer {
                Some(p) if p.inc == master => {
                    if p.core.role().is_active() {
                        Sl
                    } else {
                        X
                    }
                }
                _ if confirmed => Sm,
                _ => X,
            }
        }
    }
}

/// The pair's seed state.
pub fn pair(w: &World) -> Pair {
    (seed_state(w, 0), seed_state(w, 1))
}

/// The Fig. 2 label of the move `before → after`, `None` if it is not a transition of
/// Fig. 2. `origin` says how the pair entered (SL SM)/(SM SL): 1 from (X X), 3 otherwise.
pub fn label(before: Pair, after: Pair, origin: u8) -> Option<&'static str> {
    let mut candidates = FIG2.iter().filter(|(_, b, a)| *b == before && *a == after).map(|it| it.0);
    let first = candidates.next()?;
    match candidates.next() {
        None => Some(first),
        // The two labels of the same move differ by their first digit: pick by origin.
        Some(second) => Some(if first.starts_with(char::from(b'0' + origin)) { first } else { second }),
    }
}
