//! `meshfilter node`: the per-node agent. Loads and attaches the miss classifier, keeps
//! its maps in step with the local cache, resolves missed addresses and installs them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use meshfilter_admin::{Admin, ServerLimits};
use meshfilter_node::{
    AgentConfig, Datapath, DatapathConfig, IpcacheMode, MeshView, NodeAgent, NodeMetrics,
    Resolvers, StaticCidr,
};

use crate::cli::NodeArgs;
use crate::node_config::{NodeConfig, NodeMode};

pub fn run(args: &NodeArgs) -> anyhow::Result<ExitCode> {
    let config = NodeConfig::load(&args.config)?;
    if args.check {
        return super::serve::checked(&config.filters, config.cluster.locality(), "node");
    }
    super::serve::runtime()?.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    let cancel = super::serve::shutdown_on_signal();
    let mode = match config.mode {
        NodeMode::Standalone => IpcacheMode::Standalone,
        NodeMode::Cilium => IpcacheMode::Cilium {
            pin: config.cilium_ipcache.clone(),
        },
    };
    let datapath = Arc::new(
        Datapath::load(&DatapathConfig {
            mode,
            dedup: config.dedup,
            events_per_second: config.events.per_second,
            burst: config.events.burst,
            verdict: config.miss_verdict,
            check_source: config.check_source,
            ..DatapathConfig::default()
        })
        .context("loading the eBPF classifier")?,
    );
    let (runtime, mut registry, _watch) =
        super::serve::load_filters(&config.filters, config.cluster.locality())?;
    let metrics = NodeMetrics::default();
    metrics.register(&mut registry);

    let local = match &config.local_etcd {
        Some(etcd) => Some(super::serve::connect(etcd, "local", &cancel).await?),
        None => None,
    };
    let static_cidrs = config
        .mesh_cidrs
        .iter()
        .map(|c| StaticCidr {
            cidr: c.cidr,
            cluster: c.cluster.clone(),
        })
        .collect();
    let view = MeshView::new(datapath.clone(), static_cidrs, config.mirror_cache);
    let view_task = local.clone().map(|client| {
        let view = view.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { view.run(client, cancel).await })
    });
    let remotes = match &config.clusters_dir {
        Some(dir) => connect_remotes(dir).await?,
        None => Default::default(),
    };
    let resolvers = Resolvers::new(local, config.mesh_api.clone(), config.resolve_timeout)
        .with_remotes(remotes);
    let agent = NodeAgent::new(
        datapath.clone(),
        view,
        Some(runtime),
        resolvers,
        AgentConfig {
            node_name: config.node_name(),
            queue: config.queue,
            concurrency: config.concurrency,
            negative_ttl: config.negative_ttl,
            ..AgentConfig::default()
        },
        metrics.clone(),
    );

    // Attach last: everything that answers a miss is ready before the first one.
    for attachment in &config.interfaces {
        datapath
            .attach(attachment)
            .with_context(|| format!("interfaces: {}", attachment.interface))?;
    }
    let agent_task = tokio::spawn(agent.clone().run(cancel.clone()));

    let follows_cache = view_task.is_some();
    let (ready_agent, status_agent, scrape_agent) = (agent.clone(), agent.clone(), agent.clone());
    let admin = Admin::new(
        registry,
        move || {
            let status = ready_agent.status();
            if status.attachments.is_empty() {
                Err("not attached".into())
            } else if follows_cache && !status.view.synced {
                Err("local cache not listed yet".into())
            } else {
                Ok(())
            }
        },
        move || status_agent.status(),
    )
    .collect_before_scrape(move || scrape_agent.refresh_metrics());
    tracing::info!(listen = %config.listen, program_id = datapath.program_id(), "node agent running");
    let server = meshfilter_admin::bind_and_serve(
        config.listen,
        admin,
        Router::new(),
        ServerLimits::default(),
        cancel.clone(),
    )
    .await
    .with_context(|| format!("listen: {}", config.listen))?;
    let _ = server.await;

    cancel.cancel();
    match tokio::time::timeout(Duration::from_secs(5), agent_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "miss reader ended with an error"),
        Ok(_) => {}
        Err(_) => tracing::warn!("miss reader did not stop within 5s"),
    }
    if let Some(task) = view_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    drop(agent);
    // Detach explicitly so the log says so; dropping the datapath would do it too.
    datapath.detach_all();
    tracing::info!("node agent stopped");
    Ok(())
}

/// Clients for every cluster file in a clustermesh directory; an unreachable cluster is
/// logged and left out (the mesh API, if configured, still covers it).
async fn connect_remotes(
    dir: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, etcd_client::Client>> {
    let mut remotes = std::collections::BTreeMap::new();
    for (name, etcd) in meshfilter_etcd::scan_clusters_dir(dir, None)
        .with_context(|| format!("clustersDir: {}", dir.display()))?
    {
        let etcd = etcd.with_context(|| format!("clustersDir: {name}"))?;
        match etcd.connect(&name).await {
            Ok(client) => {
                remotes.insert(name, client);
            }
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "remote cluster unreachable; not read directly")
            }
        }
    }
    Ok(remotes)
}
