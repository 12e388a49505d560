//! The Kubernetes manifests under `deploy/kubernetes/` (and any YAML file)
//! read as JSON values, and what a test asks of them: objects by kind and
//! name, workloads and their containers, a container's environment as the
//! kubelet would set it (the variables of the namespace's Services
//! included), what is mounted where, the strategic merge of a kustomize
//! patch, and the tree as `kubectl kustomize` builds it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use super::{deploy, read, text, which};

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
/// The cluster IP the test gives the first Service with one (in the order
/// of their names); the next ones get the addresses after it.
pub const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

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

/// A container of the manifests that runs one of weft's daemons.
pub struct DaemonContainer<'a> {
    pub workload: &'a Value,
    pub container: &'a Value,
    /// `weft-agent` or `weft-controller`.
    pub program: String,
    pub args: Vec<String>,
    /// `Kind name/container`, for messages.
    pub what: String,
}

/// Every container of `docs`' workloads that runs a daemon of
/// [`DAEMONS`](super::invocation::DAEMONS).
pub fn daemon_containers(docs: &[(String, Value)]) -> Vec<DaemonContainer<'_>> {
    let mut out = Vec::new();
    for w in workloads(docs) {
        for c in containers(w) {
            let Some((program, args)) = command(c) else {
                continue;
            };
            if !super::invocation::DAEMONS.contains(&program.as_str()) {
                continue;
            }
            let what = format!("{} {}/{}", kind(w), name(w), c["name"].as_str().unwrap());
            out.push(DaemonContainer {
                workload: w,
                container: c,
                program,
                args,
                what,
            });
        }
    }
    out
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

/// The Services of `docs` in [`NAMESPACE`] that Kubernetes gives a cluster
/// IP (not headless: `clusterIP: None`), each with a sample one
/// ([`FIRST_CLUSTER_IP`] onwards, in the order of their names).
pub fn cluster_ips(docs: &[(String, Value)]) -> BTreeMap<String, String> {
    let mut names: Vec<&str> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| kind(v) == "Service" && v["metadata"]["namespace"] == NAMESPACE)
        .filter(|v| v["spec"]["clusterIP"] != "None")
        .map(name)
        .collect();
    names.sort_unstable();
    names
        .into_iter()
        .zip(u32::from(FIRST_CLUSTER_IP)..)
        .map(|(n, ip)| (n.to_string(), Ipv4Addr::from(ip).to_string()))
        .collect()
}

/// A name as Kubernetes spells it in a variable: upper case, `-` as `_`.
pub fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The variables the kubelet sets for Service `svc` with cluster IP `ip` in
/// every container of a pod in its namespace (unless the pod sets
/// `enableServiceLinks: false`): `<NAME>_SERVICE_HOST`,
/// `<NAME>_SERVICE_PORT` (the first port), `<NAME>_SERVICE_PORT_<PORT NAME>`
/// for each named port, and the Docker link variables `<NAME>_PORT`,
/// `<NAME>_PORT_<PORT>_<PROTO>` and its `_PROTO`, `_PORT`, `_ADDR`
/// (kubelet's `envvars.FromServices`).
pub fn service_variables(svc: &Value, ip: &str) -> BTreeMap<String, String> {
    let prefix = env_name(name(svc));
    let mut out = BTreeMap::new();
    let ports = list(&svc["spec"]["ports"]);
    out.insert(format!("{prefix}_SERVICE_HOST"), ip.to_string());
    for (i, p) in ports.iter().enumerate() {
        let port = p["port"]
            .as_u64()
            .unwrap_or_else(|| panic!("Service {}: port {p} has no number", name(svc)));
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        let url = format!("{}://{ip}:{port}", proto.to_ascii_lowercase());
        if i == 0 {
            out.insert(format!("{prefix}_SERVICE_PORT"), port.to_string());
            out.insert(format!("{prefix}_PORT"), url.clone());
        }
        if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
            out.insert(
                format!("{prefix}_SERVICE_PORT_{}", env_name(n)),
                port.to_string(),
            );
        }
        let link = format!("{prefix}_PORT_{port}_{}", proto.to_ascii_uppercase());
        out.insert(format!("{link}_PROTO"), proto.to_ascii_lowercase());
        out.insert(format!("{link}_PORT"), port.to_string());
        out.insert(format!("{link}_ADDR"), ip.to_string());
        out.insert(link, url);
    }
    out
}

/// The variables the kubelet sets in a container of a pod in
/// [`NAMESPACE`] for the Services of `docs` ([`service_variables`], with
/// the sample cluster IPs of [`cluster_ips`]).
pub fn service_env(docs: &[(String, Value)]) -> BTreeMap<String, String> {
    let ips = cluster_ips(docs);
    let mut env = BTreeMap::new();
    for (n, ip) in &ips {
        env.extend(service_variables(object(docs, "Service", n), ip));
    }
    env
}

/// The Service whose sample cluster IP ([`cluster_ips`]) is `ip`, if any.
pub fn service_at<'a>(docs: &'a [(String, Value)], ip: &str) -> Option<&'a Value> {
    let (n, _) = cluster_ips(docs).into_iter().find(|(_, i)| i == ip)?;
    Some(object(docs, "Service", &n))
}

/// The variables `$(VAR)` in `s` refers to (`$$(…)` is no reference).
pub fn references(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            rest = r;
        } else if let Some((v, r)) = after.strip_prefix('(').and_then(|r| r.split_once(')')) {
            out.push(v.to_string());
            rest = r;
        } else {
            rest = after;
        }
    }
    out
}

/// Kubernetes' `$(VAR)` in an env `value`: the value of a variable defined
/// before it (by `envFrom` or an earlier `env` entry, or a Service's);
/// `$$` is a `$`; anything else stays as written.
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

/// A container's environment as its manifest sets it (`envFrom`, `env`),
/// with sample values for `fieldRef`s and `$(VAR)` expanded as the kubelet
/// does, the variables of the namespace's Services ([`service_env`])
/// included. Without those: [`kubelet_env`] has them too.
pub fn container_env(docs: &[(String, Value)], c: &Value) -> BTreeMap<String, String> {
    let services = service_env(docs);
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
            let mut scope = services.clone();
            scope.extend(env.clone());
            let expanded = expand_k8s(v, &scope);
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

/// A container's whole environment as the kubelet sets it: the Services'
/// variables ([`service_env`]), and over them [`container_env`].
pub fn kubelet_env(docs: &[(String, Value)], c: &Value) -> BTreeMap<String, String> {
    let mut env = service_env(docs);
    env.extend(container_env(docs, c));
    env
}

/// A container's `command` and `args` with `$(VAR)` expanded as the kubelet
/// does, from [`kubelet_env`].
pub fn expanded_command(docs: &[(String, Value)], c: &Value) -> Vec<String> {
    let env = kubelet_env(docs, c);
    let mut words = strings(&c["command"]);
    words.extend(strings(&c["args"]));
    words.iter().map(|w| expand_k8s(w, &env)).collect()
}

/// The tree `kubectl kustomize` builds from `dir`, as [`manifests`] gives
/// the files' (each document's file named `kustomize`); None, after a
/// note, where kubectl is not installed.
pub fn kustomize_build(dir: &Path) -> Option<Vec<(String, Value)>> {
    let Some(kubectl) = which("kubectl") else {
        eprintln!(
            "NOTE: kubectl not found: `kubectl kustomize {}` was NOT run",
            dir.display()
        );
        return None;
    };
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        text(&out.stderr)
    );
    Some(
        serde_norway::Deserializer::from_str(&text(&out.stdout))
            .map(|de| Value::deserialize(de).expect("kubectl kustomize: YAML"))
            .filter(|v| !v.is_null())
            .map(|v| ("kustomize".to_string(), v))
            .collect(),
    )
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
