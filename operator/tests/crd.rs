//! The CRD in `crds/` is generated: it must be exactly what `civic-operator crd` prints.

use std::path::PathBuf;
use std::process::Command;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/civicintegrations.mcp.civic.com.yaml")
}

#[test]
fn crds_dir_matches_the_generated_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_civic-operator"))
        .arg("crd")
        .output()
        .expect("run civic-operator crd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let stored = std::fs::read_to_string(checked_in()).expect("read crds/ file");
    assert!(
        generated == stored,
        "crds/civicintegrations.mcp.civic.com.yaml is stale; regenerate it with\n  \
         cargo run -p civic-operator -- crd > crds/civicintegrations.mcp.civic.com.yaml"
    );
}

#[test]
fn the_crd_has_the_agreed_names_and_columns() {
    let stored = std::fs::read_to_string(checked_in()).expect("read crds/ file");
    let crd: serde_json::Value = serde_yaml_ng::from_str(&stored).expect("YAML");
    assert_eq!(crd["metadata"]["name"], "civicintegrations.mcp.civic.com");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "civic");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in ["Ready", "Bindings", "Age"] {
        assert!(columns.contains(&c), "{columns:?}");
    }
    // The rules the structural schema cannot say are CEL, so `kubectl apply` refuses them.
    for rule in [
        "!self.contains('':'')",
        "!has(self.subject.civicTokenSecretRef)",
        "self.lowerAscii().startsWith(",
    ] {
        assert!(stored.contains(rule), "no CEL rule containing {rule}");
    }
    // Every property documents itself (kubectl explain).
    fn check_descriptions(path: &str, schema: &serde_json::Value) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                assert!(prop.get("description").is_some(), "{p} has no description");
                check_descriptions(&p, prop);
            }
        }
        if let Some(items) = schema.get("items") {
            check_descriptions(&format!("{path}[]"), items);
        }
    }
    let root = &version["schema"]["openAPIV3Schema"];
    check_descriptions("spec", &root["properties"]["spec"]);
    check_descriptions("status", &root["properties"]["status"]);
}
