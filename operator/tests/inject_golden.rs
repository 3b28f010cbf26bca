//! Golden tests of injection: every `tests/golden/<case>.in.yaml` is injected (with
//! `<case>.integration.yaml`, else `integrations.yaml`; legacy mode for `legacy-*` cases) by the
//! same code as `civic-operator inject`, and must equal `<case>.out.yaml` (the per-object report
//! first, as comments). `UPDATE_GOLDEN=1` rewrites the expected files.
//!
//! Each output must also pass `kubernetes-validate --strict` for Kubernetes 1.33 (the schema
//! check of every case, cheaper than storing each through the real apiserver tier), and
//! injecting an output again must change nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use civic_operator::inject::workload::{self, Outcome, Report};
use civic_operator::inject::{InjectDefaults, SIDECAR_CONTAINER, SidecarMode};
use civic_operator::policy::{DEFAULT_REFUSED_AUDIENCES, HostRule, Policy, PolicyArgs};
use serde_json::Value;

const IMAGE: &str = "ghcr.io/civic-mcp/civic-sidecar:golden";
const VALIDATE_VERSION: &str = "1.33.0";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The chart's default policy, plus the pinned image one golden integration overrides with.
fn policy() -> Policy {
    let hosts = |h: &str| vec![HostRule::parse(h).expect("a host")];
    Policy::new(
        &PolicyArgs {
            allowed_token_hosts: hosts("auth.civic.com"),
            allowed_hub_hosts: hosts("app.civic.com"),
            allowed_sidecar_images: vec![
                "ghcr.io/civic-mcp/civic-sidecar".into(),
                "registry.example.com/civic-sidecar".into(),
            ],
            refused_audiences: DEFAULT_REFUSED_AUDIENCES
                .iter()
                .map(|a| a.to_string())
                .collect(),
        },
        IMAGE,
    )
}

fn defaults(mode: SidecarMode) -> InjectDefaults {
    InjectDefaults {
        image: IMAGE.into(),
        mode,
        policy: policy(),
        ..InjectDefaults::default()
    }
}

struct Case {
    name: String,
    input: PathBuf,
    integrations: PathBuf,
    expected: PathBuf,
    mode: SidecarMode,
}

fn cases() -> anyhow::Result<Vec<Case>> {
    let dir = golden_dir();
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".in.yaml") else {
            continue;
        };
        let own = dir.join(format!("{name}.integration.yaml"));
        cases.push(Case {
            name: name.to_owned(),
            input: path.clone(),
            integrations: if own.exists() {
                own
            } else {
                dir.join("integrations.yaml")
            },
            expected: dir.join(format!("{name}.out.yaml")),
            mode: if name.starts_with("legacy-") {
                SidecarMode::Legacy
            } else {
                SidecarMode::Native
            },
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    ensure!(
        cases.len() >= 10,
        "golden cases missing from {}",
        dir.display()
    );
    Ok(cases)
}

/// Injects `input`; returns the output text (report comments + YAML), docs and reports.
fn render(
    input: &str,
    integrations: &str,
    mode: SidecarMode,
) -> anyhow::Result<(String, Vec<Value>, Vec<Report>)> {
    let integrations = workload::read_integrations(integrations)?;
    let mut docs = workload::read_documents(input)?;
    let reports = workload::inject_documents(&mut docs, &integrations, &defaults(mode));
    let mut text: String = reports.iter().map(|r| format!("# {r}\n")).collect();
    text.push_str(&workload::write_documents(&docs)?);
    Ok((text, docs, reports))
}

fn sidecars(template: &Value) -> Vec<(&str, &Value)> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|list| {
            template
                .pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| c["name"] == SIDECAR_CONTAINER)
                .map(move |c| (list, c))
        })
        .collect()
}

/// The native-sidecar shape of every injected template.
fn check_native_fields(case: &Case, docs: &[Value], reports: &[Report]) -> anyhow::Result<()> {
    for (doc, report) in docs.iter().zip(reports) {
        if !matches!(
            report.outcome,
            Outcome::Injected(_) | Outcome::AlreadyInjected
        ) {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap_or_default();
        let pointer = workload::template_pointer(kind).context("injected kind")?;
        let template = doc.pointer(pointer).context("template")?;
        let found = sidecars(template);
        ensure!(
            found.len() == 1,
            "{}: {}: want exactly one sidecar, found {}",
            case.name,
            report.object,
            found.len()
        );
        let (list, sidecar) = found[0];
        match case.mode {
            SidecarMode::Native => {
                ensure!(
                    list == "initContainers",
                    "{}: native sidecar is an init container",
                    case.name
                );
                ensure!(
                    sidecar["restartPolicy"] == "Always",
                    "{}: restartPolicy Always",
                    case.name
                );
                ensure!(
                    sidecar.pointer("/startupProbe/httpGet/path") == Some(&Value::from("/readyz")),
                    "{}: startup probe on /readyz",
                    case.name
                );
                let init = template["spec"]["initContainers"]
                    .as_array()
                    .context("init")?;
                ensure!(
                    init.last().map(|c| &c["name"]) == Some(&Value::from(SIDECAR_CONTAINER)),
                    "{}: the sidecar runs after the pod's own init containers",
                    case.name
                );
            }
            SidecarMode::Legacy => {
                ensure!(
                    list == "containers",
                    "{}: legacy sidecar is a container",
                    case.name
                );
                ensure!(
                    sidecar.get("restartPolicy").is_none(),
                    "{}: no restartPolicy",
                    case.name
                );
            }
        }
        for app in template["spec"]["containers"]
            .as_array()
            .context("containers")?
        {
            if app["name"] == SIDECAR_CONTAINER {
                continue;
            }
            let has_url = app["env"]
                .as_array()
                .is_some_and(|env| env.iter().any(|e| e["name"] == "CIVIC_MCP_URL"));
            ensure!(
                has_url,
                "{}: {} lacks CIVIC_MCP_URL",
                case.name,
                app["name"]
            );
        }
    }
    Ok(())
}

fn kubernetes_validate() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let bin = PathBuf::from(home).join(".cache/civic-mcp/venv/bin/kubernetes-validate");
    if !bin.is_file() {
        bail!(
            "{} not found: run scripts/setup.sh (it installs PyPI kubernetes-validate into \
             ~/.cache/civic-mcp/venv)",
            bin.display()
        );
    }
    Ok(bin)
}

#[test]
fn golden_cases_match_and_validate_for_1_33() -> anyhow::Result<()> {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let validator = kubernetes_validate()?;
    let mut failures = Vec::new();
    let mut outputs = Vec::new();
    for case in cases()? {
        let input = std::fs::read_to_string(&case.input)?;
        let integrations = std::fs::read_to_string(&case.integrations)?;
        let (text, docs, reports) = render(&input, &integrations, case.mode)
            .with_context(|| format!("case {}", case.name))?;
        if let Err(e) = check_native_fields(&case, &docs, &reports) {
            failures.push(format!("{e:#}"));
        }

        // Idempotent: the output injected again is the same output.
        let (_, again_docs, again_reports) = render(&text, &integrations, case.mode)?;
        if again_docs != docs {
            failures.push(format!(
                "{}: injecting the output again changed it",
                case.name
            ));
        }
        for r in &again_reports {
            if matches!(r.outcome, Outcome::Injected(_)) {
                failures.push(format!(
                    "{}: {} was injected a second time",
                    case.name, r.object
                ));
            }
        }

        if update {
            std::fs::write(&case.expected, &text)?;
        } else {
            match std::fs::read_to_string(&case.expected) {
                Ok(expected) if expected == text => {}
                Ok(_) => failures.push(format!(
                    "{}: output differs from {} (UPDATE_GOLDEN=1 to accept):\n{text}",
                    case.name,
                    case.expected.display()
                )),
                Err(e) => failures.push(format!(
                    "{}: {}: {e} (UPDATE_GOLDEN=1 to create it)",
                    case.name,
                    case.expected.display()
                )),
            }
        }
        outputs.push(case.expected.clone());
    }

    let out = Command::new(&validator)
        .arg("--strict")
        .arg("--kubernetes-version")
        .arg(VALIDATE_VERSION)
        .args(&outputs)
        .output()
        .with_context(|| format!("running {}", validator.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stdout.contains("ERROR") || stderr.contains("ERROR") {
        failures.push(format!(
            "kubernetes-validate --strict {VALIDATE_VERSION} failed:\n{stdout}\n{stderr}"
        ));
    }
    let validated = stdout.matches(" passed for resource ").count();
    let documents: usize = outputs
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.matches("\n---\n").count() + usize::from(t.starts_with("---\n")))
                .unwrap_or(0)
        })
        .sum();
    if validated < documents {
        failures.push(format!(
            "kubernetes-validate passed {validated} of {documents} documents:\n{stdout}\n{stderr}"
        ));
    }
    if !failures.is_empty() {
        bail!(
            "{} golden failure(s):\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

#[test]
fn reports_name_what_happened() -> anyhow::Result<()> {
    let dir = golden_dir();
    let read = |n: &str| std::fs::read_to_string(dir.join(n));
    let (_, _, reports) = render(
        &read("host-network.in.yaml")?,
        &read("integrations.yaml")?,
        SidecarMode::Native,
    )?;
    assert!(
        matches!(&reports[0].outcome, Outcome::Failed(m) if m.contains("hostNetwork")),
        "{reports:?}"
    );
    let (_, _, reports) = render(
        &read("ambiguous.in.yaml")?,
        &read("ambiguous.integration.yaml")?,
        SidecarMode::Native,
    )?;
    assert!(
        matches!(&reports[0].outcome, Outcome::Failed(m) if m.contains("alpha/everyone, beta/agents")),
        "{reports:?}"
    );
    let (_, _, reports) = render(
        &read("workloads.in.yaml")?,
        &read("integrations.yaml")?,
        SidecarMode::Native,
    )?;
    let outcomes: Vec<_> = reports.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::NotAWorkload,
            Outcome::Injected("civic/support".into()),
            Outcome::Injected("civic/batch".into()),
            Outcome::NotAWorkload,
        ]
    );
    Ok(())
}

/// Runs the real `civic-operator inject` with `stdin` piped in; returns exit code, stdout, stderr.
fn inject_command(args: &[&str], stdin: &str) -> anyhow::Result<(i32, String, String)> {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_civic-operator"))
        .arg("inject")
        .args(["--sidecar-image", IMAGE])
        .args([
            "--allowed-sidecar-images",
            "ghcr.io/civic-mcp/civic-sidecar,registry.example.com/civic-sidecar",
        ])
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawn civic-operator inject")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().context("killed by a signal")?,
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

/// The documented example (`docs/examples/`) through the real command: injected exactly as
/// the library (and so the webhook) injects it, valid for 1.33, unchanged when piped through
/// again; refusals and unreadable input give the documented exit codes.
#[test]
fn the_inject_command_prints_the_docs_example_injected() -> anyhow::Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let deployment = "docs/examples/support-agent.yaml";
    let integration = "docs/examples/civic-integration.yaml";
    let (code, stdout, stderr) =
        inject_command(&["-f", deployment, "--integration", integration], "")?;
    ensure!(code == 0, "exit {code}: {stderr}");
    ensure!(
        stderr.trim()
            == "civic-operator inject: Deployment/support-agent: injected with binding civic/support",
        "{stderr}"
    );
    let (_, docs, _) = render(
        &std::fs::read_to_string(examples.join("support-agent.yaml"))?,
        &std::fs::read_to_string(examples.join("civic-integration.yaml"))?,
        SidecarMode::Native,
    )?;
    ensure!(
        stdout == workload::write_documents(&docs)?,
        "the command and the library disagree:\n{stdout}"
    );

    let dir = civic_testkit::fs::TempDir::new("inject-command");
    let out_file = dir.path().join("support-agent.injected.yaml");
    std::fs::write(&out_file, &stdout)?;
    let validated = Command::new(kubernetes_validate()?)
        .args(["--strict", "--kubernetes-version", VALIDATE_VERSION])
        .arg(&out_file)
        .output()?;
    let report = String::from_utf8_lossy(&validated.stdout);
    ensure!(
        validated.status.success() && report.contains(" passed for resource "),
        "kubernetes-validate: {report}{}",
        String::from_utf8_lossy(&validated.stderr)
    );

    // Piped through again (`-f -`): nothing changes.
    let (code, again, stderr) =
        inject_command(&["-f", "-", "--integration", integration], &stdout)?;
    ensure!(code == 0, "exit {code}: {stderr}");
    ensure!(
        again == stdout,
        "a second pass changed the output:\n{again}"
    );
    ensure!(
        stderr.contains("Deployment/support-agent: already injected"),
        "{stderr}"
    );

    // A pod that cannot be injected: printed unchanged, status 1, the reason on stderr.
    let host = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: node-agent\n  namespace: agents\n  \
                labels: {app: support-agent, mcp.civic.com/inject: enabled}\nspec:\n  \
                hostNetwork: true\n  containers: [{name: agent, image: example.com/a:1}]\n";
    let (code, _, stderr) = inject_command(&["-f", "-", "--integration", integration], host)?;
    ensure!(
        code == 1 && stderr.contains("hostNetwork"),
        "exit {code}: {stderr}"
    );
    // Unreadable input: status 2.
    let (code, _, stderr) = inject_command(
        &[
            "-f",
            "docs/examples/missing.yaml",
            "--integration",
            integration,
        ],
        "",
    )?;
    ensure!(
        code == 2 && stderr.contains("missing.yaml"),
        "exit {code}: {stderr}"
    );
    Ok(())
}
