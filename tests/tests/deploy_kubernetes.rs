//! The deploy files are what operators run, so they are tested like code.
//! Here the Kubernetes manifests under `deploy/kubernetes/` (their probes,
//! metrics and image in `deploy_kubernetes_probes`; the systemd units in
//! `deploy_systemd`, the CNI config in `deploy_cni`):
//!
//! - the Kubernetes manifests parse and have the shape `deploy/kubernetes/
//!   README.md` describes, and their names, ports and mounts line up;
//! - every flag and `WEFT_*` variable that a manifest hands to `weft-agent`
//!   or `weft-controller` is one the built binary accepts (`--help`), and
//!   with it the binary's `--check-config` succeeds and shows each value;
//! - the optional `etcd-tls` kustomize component patches the controllers
//!   into a configuration the binary accepts.
//!
//! Needs the binaries (`cargo build --workspace`), not root.
//! `kubectl` (for `kubectl kustomize`) is used when installed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use weft_tests::deploy::invocation::{check_invocation, controller_pki, Invocation, DAEMONS};
use weft_tests::deploy::manifests::{
    at, command, container, container_env, containers, kind, labels_match, list, manifests,
    mounted, name, object, strategic_merge, strings, workloads, yaml_docs, NAMESPACE, WEFT_IMAGE,
};
use weft_tests::deploy::{deploy, read, text, which};
use weft_tests::TempDir;

#[test]
fn kubernetes_manifests_parse_and_have_the_documented_shape() {
    let docs = manifests();
    for (file, v) in &docs {
        assert!(
            v["apiVersion"].is_string() && v["kind"].is_string(),
            "{file}: a document without apiVersion/kind: {v}"
        );
        if kind(v) == "Kustomization" {
            continue;
        }
        assert!(!name(v).is_empty(), "{file}: a {} without a name", kind(v));
        if kind(v) != "Namespace" {
            assert_eq!(
                v["metadata"]["namespace"],
                NAMESPACE,
                "{file}: {} {} is not in {NAMESPACE}",
                kind(v),
                name(v)
            );
        }
    }

    // kustomization.yaml lists every other manifest.
    let (kfile, kust) = docs
        .iter()
        .find(|(_, v)| kind(v) == "Kustomization")
        .expect("a kustomization.yaml");
    let listed: BTreeSet<String> = strings(&kust["resources"]).into_iter().collect();
    let files: BTreeSet<String> = docs
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != kfile)
        .collect();
    assert_eq!(
        listed, files,
        "{kfile}: resources differ from the manifests"
    );

    let ns = object(&docs, "Namespace", NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "the agent pods are privileged: the namespace must admit them"
    );

    let version = env!("CARGO_PKG_VERSION");
    for w in workloads(&docs) {
        let what = format!("{} {}", kind(w), name(w));
        assert!(
            labels_match(
                at(w, "/spec/selector/matchLabels"),
                at(w, "/spec/template/metadata/labels")
            ),
            "{what}: the selector does not match the pod labels"
        );
        let pod = at(w, "/spec/template/spec");
        let mut volumes: BTreeSet<&str> = list(&pod["volumes"])
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for t in list(&w["spec"]["volumeClaimTemplates"]) {
            volumes.insert(name(t));
        }
        for c in containers(w) {
            let cname = c["name"].as_str().unwrap_or_default();
            let image = c["image"].as_str().unwrap_or_default();
            let tag = image.rsplit('/').next().unwrap().split_once(':');
            assert!(
                tag.is_some_and(|(_, t)| !t.is_empty() && t != "latest"),
                "{what}/{cname}: image {image:?} is not pinned to a version"
            );
            if image.starts_with(WEFT_IMAGE) {
                assert_eq!(
                    image,
                    format!("{WEFT_IMAGE}:{version}"),
                    "{what}/{cname}: the weft image is tagged with the workspace version"
                );
                assert!(
                    command(c).is_some(),
                    "{what}/{cname}: name the binary (command:), the image runs none by default"
                );
            }
            for m in list(&c["volumeMounts"]) {
                let v = m["name"].as_str().unwrap_or_default();
                assert!(
                    volumes.contains(v),
                    "{what}/{cname}: mounts unknown volume {v:?}"
                );
            }
        }
    }

    // The agent: every node, the node's network namespace, privileged (which
    // Bidirectional propagation requires), the node's name.
    let ds = object(&docs, "DaemonSet", "weft-agent");
    let pod = at(ds, "/spec/template/spec");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["dnsPolicy"], "ClusterFirstWithHostNet",
        "a host-network agent must still resolve the controllers' Service"
    );
    assert!(
        list(&pod["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "the agent must run on every node, tainted or not"
    );
    let agent = container(ds, "weft-agent");
    assert_eq!(agent["securityContext"]["privileged"], true);
    let env = container_env(&docs, agent);
    assert_eq!(
        env.get("WEFT_NODE_NAME").map(String::as_str),
        Some("node-1")
    );
    let node_name = list(&agent["env"])
        .iter()
        .find(|e| e["name"] == "WEFT_NODE_NAME")
        .unwrap();
    assert_eq!(
        node_name.pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&Value::from("spec.nodeName"))
    );
    let (netns, m) = mounted(ds, agent, "/run/netns").expect("/run/netns mounted");
    assert_eq!(netns["hostPath"]["path"], "/run/netns");
    assert_eq!(
        m["mountPropagation"], "Bidirectional",
        "namespaces bind-mounted by the agent must reach the node"
    );
    for path in ["/var/lib/weft", "/run/weft"] {
        let (v, _) = mounted(ds, agent, path).unwrap_or_else(|| panic!("{path} not mounted"));
        assert_eq!(v["hostPath"]["path"], path, "{path} must be the node's");
    }
    let (modules, m) = mounted(ds, agent, "/lib/modules").expect("/lib/modules mounted");
    assert_eq!(modules["hostPath"]["path"], "/lib/modules");
    assert_eq!(m["readOnly"], true);

    // The controllers: two or more, unprivileged.
    let dep = object(&docs, "Deployment", "weft-controller");
    let replicas = at(dep, "/spec/replicas").as_u64().expect("replicas");
    assert!(
        replicas >= 2,
        "{replicas} controller(s): agents need one to fail over to"
    );
    let pod = at(dep, "/spec/template/spec");
    let ctl = container(dep, "weft-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(ctl["securityContext"]["privileged"], true);
    assert_eq!(ctl["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(ctl["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        ctl["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(list(&ctl["securityContext"]["capabilities"]["add"]).is_empty());
    assert!(pod.get("hostNetwork").is_none_or(|h| h == false));
    let pdb = object(&docs, "PodDisruptionBudget", "weft-controller");
    assert!(labels_match(
        at(pdb, "/spec/selector/matchLabels"),
        at(dep, "/spec/template/metadata/labels")
    ));

    // The controllers' Service: QUIC on UDP 7470.
    let svc = object(&docs, "Service", "weft-controller");
    assert!(
        list(at(svc, "/spec/ports"))
            .iter()
            .any(|p| p["port"] == 7470 && p["protocol"] == "UDP"),
        "Service weft-controller: no UDP 7470"
    );

    // etcd: a StatefulSet with storage and its headless Service.
    let sts = object(&docs, "StatefulSet", "weft-etcd");
    let svc = object(
        &docs,
        "Service",
        at(sts, "/spec/serviceName").as_str().unwrap(),
    );
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert!(labels_match(
        at(svc, "/spec/selector"),
        at(sts, "/spec/template/metadata/labels")
    ));
    let claims = list(at(sts, "/spec/volumeClaimTemplates"));
    assert!(!claims.is_empty(), "etcd without a persistent volume");
    let etcd = container(sts, "etcd");
    assert!(
        list(&etcd["volumeMounts"])
            .iter()
            .any(|m| m["name"] == name(&claims[0])),
        "etcd does not mount its volume"
    );

    // Every Secret the pods use is created by hand (it holds keys): the
    // README must say how.
    let readme = read(&deploy("kubernetes/README.md"));
    for w in workloads(&docs) {
        for v in list(&w["spec"]["template"]["spec"]["volumes"]) {
            if let Some(s) = v.pointer("/secret/secretName").and_then(Value::as_str) {
                assert!(
                    readme.contains(&format!("create secret generic {s}")),
                    "deploy/kubernetes/README.md does not say how to create Secret {s}"
                );
            }
        }
    }
}

#[test]
fn kubernetes_flags_and_variables_are_accepted_by_the_binaries() {
    let docs = manifests();
    let tmp = TempDir::new("deploy-k8s");
    let pki = controller_pki(&tmp);
    let mut seen = BTreeSet::new();
    for w in workloads(&docs) {
        for c in containers(w) {
            let Some((program, args)) = command(c) else {
                continue;
            };
            if !DAEMONS.contains(&program.as_str()) {
                continue;
            }
            let what = format!("{} {}/{}", kind(w), name(w), c["name"].as_str().unwrap());
            assert!(
                !args.iter().any(|a| a.contains("$(")),
                "{what}: $(VAR) arguments are not checked by this test"
            );
            let mut env = container_env(&docs, c);
            if program == "weft-controller" {
                // --check-config loads the TLS files: the manifest's directory
                // must be where the Secret is mounted; the test's PKI stands in.
                let dir = env
                    .get("WEFT_TLS_DIR")
                    .cloned()
                    .unwrap_or_else(|| "/etc/weft/tls".into());
                let (v, _) = mounted(w, c, &dir)
                    .unwrap_or_else(|| panic!("{what}: nothing mounted at its TLS dir {dir}"));
                assert!(
                    v.pointer("/secret/secretName").is_some(),
                    "{what}: {dir} is not a Secret"
                );
                env.insert("WEFT_TLS_DIR".into(), pki.clone());
            }
            let config = check_invocation(&Invocation {
                origin: what.clone(),
                binary: program.clone(),
                args,
                env,
            });
            if program == "weft-agent" {
                // The directories the agent uses are the node's.
                for key in ["state_dir", "run_dir", "netns_dir"] {
                    let dir = config[key].as_str().unwrap();
                    let (v, _) = mounted(w, c, dir)
                        .unwrap_or_else(|| panic!("{what}: its {key} {dir} is not mounted"));
                    assert_eq!(
                        v["hostPath"]["path"], dir,
                        "{what}: {key} {dir} is not the node's {dir}"
                    );
                }
                let tls = config["tls_dir"].as_str().unwrap();
                assert!(
                    mounted(w, c, tls).is_some(),
                    "{what}: its TLS dir {tls} is not mounted"
                );
                assert!(
                    !config["controllers"].as_array().unwrap().is_empty(),
                    "{what}: the agent in Kubernetes runs in cluster mode"
                );
            }
            seen.insert(program);
        }
    }
    assert_eq!(
        seen,
        DAEMONS.map(String::from).into(),
        "the manifests run both daemons"
    );
}

/// `HOST:PORT` or `scheme://HOST:PORT` → (HOST, PORT).
fn host_port(addr: &str) -> (String, u64) {
    let addr = addr.split_once("://").map_or(addr, |(_, a)| a);
    let (h, p) = addr.rsplit_once(':').expect("HOST:PORT");
    (h.to_string(), p.parse().expect("port"))
}

/// The container port a Service port leads to (by number or name), on the
/// pods of `w`.
fn target_port(svc: &Value, port: &Value, w: &Value) -> u64 {
    let target = port.get("targetPort").unwrap_or(&port["port"]);
    containers(w)
        .iter()
        .flat_map(|c| list(&c["ports"]))
        .find(|p| p["containerPort"] == *target || p["name"] == *target)
        .unwrap_or_else(|| {
            panic!(
                "Service {}: port {port} leads to no container port",
                name(svc)
            )
        })["containerPort"]
        .as_u64()
        .unwrap()
}

/// The workload a Service selects.
fn selected<'a>(docs: &'a [(String, Value)], svc: &Value) -> &'a Value {
    workloads(docs)
        .find(|w| {
            labels_match(
                at(svc, "/spec/selector"),
                at(w, "/spec/template/metadata/labels"),
            )
        })
        .unwrap_or_else(|| panic!("Service {} selects no workload", name(svc)))
}

#[test]
fn kubernetes_names_and_ports_line_up() {
    let docs = manifests();
    let dep = object(&docs, "Deployment", "weft-controller");
    let ctl_env = container_env(&docs, container(dep, "weft-controller"));
    let ds = object(&docs, "DaemonSet", "weft-agent");
    let agent_env = container_env(&docs, container(ds, "weft-agent"));

    // Agents dial Services of the controllers, on a UDP port that leads to
    // the port the controllers listen on.
    let listen = host_port(ctl_env.get("WEFT_LISTEN").map_or("0.0.0.0:7470", |s| s)).1;
    let controllers = agent_env.get("WEFT_CONTROLLER").expect("WEFT_CONTROLLER");
    for c in controllers.split(',') {
        let (host, port) = host_port(c);
        let svc = object(&docs, "Service", host.split('.').next().unwrap());
        assert!(
            !host.contains('.'),
            "agents dial {host}: the controller certificate (README) is issued for {}",
            name(svc)
        );
        let p = list(at(svc, "/spec/ports"))
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("Service {host} has no port {port}"));
        assert_eq!(p["protocol"], "UDP", "QUIC runs over UDP");
        let w = selected(&docs, svc);
        assert_eq!(name(w), "weft-controller");
        assert_eq!(
            target_port(svc, p, w),
            listen,
            "{c} does not reach the controllers' --listen"
        );
        let cp = list(&container(w, "weft-controller")["ports"])
            .iter()
            .find(|x| x["containerPort"] == listen)
            .unwrap();
        assert_eq!(cp["protocol"], "UDP");
    }

    // The controllers reach etcd through its Service.
    for e in ctl_env["WEFT_ETCD_ENDPOINTS"].split(',') {
        let (host, port) = host_port(e);
        let svc = object(&docs, "Service", host.split('.').next().unwrap());
        let p = list(at(svc, "/spec/ports"))
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("Service {host} has no port {port}"));
        let w = selected(&docs, svc);
        assert_eq!(kind(w), "StatefulSet");
        assert_eq!(target_port(svc, p, w), 2379);
    }
}

#[test]
fn kubernetes_etcd_tls_component_patches_the_controllers() {
    let docs = manifests();
    let dir = deploy("kubernetes/etcd-tls");
    let comp = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    assert_eq!(comp["kind"], "Component");
    // Offered (commented out) where `kubectl apply -k` would take it.
    assert!(
        read(&deploy("kubernetes/kustomization.yaml")).contains("#   - etcd-tls"),
        "kustomization.yaml does not offer the etcd-tls component"
    );
    let mut dep = object(&docs, "Deployment", "weft-controller").clone();
    let patches = list(&comp["patches"]);
    assert!(!patches.is_empty(), "etcd-tls patches nothing");
    for p in patches {
        let file = dir.join(p["path"].as_str().expect("patches: path"));
        for patch in yaml_docs(&file) {
            assert_eq!(
                (kind(&patch), name(&patch)),
                ("Deployment", "weft-controller"),
                "{}: patches something else",
                file.display()
            );
            strategic_merge(&mut dep, &patch);
        }
    }
    let c = container(&dep, "weft-controller");
    let mut env = container_env(&docs, c);
    for k in ["WEFT_ETCD_CA", "WEFT_ETCD_CERT", "WEFT_ETCD_KEY"] {
        let f = env
            .get(k)
            .unwrap_or_else(|| panic!("etcd-tls: no {k}"))
            .clone();
        let parent = Path::new(&f).parent().unwrap().to_str().unwrap();
        let (v, _) = mounted(&dep, c, parent)
            .unwrap_or_else(|| panic!("etcd-tls: {k}={f}: nothing mounted at {parent}"));
        let secret = v
            .pointer("/secret/secretName")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("etcd-tls: {parent} is not a Secret"));
        assert!(
            read(&deploy("kubernetes/README.md"))
                .contains(&format!("create secret generic {secret}")),
            "deploy/kubernetes/README.md does not say how to create Secret {secret}"
        );
    }
    // The controller accepts it, with https:// endpoints (the component
    // leaves them to the ConfigMap) and the test PKI standing in for both
    // Secrets (it has ca.pem, cert.pem, key.pem too).
    let tmp = TempDir::new("deploy-etcd-tls");
    let pki = controller_pki(&tmp);
    for (k, v) in env.iter_mut() {
        if k == "WEFT_TLS_DIR" {
            *v = pki.clone();
        } else if k.starts_with("WEFT_ETCD_") && v.starts_with('/') {
            let file = Path::new(v.as_str()).file_name().unwrap().to_owned();
            *v = Path::new(&pki).join(file).to_str().unwrap().to_string();
        } else if k == "WEFT_ETCD_ENDPOINTS" {
            *v = v.replace("http://", "https://");
        }
    }
    let config = check_invocation(&Invocation {
        origin: "Deployment weft-controller with the etcd-tls component".into(),
        binary: "weft-controller".into(),
        args: command(c).unwrap().1,
        env,
    });
    assert_eq!(config["etcd_tls"], true);

    // kubectl builds the tree with and without the component.
    let Some(kubectl) = which("kubectl") else {
        eprintln!("NOTE: kubectl not found: `kubectl kustomize` was NOT run on deploy/kubernetes");
        return;
    };
    let base = deploy("kubernetes");
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("WEFT_ETCD_CA"));
    let overlay = TempDir::new("deploy-overlay");
    let rel = |p: &Path| {
        // kustomize wants relative paths: up from the overlay to /, down to p.
        let ups = overlay.path().components().count() - 1;
        format!(
            "{}{}",
            "../".repeat(ups),
            p.to_str().unwrap().trim_start_matches('/')
        )
    };
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            rel(&base),
            rel(&dir)
        ),
    )
    .unwrap();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(overlay.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize with etcd-tls: {}",
        text(&out.stderr)
    );
    let built = text(&out.stdout);
    for k in [
        "WEFT_ETCD_CA",
        "WEFT_ETCD_CERT",
        "WEFT_ETCD_KEY",
        "weft-etcd-client",
    ] {
        assert!(built.contains(k), "kubectl kustomize with etcd-tls: no {k}");
    }
}
