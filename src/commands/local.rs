//! The subcommands that need no bucket: `key` (where a path is stored), `serve` (the
//! embedded S3 server), `stats` (a running mount's counters).

use super::block_on;
use crate::error::{ToolError, ToolResult};
use crate::invalid::Invalid;
use crate::layout::{Layout, RelPath};

pub(super) fn run_key(a: crate::cli::KeyArgs) -> ToolResult<()> {
    let layout = Layout::new(&a.root, a.prefix_count)?;
    let path = RelPath::parse(&a.path)?;
    if path.is_root() {
        return Err(Invalid::new(&a.path, "the mount root has no key").into());
    }
    let key = if a.path.ends_with('/') {
        layout.dir_marker_key(&path)
    } else {
        layout.file_key(&path)
    };
    println!("{}", key?);
    Ok(())
}

pub(super) fn run_serve(a: crate::cli::ServeArgs) -> ToolResult<()> {
    block_on(async {
        let mut cfg = crate::server::ServerConfig::local(a.data_dir.clone());
        cfg.addr = a.addr;
        cfg.buckets = a.bucket.clone();
        cfg.emulator = a.emulator();
        cfg.credentials = a.credentials();
        cfg.latency = std::time::Duration::from_millis(a.latency_ms);
        cfg.connection_rate = a.connection_mibps.map(|m| m * 1024.0 * 1024.0);
        cfg.copy_object_max = a.copy_object_max_mib << 20;
        cfg.fault_plan = a.fault_plan();
        cfg.policy = a.policy();
        if cfg.fault_plan.is_some() {
            tracing::warn!(rules = ?a.faults, seed = a.fault_seed, "injecting faults (--fault)");
        }
        let srv = crate::server::start(cfg).await.map_err(ToolError::Serve)?;
        if let (Some(addr), Some(emu)) = (a.stats_addr, srv.emulator.clone()) {
            let render: crate::metrics::Render = std::sync::Arc::new(move |path| {
                (path == "/partitions").then(|| ("application/json", emu.snapshot_json()))
            });
            let bound = crate::metrics::serve(addr, render)
                .await
                .map_err(|e| Invalid::new(format!("--stats-addr {addr}"), e.to_string()))?;
            println!("partition counters at http://{bound}/partitions");
        }
        match &srv.credentials_file {
            Some(f) => println!(
                "serving S3 at {} (access key {}; both keys are in {}); Ctrl-C stops",
                srv.endpoint(),
                srv.credentials.access_key,
                f.display()
            ),
            None => println!(
                "serving S3 at {} (access key {}, the secret key you gave); Ctrl-C stops",
                srv.endpoint(),
                srv.credentials.access_key
            ),
        }
        let _ = tokio::signal::ctrl_c().await;
        srv.shutdown().await;
        Ok(())
    })
}

pub(super) fn run_stats(a: crate::cli::StatsArgs) -> ToolResult<()> {
    let text = crate::read_stats(&a.mountpoint).map_err(|source| ToolError::Stats {
        mountpoint: a.mountpoint.clone(),
        source,
    })?;
    print!("{text}");
    Ok(())
}
