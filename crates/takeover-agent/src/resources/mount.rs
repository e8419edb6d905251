//! Placeholder until the mount resource lands: every operation fails.

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};
use std::future::Future;
use std::pin::Pin;

/// A filesystem, checked then mounted (F1.3, F2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub device: std::path::PathBuf,
    pub mountpoint: std::path::PathBuf,
    pub fstype: String,
    /// Mount options (`-o`), comma-separated; empty: none.
    pub options: String,
    /// Check (and replay the journal of) the filesystem before mounting.
    pub fsck: bool,
}

pub struct Mount {
    spec: MountSpec,
}

impl Mount {
    pub fn new(spec: MountSpec) -> Self {
        Mount { spec }
    }
}

impl Resource for Mount {
    fn start<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed(format!("mount resources are not built yet: {:?}", self.spec)) })
    }
    fn stop<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("mount resources are not built yet".into()) })
    }
    fn monitor<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("mount resources are not built yet".into()) })
    }
    fn check<'a>(&'a mut self, _ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(async move { PlanCheck { ok: false, notes: vec!["mount resources are not built yet".into()] } })
    }
}
