//! Placeholder until the vip resource lands: every operation fails.

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};
use std::future::Future;
use std::pin::Pin;

/// A virtual IP address (F1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub address: std::net::IpAddr,
    pub prefix_len: u8,
    /// The interface to add it to (e.g. "eth0").
    pub interface: String,
    /// Gratuitous ARP / unsolicited neighbour advertisements sent after adding it.
    pub announce_count: u32,
    pub announce_interval: std::time::Duration,
}

pub struct Vip {
    spec: VipSpec,
}

impl Vip {
    pub fn new(spec: VipSpec) -> Self {
        Vip { spec }
    }
}

impl Resource for Vip {
    fn start<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed(format!("vip resources are not built yet: {:?}", self.spec)) })
    }
    fn stop<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("vip resources are not built yet".into()) })
    }
    fn monitor<'a>(&'a mut self, _ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move { OpOutcome::Failed("vip resources are not built yet".into()) })
    }
    fn check<'a>(&'a mut self, _ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(async move { PlanCheck { ok: false, notes: vec!["vip resources are not built yet".into()] } })
    }
}
