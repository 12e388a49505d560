//! The Kubernetes manifests under `deploy/kubernetes/` (and any YAML file)
//! read as JSON values, and what a test asks of them: objects by kind and
//! name, workloads and their containers, a container's environment as the
//! kubelet would set it, what is mounted where, and the strategic merge of
//! a kustomize patch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{deploy, read};

/// The namespace of every weft object.
pub const NAMESPACE: &str = "weft-system";
/// The image of every weft container; its tag is the workspace version.
pub const WEFT_IMAGE: &str = "ghcr.io/weft/weft";
/// What the test puts in for a pod's `fieldRef`s.
pub const FIELD_SAMPLES: [(&str, &str); 4] = [
    ("spec.nodeName", "node-1"),
    ("status.hostIP", "10.0.0.21"),
    ("metadata.name", "pod-0"),
    ("status.podIP", POD_IP),
];
/// What the kubelet probes: the pod IP (the sample of `status.podIP`).
pub const POD_IP: &str = "10.1.0.5";

/// Every document of every `*.yaml` file under deploy/kubernetes, with the
/// file it came from.
pub fn manifests() -> Vec<(String, Value)> {
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let source = read(&f);
        for (i, de) in serde_norway::Deserializer::from_str(&source).enumerate() {
            let v = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{name}: document {}: {e}", i + 1));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

/// An object's `kind` (empty if it has none).
pub fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

/// An object's `metadata.name` (empty if it has none).
pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

/// The one object of this kind and name.
pub fn object<'a>(docs: &'a [(String, Value)], k: &str, n: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| kind(v) == k && name(v) == n)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!("expected one {k} {n}, found {}", found.len()),
    }
}

/// The value at JSON pointer `pointer` of object `v`; panics if there is none.
pub fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer)
        .unwrap_or_else(|| panic!("{} {}: no {pointer}", kind(v), name(v)))
}

/// A list's items (none if `v` is not a list).
pub fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The kinds of object that run pods.
pub const WORKLOADS: [&str; 3] = ["Deployment", "DaemonSet", "StatefulSet"];

/// The Deployments, DaemonSets and StatefulSets of `docs`.
pub fn workloads(docs: &[(String, Value)]) -> impl Iterator<Item = &Value> {
    docs.iter()
        .map(|(_, v)| v)
        .filter(|v| WORKLOADS.contains(&kind(v)))
}

/// Containers and init containers of a workload's pod.
pub fn containers(w: &Value) -> Vec<&Value> {
    let pod = at(w, "/spec/template/spec");
    list(&pod["initContainers"])
        .iter()
        .chain(list(&pod["containers"]))
        .collect()
}

/// The container (or init container) `n` of workload `w`.
pub fn container<'a>(w: &'a Value, n: &str) -> &'a Value {
    containers(w)
        .into_iter()
        .find(|c| c["name"] == n)
        .unwrap_or_else(|| panic!("{} {} has no container {n}", kind(w), name(w)))
}

/// A list of strings (none if `v` is not a list); panics on other items.
pub fn strings(v: &Value) -> Vec<String> {
    list(v)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

/// The program a container runs (basename) and its arguments.
pub fn command(c: &Value) -> Option<(String, Vec<String>)> {
    let mut words = strings(&c["command"]);
    words.extend(strings(&c["args"]));
    let program = words.first()?.rsplit('/').next()?.to_string();
    Some((program, words[1..].to_vec()))
}

/// The `data` of ConfigMap `n`.
pub fn config_map<'a>(docs: &'a [(String, Value)], n: &str) -> &'a serde_json::Map<String, Value> {
    at(object(docs, "ConfigMap", n), "/data")
        .as_object()
        .expect("ConfigMap data")
}

/// Kubernetes' `$(VAR)` in an env `value`: the value of a variable defined
/// before it (by `envFrom` or an earlier `env` entry); `$$` is a `$`;
/// anything else stays as written.
pub fn expand_k8s(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        if let Some(r) = after.strip_prefix('(') {
            if let Some(v) = r.find(')').and_then(|j| Some((env.get(&r[..j])?, j))) {
                out.push_str(v.0);
                rest = &r[v.1 + 1..];
                continue;
            }
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A container's environment as the kubelet would set it, with sample
/// values for `fieldRef`s.
pub fn container_env(docs: &[(String, Value)], c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in list(&c["envFrom"]) {
        let n = from["configMapRef"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("envFrom other than a ConfigMap: {from}"));
        for (k, v) in config_map(docs, n) {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap {n}: {k} is not a string"));
            env.insert(k.clone(), v.to_string());
        }
    }
    for e in list(&c["env"]) {
        let k = e["name"].as_str().expect("env name").to_string();
        let v = if let Some(v) = e.get("value") {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("env {k}: not a string"));
            let expanded = expand_k8s(v, &env);
            assert!(
                !expanded.contains("$("),
                "env {k}={v}: refers to a variable not defined before it"
            );
            expanded
        } else if let Some(path) = e.pointer("/valueFrom/fieldRef/fieldPath") {
            let path = path.as_str().unwrap();
            FIELD_SAMPLES
                .iter()
                .find(|(p, _)| *p == path)
                .unwrap_or_else(|| panic!("env {k}: no sample for fieldRef {path}"))
                .1
                .to_string()
        } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
            let (n, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            config_map(docs, n)[key].as_str().unwrap().to_string()
        } else {
            panic!("env {k}: cannot resolve {e}")
        };
        env.insert(k, v);
    }
    env
}

/// The volume mounted at `path` in container `c` of workload `w`, with the
/// mount.
pub fn mounted<'a>(w: &'a Value, c: &'a Value, path: &str) -> Option<(&'a Value, &'a Value)> {
    let m = list(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == path)?;
    let volume = list(&w["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == m["name"])?;
    Some((volume, m))
}

/// Whether a (non-empty) label selector selects these labels.
pub fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector labels");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The subset of Kubernetes' strategic merge patch the components use:
/// maps merge, lists of objects merge by `name` (`mountPath` for volume
/// mounts), anything else is replaced.
pub fn strategic_merge(base: &mut Value, patch: &Value) {
    fn key(v: &Value) -> Option<(&'static str, &Value)> {
        ["mountPath", "name"]
            .into_iter()
            .find_map(|k| Some((k, v.get(k)?)))
    }
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(bv) => strategic_merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) if p.iter().all(|x| key(x).is_some()) => {
            for item in p {
                let (k, id) = key(item).unwrap();
                match b.iter_mut().find(|x| x.get(k) == Some(id)) {
                    Some(existing) => strategic_merge(existing, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Every (non-empty) document of a YAML file.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    serde_norway::Deserializer::from_str(&read(path))
        .map(|de| Value::deserialize(de).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}
