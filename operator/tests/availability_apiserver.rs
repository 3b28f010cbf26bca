//! The webhook's availability against a real kube-apiserver, the way the chart deploys it: the
//! controller and the webhook as separate `civic-operator run` processes (`--webhook-enabled
//! false` / `--controller-enabled false`), the webhook replicas behind a loopback balancer that,
//! like a Service with kube-proxy, sends new connections only to replicas whose `/readyz`
//! answers 200 and leaves established connections where they are. A steady stream of labelled pod
//! creations runs through every fault below, and each one must be admitted with its sidecar:
//! - a webhook replica is not ready until its serving certificate exists;
//! - the controller is killed: admission does not notice;
//! - a rolling update replaces both webhook replicas one by one (start the new, SIGTERM the old:
//!   it reports not ready, keeps admitting for its drain period, tells its connections to move,
//!   then exits cleanly).
//!
//! Fails, never skips, when the kube binaries are missing: run `scripts/kube/build.sh`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use civic_testkit::secrets::{CLIENT_ID, CLIENT_SECRET, PROFILE_ID};
use common::{Env, OPERATOR_NS, Process, TEAM, apply_all, eventually_slowly as eventually};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const EVENTUALLY: Duration = Duration::from_secs(60);
/// Short, so the test sees a whole drain; the chart's is longer (kube-proxy is slower than the
/// balancer here).
const DRAIN: Duration = Duration::from_secs(2);

type Operator = Process;

/// `civic-operator run` as `name`, authenticated as the chart's ServiceAccount of the part it
/// runs, trusting the fake Civic Auth's CA.
fn operator(env: &Env, name: &str, flags: &[&str]) -> anyhow::Result<Operator> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_civic-operator"));
    cmd.env_clear()
        .env("KUBECONFIG", env.kubeconfig_for(flags))
        .env("CIVIC_OPERATOR_TOKEN_URL_CA_FILE", env.ca.ca_file())
        .env("POD_NAMESPACE", OPERATOR_NS)
        .env("POD_NAME", name)
        .env("CIVIC_OPERATOR_LOG", "info,civic_operator=debug")
        .args(["run", "--admin-addr", "127.0.0.1:0"])
        .envs(common::LOOPBACK_POLICY)
        .args(common::LOOPBACK_WEBHOOK)
        .args(["--webhook-cert-check-interval", "1s"])
        .args(["--drain-period", &format!("{}ms", DRAIN.as_millis())])
        .args(["--lease-duration", "4s", "--lease-renew-deadline", "3s"])
        .args(["--lease-retry-period", "500ms", "--resync-interval", "2s"])
        .args(flags);
    Process::spawn(name, cmd, &format!("availability-{name}.log"))
}

/// A webhook-only replica and its addresses.
struct Replica {
    process: Operator,
    webhook: SocketAddr,
    admin: SocketAddr,
}

impl Replica {
    async fn start(env: &Env, name: &str) -> anyhow::Result<Self> {
        let process = operator(env, name, &["--controller-enabled", "false"])?;
        let webhook = process.logged_addr("webhook listening", EVENTUALLY).await?;
        let admin = process
            .logged_addr("admin endpoints listening", EVENTUALLY)
            .await?;
        Ok(Self {
            process,
            webhook,
            admin,
        })
    }

    async fn readyz(&self) -> anyhow::Result<(u16, String)> {
        let r = civic_testkit::client::get(self.admin, "/readyz").await?;
        Ok((r.status, r.text()))
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        eventually(
            &format!("{} ready", self.process.name),
            EVENTUALLY,
            || async { Ok((self.readyz().await?.0 == 200).then_some(())) },
        )
        .await
    }
}

/// What kube-proxy does for a Service, on loopback: each new connection goes to the next
/// backend whose `/readyz` said 200 at the last poll (every 100 ms); established connections stay
/// with their backend until one side closes.
struct Balancer {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<(SocketAddr, SocketAddr, bool)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Balancer {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends: Arc<Mutex<Vec<(SocketAddr, SocketAddr, bool)>>> = Arc::default();
        let poll = backends.clone();
        let poller = tokio::spawn(async move {
            loop {
                let list: Vec<_> = poll.lock().unwrap().clone();
                for (webhook, admin, _) in list {
                    let ready = matches!(
                        civic_testkit::client::get(admin, "/readyz").await,
                        Ok(r) if r.status == 200
                    );
                    for b in poll.lock().unwrap().iter_mut() {
                        if b.0 == webhook {
                            b.2 = ready;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let pick = backends.clone();
        let next = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let ready: Vec<SocketAddr> = pick
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|b| b.2)
                    .map(|b| b.0)
                    .collect();
                if ready.is_empty() {
                    continue; // No endpoint: the connection is refused, as a Service without one.
                }
                let to = ready[next.fetch_add(1, Ordering::Relaxed) % ready.len()];
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(to).await {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            backends,
            tasks: vec![poller, acceptor],
        })
    }

    fn add(&self, replica: &Replica) {
        self.backends
            .lock()
            .unwrap()
            .push((replica.webhook, replica.admin, false));
    }

    fn remove(&self, replica: &Replica) {
        self.backends
            .lock()
            .unwrap()
            .retain(|b| b.0 != replica.webhook);
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Outcomes of the pod stream.
#[derive(Default)]
struct Tally {
    injected: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// Creates labelled pods one after another (a few dozen a second) until `stop` is set.
async fn pod_stream(admin: Client, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let body = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("agent-{n}"), "namespace": TEAM,
                         "labels": {"app": "agent", "mcp.civic.com/inject": "enabled"}},
            "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
        });
        match common::create_pod(&admin, TEAM, &body).await {
            Ok((201, pod)) if common::is_injected(&pod) => {
                tally.injected.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, pod)) => tally
                .failures
                .lock()
                .unwrap()
                .push(format!("agent-{n}: {status} {}", pod["message"])),
            Err(e) => tally
                .failures
                .lock()
                .unwrap()
                .push(format!("agent-{n}: {e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_survives_a_dead_controller_and_a_rolling_update() -> anyhow::Result<()> {
    let env = common::setup(EVENTUALLY, true).await?;
    let admin = env.admin.clone();
    common::put_secret(&admin, CLIENT_SECRET).await?;
    apply_all(
        &admin,
        vec![json!({
            "apiVersion": "mcp.civic.com/v1alpha1", "kind": "CivicIntegration",
            "metadata": {"name": "civic", "namespace": TEAM},
            "spec": {
                "clientId": CLIENT_ID,
                "clientSecretRef": {"name": common::SECRET_NAME, "key": "client-secret"},
                "tokenUrl": env.auth.token_url(),
                "bindings": [{
                    "name": "support",
                    "podSelector": {"matchLabels": {"app": "agent"}},
                    "profileId": PROFILE_ID,
                    "subject": {"serviceAccountToken": {"audience": "civic"}},
                }],
            },
        })],
    )
    .await?;
    let controller = operator(&env, "controller", &["--webhook-enabled", "false"])?;
    ensure!(
        controller
            .logged_addr("admin endpoints listening", EVENTUALLY)
            .await
            .is_ok()
    );

    // Readiness waits for the serving certificate: the chart's empty Secret does not exist yet.
    let a = Replica::start(&env, "webhook-a").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = a.readyz().await?;
    ensure!(
        status == 503 && body.contains("serving certificate"),
        "ready without a certificate: {status} {body}"
    );
    common::create_empty_cert_secret(&admin).await?;
    a.wait_ready().await?;
    let b = Replica::start(&env, "webhook-b").await?;
    b.wait_ready().await?;

    let balancer = Balancer::start().await?;
    balancer.add(&a);
    balancer.add(&b);
    let config: MutatingWebhookConfiguration = serde_json::from_value(
        common::chart_webhook_config(&format!("https://{}/inject", balancer.addr)),
    )?;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    configs.create(&PostParams::default(), &config).await?;
    // The first admission succeeds once the replicas filled in the caBundle.
    eventually("a pod admitted with its sidecar", EVENTUALLY, || async {
        let body = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "first", "namespace": TEAM,
                         "labels": {"app": "agent", "mcp.civic.com/inject": "enabled"}},
            "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
        });
        let (status, pod) = common::create_pod(&admin, TEAM, &body).await?;
        Ok((status == 201 && common::is_injected(&pod)).then_some(()))
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let stream = tokio::spawn(pod_stream(admin.clone(), stop.clone(), tally.clone()));
    let admitted = |t: &Tally| t.injected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The controller dies: admission goes on.
    controller.signal("-KILL")?;
    controller.wait_exit(Duration::from_secs(10)).await?;
    let before = admitted(&tally);
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        admitted(&tally) > before + 10,
        "admission stalled without the controller"
    );

    // A rolling update, one replica at a time (maxUnavailable 0, maxSurge 1).
    let mut replicas = vec![a, b];
    for name in ["webhook-c", "webhook-d"] {
        let new = Replica::start(&env, name).await?;
        new.wait_ready().await?;
        balancer.add(&new);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let old = replicas.remove(0);
        let before = admitted(&tally);
        old.process.signal("-TERM")?;
        // Not ready at once, still admitting through the drain, gone after it.
        eventually("the old replica reports draining", EVENTUALLY, || async {
            let (status, body) = old.readyz().await?;
            Ok((status == 503 && body.contains("draining")).then_some(()))
        })
        .await?;
        ensure!(
            old.process
                .wait_exit(DRAIN + Duration::from_secs(15))
                .await?,
            "{} did not exit cleanly:\n{}",
            old.process.name,
            old.process.output()
        );
        ensure!(
            old.process
                .output()
                .contains("draining: not ready, still admitting"),
            "{} did not drain",
            old.process.name
        );
        balancer.remove(&old);
        ensure!(
            admitted(&tally) > before + 10,
            "admission stalled while {} drained",
            old.process.name
        );
        replicas.push(new);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    stream.await?;

    let failures = tally.failures.lock().unwrap().clone();
    let injected = admitted(&tally);
    eprintln!(
        "{injected} pods admitted with a sidecar through the faults, {} failed",
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "admissions lost: {}\n{failures:#?}",
        failures.len()
    );
    ensure!(injected >= 100, "too few admissions to tell: {injected}");
    drop(replicas);
    env.cluster.capture("availability").await?;
    Ok(())
}
