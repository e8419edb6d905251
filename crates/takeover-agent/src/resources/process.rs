//! Placeholder until the process resource lands: every operation fails.

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};
use std::future::Future;
use std::pin::Pin;

/// The application, in its own cgroup (F4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where its stdout and stderr go (appended); `None`: the node's state dir.
    pub log: Option<std::path::PathBuf>,
}

pub struct Process {
    spec: ProcessSpec,
}

impl Process {
    pub fn new(spec: ProcessSpec) -> Self {
        Process { spec }
    }
}

impl Resource for Process {
    fn start<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed(format!("process resources are not built yet: {:?}", self.spec)) })
    }
    fn stop<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("process resources are not built yet".into()) })
    }
    fn monitor<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("process resources are not built yet".into()) })
    }
    fn check<'a>(&'a mut self, _ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(async move { PlanCheck { ok: false, notes: vec!["process resources are not built yet".into()] } })
    }
}
