//! Placeholder until the disk resource lands: every operation fails.

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};
use std::future::Future;
use std::pin::Pin;

/// Exclusive ownership of a shared block device or image file (F2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The device as this node sees it (e.g. /dev/disk/by-id/..., /dev/loop3).
    pub device: std::path::PathBuf,
}

pub struct Disk {
    spec: DiskSpec,
}

impl Disk {
    pub fn new(spec: DiskSpec) -> Self {
        Disk { spec }
    }
}

impl Resource for Disk {
    fn start<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed(format!("disk resources are not built yet: {:?}", self.spec)) })
    }
    fn stop<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("disk resources are not built yet".into()) })
    }
    fn monitor<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("disk resources are not built yet".into()) })
    }
    fn check<'a>(&'a mut self, _ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(async move { PlanCheck { ok: false, notes: vec!["disk resources are not built yet".into()] } })
    }
}
