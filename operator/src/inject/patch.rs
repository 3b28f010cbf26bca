//! The RFC 6902 patch between a pod and its injected form, as the admission response carries
//! it. Exact for any pair of pods, and cheap for the usual one: subtrees that compare equal
//! (`PartialEq` on the typed pod, no allocation) are skipped, and only what differs is
//! serialized and diffed, so a typical injection costs a few small serializations instead of
//! two whole-pod ones.

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

/// The patch that turns `original` into `changed`.
pub fn patch(original: &Pod, changed: &Pod) -> Result<Patch, serde_json::Error> {
    let mut ops = Vec::new();
    let root = PointerBuf::new();
    metadata(&mut ops, &root, &original.metadata, &changed.metadata)?;
    match (&original.spec, &changed.spec) {
        (Some(a), Some(b)) => spec(&mut ops, &root.with_trailing_token("spec"), a, b)?,
        (a, b) => field(&mut ops, &root.with_trailing_token("spec"), a, b)?,
    }
    field(
        &mut ops,
        &root.with_trailing_token("status"),
        &original.status,
        &changed.status,
    )?;
    Ok(Patch(ops))
}

fn metadata(
    ops: &mut Vec<PatchOperation>,
    at: &PointerBuf,
    a: &ObjectMeta,
    b: &ObjectMeta,
) -> Result<(), serde_json::Error> {
    if a == b {
        return Ok(());
    }
    let at = at.with_trailing_token("metadata");
    field(ops, &at.with_trailing_token("labels"), &a.labels, &b.labels)?;
    field(
        ops,
        &at.with_trailing_token("annotations"),
        &a.annotations,
        &b.annotations,
    )?;
    let rest = |m: &ObjectMeta| ObjectMeta {
        labels: None,
        annotations: None,
        ..m.clone()
    };
    field(ops, &at, &rest(a), &rest(b))
}

fn spec(
    ops: &mut Vec<PatchOperation>,
    at: &PointerBuf,
    a: &PodSpec,
    b: &PodSpec,
) -> Result<(), serde_json::Error> {
    if a == b {
        return Ok(());
    }
    list(
        ops,
        &at.with_trailing_token("containers"),
        Some(&a.containers),
        Some(&b.containers),
    )?;
    list(
        ops,
        &at.with_trailing_token("initContainers"),
        a.init_containers.as_ref(),
        b.init_containers.as_ref(),
    )?;
    list(
        ops,
        &at.with_trailing_token("volumes"),
        a.volumes.as_ref(),
        b.volumes.as_ref(),
    )?;
    let rest = |s: &PodSpec| {
        let mut r = s.clone();
        r.containers.clear();
        r.init_containers = None;
        r.volumes = None;
        r
    };
    field(ops, at, &rest(a), &rest(b))
}

/// An optional list, element by element.
fn list<T: Serialize + PartialEq>(
    ops: &mut Vec<PatchOperation>,
    at: &PointerBuf,
    a: Option<&Vec<T>>,
    b: Option<&Vec<T>>,
) -> Result<(), serde_json::Error> {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (a, b) => return field(ops, at, &a, &b),
    };
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        field(ops, &at.with_trailing_token(i), x, y)?;
    }
    for (i, y) in b.iter().enumerate().skip(a.len()) {
        ops.push(PatchOperation::Add(AddOperation {
            path: at.with_trailing_token(i),
            value: serde_json::to_value(y)?,
        }));
    }
    // Removed from the end, last first, so indexes stay valid.
    for i in (b.len()..a.len()).rev() {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: at.with_trailing_token(i),
        }));
    }
    Ok(())
}

/// Any serializable value: nothing when equal; `add`/`remove` when it appears or disappears
/// (a `None` field is absent from the JSON); otherwise the JSON diff under `at`.
fn field<T: Serialize + PartialEq>(
    ops: &mut Vec<PatchOperation>,
    at: &PointerBuf,
    a: &T,
    b: &T,
) -> Result<(), serde_json::Error> {
    if a == b {
        return Ok(());
    }
    let (a, b) = (serde_json::to_value(a)?, serde_json::to_value(b)?);
    match (&a, &b) {
        (Value::Null, Value::Null) => {}
        (Value::Null, _) => ops.push(PatchOperation::Add(AddOperation {
            path: at.clone(),
            value: b,
        })),
        (_, Value::Null) => ops.push(PatchOperation::Remove(RemoveOperation { path: at.clone() })),
        _ => {
            for mut op in json_patch::diff(&a, &b).0 {
                let path = match &mut op {
                    PatchOperation::Add(o) => &mut o.path,
                    PatchOperation::Remove(o) => &mut o.path,
                    PatchOperation::Replace(o) => &mut o.path,
                    PatchOperation::Move(o) => &mut o.path,
                    PatchOperation::Copy(o) => &mut o.path,
                    PatchOperation::Test(o) => &mut o.path,
                };
                let mut full = at.clone();
                full.append(&*path);
                *path = full;
                ops.push(op);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    /// Applying the patch to the original's JSON gives the changed pod's JSON.
    fn round_trip(a: &Pod, b: &Pod) -> Patch {
        let p = patch(a, b).unwrap();
        let mut doc = serde_json::to_value(a).unwrap();
        json_patch::patch(&mut doc, &p).unwrap();
        assert_eq!(doc, serde_json::to_value(b).unwrap(), "{p:?}");
        p
    }

    #[test]
    fn equal_pods_need_no_operations() {
        let a = pod(json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}}));
        assert!(patch(&a, &a.clone()).unwrap().0.is_empty());
    }

    #[test]
    fn every_kind_of_change_round_trips() {
        let a = pod(json!({
            "metadata": {"name": "x", "labels": {"a": "1"}},
            "spec": {
                "containers": [{"name": "a", "env": [{"name": "A", "value": "1"}]},
                               {"name": "b"}, {"name": "c"}],
                "volumes": [{"name": "v", "emptyDir": {}}],
                "hostNetwork": true,
                "tolerations": [{"key": "k", "operator": "Exists"}],
            },
        }));
        let b = pod(json!({
            "metadata": {"name": "y", "labels": {"a": "2", "b": "3"}, "annotations": {"x/y": "z"}},
            "spec": {
                "containers": [{"name": "a", "env": [{"name": "A", "value": "1"},
                                                     {"name": "B", "value": "2"}]}],
                "initContainers": [{"name": "i", "restartPolicy": "Always"}],
                "dnsPolicy": "None",
            },
            "status": {"phase": "Pending"},
        }));
        round_trip(&a, &b);
        round_trip(&b, &a);
        let c = pod(json!({"metadata": {}}));
        round_trip(&a, &c);
        round_trip(&c, &b);
    }

    #[test]
    fn keys_needing_escapes_are_escaped() {
        let a = pod(json!({"metadata": {"annotations": {"k": "v"}}}));
        let b = pod(json!({"metadata": {"annotations": {"k": "v", "mcp.civic.com/x~y": "1"}}}));
        let p = round_trip(&a, &b);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v[0]["path"], "/metadata/annotations/mcp.civic.com~1x~0y");
    }
}
