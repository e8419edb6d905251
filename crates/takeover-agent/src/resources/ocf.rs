//! Placeholder until the ocf resource lands: every operation fails.

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};
use std::future::Future;
use std::pin::Pin;

/// An OCF resource agent, e.g. provider "heartbeat", agent "IPaddr2".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcfSpec {
    pub provider: String,
    pub agent: String,
    /// OCF_RESKEY_<name>=<value> parameters.
    pub params: Vec<(String, String)>,
}

pub struct Ocf {
    spec: OcfSpec,
}

impl Ocf {
    pub fn new(spec: OcfSpec) -> Self {
        Ocf { spec }
    }
}

impl Resource for Ocf {
    fn start<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed(format!("ocf resources are not built yet: {:?}", self.spec)) })
    }
    fn stop<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("ocf resources are not built yet".into()) })
    }
    fn monitor<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("ocf resources are not built yet".into()) })
    }
    fn check<'a>(&'a mut self, _ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(async move { PlanCheck { ok: false, notes: vec!["ocf resources are not built yet".into()] } })
    }
}
