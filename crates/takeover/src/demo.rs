//! `takeover demo`.

use std::path::PathBuf;
use std::process::ExitCode;

pub async fn run(_dir: Option<PathBuf>, _keep: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
