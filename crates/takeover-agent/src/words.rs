//! The words for the core's reasons, shared by the agent's events and `takeover
//! simulate`, so that a simulated step reads like the event the agent would record.

use takeover_core::group::{Cause, HandoverReason, WaitReason};

pub fn reason_name(reason: HandoverReason) -> &'static str {
    match reason {
        HandoverReason::Switchover => "switchover",
        HandoverReason::Failback => "failback",
        HandoverReason::StartFailed => "failover after a failed start",
        HandoverReason::ServiceFailed => "failover after a failed resource",
    }
}

pub fn cause_text(cause: Cause, peer: &str) -> String {
    match cause {
        Cause::HigherPriority { own, peer: theirs } => {
            format!("both nodes up: this node's priority {own} beats {peer}'s {theirs}, so it processed last")
        }
        Cause::LowerPriority { own, peer: theirs } => {
            format!("both nodes up: {peer}'s priority {theirs} beats this node's {own}, so {peer} processed last")
        }
        Cause::AloneWithPriority1 => "alone, with priority 1: this node processed last".into(),
        Cause::ForceStart => "force start by the operator".into(),
        Cause::PeerJoinOnly => format!("{peer} was started with --join-only"),
        Cause::PeerActive => format!("{peer} is active: joining it"),
        Cause::Synchronised => "the SL holds every acknowledged record".into(),
        Cause::ActiveLostBeforeSync => {
            format!("{peer} was lost before it confirmed the sync: this node cannot take over")
        }
        Cause::ActiveStopped => format!("{peer} stopped being active"),
        Cause::Takeover => format!("{peer} is known stopped: taking over"),
        Cause::SlaveLost => format!("the SL {peer} is known stopped; acknowledging alone"),
        Cause::YieldToNewerEpoch => format!("{peer} holds a newer epoch"),
        Cause::Handover(reason) => format!("{} between this node and {peer}", reason_name(reason)),
    }
}

pub fn wait_text(reason: WaitReason, group: &str, peer: &str) -> String {
    match reason {
        WaitReason::Undetermined { own } => format!(
            "this node holds priority {own}, so {peer} may have processed last; start {peer}, or run `takeover force-start {group}` here to continue without {peer}'s last records"
        ),
        WaitReason::EqualPriorities { both } => format!(
            "[{both} {both}]: both nodes hold priority {both} (after a force start), so neither can tell which processed last; run `takeover force-start {group}` on the node whose data should win, and start the other with --join-only"
        ),
        WaitReason::JoinOnly => {
            format!("started with --join-only: waiting for {peer} to be active, to rejoin it as SL")
        }
        WaitReason::BothJoinOnly => format!(
            "both nodes were started with --join-only; run `takeover force-start {group}` on the node whose data should win"
        ),
        WaitReason::PeerSettling => format!("{peer} is still settling after this node's restart"),
    }
}
