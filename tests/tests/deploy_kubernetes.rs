//! The deploy files are what operators run, so they are tested like code.
//! Here the Kubernetes manifests under `deploy/kubernetes/` (their probes,
//! metrics and image in `deploy_kubernetes_probes`; the systemd units in
//! `deploy_systemd`, the CNI config in `deploy_cni`):
//!
//! - the Kubernetes manifests parse and have the shape `deploy/kubernetes/
//!   README.md` describes, and their names, ports and mounts line up;
//! - weft can be the cluster's only pod network: etcd, the controllers and
//!   the agents run on the host network, need no cluster DNS (addresses,
//!   not names: the Services' cluster IPs through the variables Kubernetes
//!   sets for them, which the built tree's Services provide and precede),
//!   and their ports on a node collide neither with each other nor with
//!   Kubernetes' own;
//! - every flag and `WEFT_*` variable that a manifest hands to `weft-agent`
//!   or `weft-controller` is one the built binary accepts (`--help`), and
//!   with it the binary's `--check-config` succeeds and shows each value;
//! - the variables Kubernetes sets for the Services are none that a binary
//!   reads;
//! - the optional `etcd-tls` kustomize component patches the controllers
//!   into a configuration the binary accepts.
//!
//! Needs the binaries (`cargo build --workspace`), not root.
//! `kubectl` (for `kubectl kustomize`) is used when installed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use weft_tests::deploy::invocation::{
    check_invocation, controller_pki, variables_read, Invocation, DAEMONS,
};
use weft_tests::deploy::manifests::{
    at, cluster_ips, command, config_map, container, container_env, containers, daemon_containers,
    env_name, expanded_command, kind, kubelet_env, kustomize_build, labels_match, list, manifests,
    mounted, name, object, references, service_at, service_env, service_variables, strategic_merge,
    strings, workloads, yaml_docs, NAMESPACE, POD_IP, WEFT_IMAGE, WORKLOADS,
};
use weft_tests::deploy::{deploy, read, run, text, which};
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
    assert_eq!(
        pod["hostNetwork"], true,
        "the controllers give the nodes the subnets of the pod network: they cannot be on it"
    );
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

    // etcd: a StatefulSet with storage and its Service, which has a
    // cluster IP: the controllers reach it by the variables Kubernetes sets
    // only for such Services.
    let sts = object(&docs, "StatefulSet", "weft-etcd");
    let svc = object(
        &docs,
        "Service",
        at(sts, "/spec/serviceName").as_str().unwrap(),
    );
    assert_ne!(
        svc["spec"]["clusterIP"],
        "None",
        "Service {}: headless, so no {}_SERVICE_HOST for the controllers",
        name(svc),
        env_name(name(svc))
    );
    assert_eq!(at(sts, "/spec/template/spec/hostNetwork"), true);
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
    for d in daemon_containers(&docs) {
        let (w, c, program, args, what) = (d.workload, d.container, d.program, d.args, d.what);
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

/// The value of `--flag=value` or `--flag value` in a command line.
fn flag_value(words: &[String], flag: &str) -> Option<String> {
    words.iter().enumerate().find_map(|(i, w)| {
        if let Some(v) = w.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            Some(v.to_string())
        } else if w == flag {
            words.get(i + 1).cloned()
        } else {
            None
        }
    })
}

/// The addresses etcd listens on for clients, peers and metrics
/// (`--listen-*-urls`, etcd's defaults where not given): (what, URL).
fn etcd_listeners(words: &[String]) -> Vec<(&'static str, String)> {
    [
        (
            "client",
            "--listen-client-urls",
            Some("http://localhost:2379"),
        ),
        ("peer", "--listen-peer-urls", Some("http://localhost:2380")),
        ("metrics", "--listen-metrics-urls", None),
    ]
    .into_iter()
    .flat_map(|(what, flag, default)| {
        let urls = flag_value(words, flag).or(default.map(String::from));
        urls.into_iter()
            .flat_map(|u| u.split(',').map(str::to_string).collect::<Vec<_>>())
            .map(move |u| (what, u))
    })
    .collect()
}

#[test]
fn kubernetes_names_and_ports_line_up() {
    let docs = manifests();
    let dep = object(&docs, "Deployment", "weft-controller");
    let ctl_env = container_env(&docs, container(dep, "weft-controller"));
    let ds = object(&docs, "DaemonSet", "weft-agent");
    let agent_env = container_env(&docs, container(ds, "weft-agent"));
    let readme = read(&deploy("kubernetes/README.md"));

    // Agents dial the cluster IP of the controllers' Service, on a UDP port
    // that leads to the port the controllers listen on, and verify the
    // certificate for the Service's name, the one README issues it for.
    let listen = host_port(ctl_env.get("WEFT_LISTEN").map_or("0.0.0.0:7470", |s| s)).1;
    let controllers = agent_env.get("WEFT_CONTROLLER").expect("WEFT_CONTROLLER");
    for c in controllers.split(',') {
        // NAME@HOST:PORT dials HOST:PORT and verifies the certificate for
        // NAME; HOST:PORT verifies it for HOST.
        let (host, port) = host_port(c.split_once('@').map_or(c, |(_, d)| d));
        let tls_name = c.split_once('@').map_or(host.as_str(), |(n, _)| n);
        let svc = service_at(&docs, &host)
            .unwrap_or_else(|| panic!("agents dial {c}: {host} is the cluster IP of no Service"));
        assert_eq!(
            tls_name,
            name(svc),
            "agents dial {c}: they verify the controller certificate for {tls_name}, not for \
             the Service's name"
        );
        assert!(
            readme.contains(&format!("--name {tls_name} --role controller")),
            "deploy/kubernetes/README.md does not issue the controller certificate for \
             {tls_name}, the name agents verify"
        );
        let p = list(at(svc, "/spec/ports"))
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("Service {} has no port {port}", name(svc)));
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

    // The controllers reach etcd through its Service's cluster IP, on a
    // port that leads to the one etcd serves clients on.
    let sts = object(&docs, "StatefulSet", "weft-etcd");
    let words = expanded_command(&docs, container(sts, "etcd"));
    let client_ports: BTreeSet<u64> = etcd_listeners(&words)
        .into_iter()
        .filter(|(what, _)| *what == "client")
        .map(|(_, u)| host_port(&u).1)
        .collect();
    for e in ctl_env["WEFT_ETCD_ENDPOINTS"].split(',') {
        let (host, port) = host_port(e);
        let svc = service_at(&docs, &host).unwrap_or_else(|| {
            panic!("the controllers reach etcd at {e}: {host} is the cluster IP of no Service")
        });
        let p = list(at(svc, "/spec/ports"))
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("Service {} has no port {port}", name(svc)));
        let w = selected(&docs, svc);
        assert_eq!(kind(w), "StatefulSet");
        let target = target_port(svc, p, w);
        assert!(
            client_ports.contains(&target),
            "{e} leads to etcd's port {target}, it serves clients on {client_ports:?}"
        );
    }
}

/// The `HOST:PORT`s in a value or argument: in lists (`,`), after `=`, in
/// URLs, after a `NAME@`.
fn addresses(s: &str) -> Vec<(String, u16)> {
    s.split(|c: char| c == ',' || c == '=' || c.is_whitespace())
        .filter_map(|w| {
            let w = w.split_once("://").map_or(w, |(_, r)| r);
            let w = w.split('/').next().unwrap_or_default();
            let w = w.rsplit_once('@').map_or(w, |(_, r)| r);
            let (h, p) = w.rsplit_once(':')?;
            let port = p.parse().ok()?;
            let h = h.trim_start_matches('[').trim_end_matches(']');
            (!h.is_empty()).then(|| (h.to_string(), port))
        })
        .collect()
}

#[test]
fn kubernetes_bootstrap_needs_neither_a_pod_network_nor_dns() {
    // weft is the pod network: a pod on it gets its network from its
    // node's agent, which serves once a controller (backed by etcd) gave
    // the node a subnet; the cluster DNS (CoreDNS) is such a pod too. So
    // none of weft's own pods may be on the pod network or need the
    // cluster DNS, or nothing can start first.
    let docs = manifests();
    let services: BTreeSet<&str> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| kind(v) == "Service")
        .map(name)
        .collect();
    let service_vars = service_env(&docs);
    let mut seen = 0;
    for w in workloads(&docs) {
        let what = format!("{} {}", kind(w), name(w));
        let pod = at(w, "/spec/template/spec");
        assert_eq!(
            pod["hostNetwork"], true,
            "{what}: on the pod network, which weft's etcd, controllers and agents must bring up"
        );
        let dns = pod["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
        assert!(
            !dns.starts_with("ClusterFirst"),
            "{what}: dnsPolicy {dns}: the cluster DNS runs on the pod network (use Default)"
        );
        for c in containers(w) {
            let cname = c["name"].as_str().unwrap_or_default();
            let mut values: Vec<(String, String)> = container_env(&docs, c).into_iter().collect();
            values.extend(
                expanded_command(&docs, c)
                    .into_iter()
                    .map(|a| ("command".to_string(), a)),
            );
            for (k, v) in &values {
                for (host, port) in addresses(v) {
                    let service = services
                        .iter()
                        .find(|s| host == **s || host.starts_with(&format!("{s}.")))
                        .map(|s| format!(" (Service {s}: use its cluster IP, from its variables)"))
                        .unwrap_or_default();
                    assert!(
                        host.parse::<IpAddr>().is_ok(),
                        "{what}/{cname}: {k} {v}: {host}:{port} is a name, which needs the \
                         cluster DNS{service}"
                    );
                }
            }
            // The Services' variables are there only with service links.
            let mut raw: Vec<String> = list(&c["env"])
                .iter()
                .filter_map(|e| e["value"].as_str().map(str::to_string))
                .collect();
            raw.extend(strings(&c["command"]));
            raw.extend(strings(&c["args"]));
            if raw
                .iter()
                .flat_map(|v| references(v))
                .any(|r| service_vars.contains_key(&r))
            {
                assert_ne!(
                    pod["enableServiceLinks"], false,
                    "{what}/{cname}: refers to Service variables, which enableServiceLinks: false \
                     leaves out"
                );
            }
            seen += 1;
        }
    }
    assert!(seen > 0, "no workloads");
}

#[test]
fn kubernetes_service_variables_come_from_the_built_services() {
    // What `kubectl apply -k` applies, in its order: every $(VAR) a
    // container's env or command refers to is defined before it in the
    // container or is a variable Kubernetes sets for a Service of the
    // tree, and that Service comes before the workload, so that it exists
    // (with its cluster IP) when the pods start.
    let Some(built) = kustomize_build(&deploy("kubernetes")) else {
        return;
    };
    let ips = cluster_ips(&built);
    let mut provided: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (i, (_, v)) in built.iter().enumerate() {
        if let Some(ip) = ips.get(name(v)).filter(|_| kind(v) == "Service") {
            for k in service_variables(v, ip).into_keys() {
                provided.insert(k, (name(v).to_string(), i));
            }
        }
    }
    let mut used = BTreeSet::new();
    for (i, (_, w)) in built.iter().enumerate() {
        if !WORKLOADS.contains(&kind(w)) {
            continue;
        }
        for c in containers(w) {
            let what = format!("{} {}/{}", kind(w), name(w), c["name"].as_str().unwrap());
            let mut defined: BTreeSet<String> = BTreeSet::new();
            for from in list(&c["envFrom"]) {
                let n = from["configMapRef"]["name"].as_str().expect("configMapRef");
                defined.extend(config_map(&built, n).keys().cloned());
            }
            let mut check = |v: &str, defined: &BTreeSet<String>, whose: &str| {
                for r in references(v) {
                    if defined.contains(&r) {
                        continue;
                    }
                    let (svc, at) = provided.get(&r).unwrap_or_else(|| {
                        panic!(
                            "{what}: {whose} refers to $({r}), which neither the container \
                             defines before it nor Kubernetes sets for a Service of the tree \
                             (Services: {:?})",
                            ips.keys().collect::<Vec<_>>()
                        )
                    });
                    assert!(
                        *at < i,
                        "{what}: {whose} refers to $({r}) of Service {svc}, which kubectl apply \
                         -k creates after the workload: its pods would start without it"
                    );
                    used.insert(r);
                }
            };
            for e in list(&c["env"]) {
                let k = e["name"].as_str().expect("env name").to_string();
                if let Some(v) = e["value"].as_str() {
                    check(v, &defined, &format!("env {k}"));
                }
                defined.insert(k);
            }
            let mut words = strings(&c["command"]);
            words.extend(strings(&c["args"]));
            for a in words {
                check(&a, &defined, &format!("argument {a:?}"));
            }
            // And the whole environment resolves, the Services' variables
            // taking the sample cluster IPs.
            container_env(&built, c);
        }
    }
    for v in ["WEFT_CONTROLLER_SERVICE_HOST", "WEFT_ETCD_SERVICE_HOST"] {
        assert!(
            used.contains(v),
            "no workload of the built tree uses {v}: then it reaches that Service some other way"
        );
    }
}

/// Ports Kubernetes' own components use on a node (kubeadm's defaults),
/// and weft's tunnel.
const RESERVED_NODE_PORTS: [(&str, u16, &str); 11] = [
    (
        "TCP",
        2379,
        "the cluster's etcd (kubeadm control-plane nodes)",
    ),
    (
        "TCP",
        2380,
        "the cluster's etcd peers (kubeadm control-plane nodes)",
    ),
    (
        "TCP",
        2381,
        "the cluster's etcd metrics (kubeadm control-plane nodes)",
    ),
    ("TCP", 6443, "kube-apiserver"),
    ("TCP", 10248, "kubelet healthz"),
    ("TCP", 10249, "kube-proxy metrics"),
    ("TCP", 10250, "kubelet"),
    ("TCP", 10256, "kube-proxy healthz"),
    ("TCP", 10257, "kube-controller-manager"),
    ("TCP", 10259, "kube-scheduler"),
    (
        "UDP",
        4789,
        "weft's VXLAN tunnel (the cluster's default --port)",
    ),
];

/// (protocol, IP, port) each process of a container listens on, as its
/// configuration says: the weft daemons' --check-config, etcd's flags.
fn listeners(
    docs: &[(String, Value)],
    w: &Value,
    c: &Value,
    pki: &str,
) -> Vec<(String, String, u16)> {
    let what = format!("{} {}/{}", kind(w), name(w), c["name"].as_str().unwrap());
    let words = expanded_command(docs, c);
    let Some(program) = words.first().and_then(|p| p.rsplit('/').next()) else {
        return Vec::new();
    };
    let parse = |proto: &str, a: &str| {
        let (h, p) = host_port(a);
        let port = u16::try_from(p).unwrap();
        (
            proto.to_string(),
            h.trim_matches(['[', ']']).to_string(),
            port,
        )
    };
    match program {
        "weft-agent" | "weft-controller" => {
            let mut env = container_env(docs, c);
            if program == "weft-controller" {
                env.insert("WEFT_TLS_DIR".into(), pki.to_string());
            }
            let config = check_invocation(&Invocation {
                origin: what,
                binary: program.to_string(),
                args: words[1..].to_vec(),
                env,
            });
            let mut out = Vec::new();
            if let Some(l) = config.get("listen").and_then(Value::as_str) {
                out.push(parse("UDP", l));
            }
            if let Some(l) = config["metrics_listen"].as_str() {
                out.push(parse("TCP", l));
            }
            out
        }
        "etcd" => etcd_listeners(&words)
            .into_iter()
            .map(|(_, u)| {
                let u = u.replace("localhost", "127.0.0.1");
                parse("TCP", &u)
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn kubernetes_host_network_ports_do_not_collide() {
    // etcd, the controllers and the agents run on the host network, where
    // their ports are the node's: every one a process listens on is
    // declared (so the scheduler keeps other pods wanting it off the node),
    // on the node's address rather than every interface, none is one of
    // Kubernetes' own or in a range the node uses otherwise, no two of
    // weft's workloads (which may share a node) share one, and replicas of
    // one workload are kept on nodes of their own.
    let docs = manifests();
    let tmp = TempDir::new("deploy-k8s-ports");
    let pki = controller_pki(&tmp);
    let mut taken: BTreeMap<(String, u64), String> = BTreeMap::new();
    for w in workloads(&docs) {
        let pod = at(w, "/spec/template/spec");
        if pod["hostNetwork"] != true {
            continue;
        }
        let wwhat = format!("{} {}", kind(w), name(w));
        let mut mine: BTreeSet<(String, u64)> = BTreeSet::new();
        for c in containers(w) {
            let what = format!("{wwhat}/{}", c["name"].as_str().unwrap());
            let declared: Vec<(String, u64, &Value)> = list(&c["ports"])
                .iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
                    let port = p["containerPort"].as_u64().expect("containerPort");
                    (proto, port, p)
                })
                .collect();
            let heard = listeners(&docs, w, c, &pki);
            for (proto, ip, port) in &heard {
                assert!(
                    declared
                        .iter()
                        .any(|(dp, dn, _)| dp == proto && *dn == u64::from(*port)),
                    "{what}: listens on {proto} {ip}:{port} without declaring the port: the \
                     scheduler would let another pod wanting it onto the node"
                );
                let addr: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{what}: {ip}: {e}"));
                assert!(
                    !addr.is_unspecified(),
                    "{what}: {proto} {ip}:{port} on the node's network namespace also answers on \
                     weft0's address, the tunnel and every interface of the node: listen on the \
                     node's address (status.podIP)"
                );
            }
            for (proto, port, p) in &declared {
                let port16 = u16::try_from(*port).unwrap();
                if let Some(h) = p.get("hostPort") {
                    assert_eq!(
                        h,
                        &Value::from(*port),
                        "{what}: hostPort on the host network"
                    );
                }
                if let Some((_, _, whose)) = RESERVED_NODE_PORTS
                    .iter()
                    .find(|(rp, rn, _)| rp == proto && rn == &port16)
                {
                    panic!("{what}: {proto} {port} is {whose}'s on a node");
                }
                assert!(
                    !(30000..=32767).contains(port),
                    "{what}: {proto} {port} is in Kubernetes' NodePort range, which kube-proxy \
                     may route to a Service"
                );
                assert!(
                    !(32768..=60999).contains(port),
                    "{what}: {proto} {port} is in Linux's ephemeral range, which the node's \
                     outgoing connections take ports from"
                );
                assert!(
                    mine.insert((proto.clone(), *port)),
                    "{wwhat}: declares {proto} {port} twice"
                );
                if let Some(other) = taken.insert((proto.clone(), *port), wwhat.clone()) {
                    panic!("{wwhat} and {other} both use the node's {proto} {port}");
                }
            }
            // The kubelet probes the pod IP (the node's address): the port
            // a probe names is one the container listens on there.
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(get) = c[probe].get("httpGet").or(c[probe].get("tcpSocket")) else {
                    continue;
                };
                let port = declared
                    .iter()
                    .find(|(proto, n, p)| {
                        proto == "TCP" && (get["port"] == *n || get["port"] == p["name"])
                    })
                    .unwrap_or_else(|| panic!("{what}: {probe} asks an undeclared port"))
                    .1;
                let host = get["host"].as_str().unwrap_or(POD_IP);
                assert!(
                    heard.iter().any(|(proto, ip, n)| proto == "TCP"
                        && u64::from(*n) == port
                        && (ip == host || ip == "0.0.0.0")),
                    "{what}: {probe} asks {host}:{port}, where nothing listens ({heard:?})"
                );
            }
        }
        // Several replicas of a workload with host ports: each on a node of
        // its own, said with a required anti-affinity on the hostname; a
        // Deployment then replaces replicas without a surge, which would
        // find no node on a cluster with as many nodes as replicas.
        let replicas = w["spec"]["replicas"].as_u64().unwrap_or(1);
        if kind(w) != "DaemonSet" && replicas > 1 && !mine.is_empty() {
            let labels = at(w, "/spec/template/metadata/labels");
            let spread = list(
                &pod["affinity"]["podAntiAffinity"]
                    ["requiredDuringSchedulingIgnoredDuringExecution"],
            )
            .iter()
            .any(|t| {
                t["topologyKey"] == "kubernetes.io/hostname"
                    && labels_match(&t["labelSelector"]["matchLabels"], labels)
            });
            assert!(
                spread,
                "{wwhat}: {replicas} replicas with the node's ports {mine:?} need a required pod \
                 anti-affinity on kubernetes.io/hostname"
            );
            if kind(w) == "Deployment" {
                let surge = &w["spec"]["strategy"]["rollingUpdate"]["maxSurge"];
                assert!(
                    *surge == 0 || *surge == "0%" || *surge == "0",
                    "{wwhat}: a rolling update surges by {surge} (default 25%): the extra replica \
                     finds no node when every node already has one"
                );
            }
        }
    }
    assert!(!taken.is_empty(), "no host-network ports at all");
}

#[test]
fn kubernetes_service_variables_are_no_variables_of_the_binaries() {
    // Kubernetes sets <SERVICE>_SERVICE_HOST, <SERVICE>_PORT, … for every
    // Service of the namespace in every weft container, where the binaries
    // read WEFT_* variables: none may be one of theirs (a flag
    // --controller-port would read WEFT_CONTROLLER_PORT, which is
    // udp://IP:7470 there), and the daemons resolve the same
    // configuration with them as without.
    let docs = manifests();
    let injected = service_env(&docs);
    assert!(!injected.is_empty(), "no Service variables");
    let tmp = TempDir::new("deploy-k8s-service-vars");
    let pki = controller_pki(&tmp);
    // weftctl runs in the controller pods too (`kubectl exec`).
    for bin in ["weft-agent", "weft-controller", "weftctl"] {
        let read_vars = variables_read(&weft_tests::bin_path(bin));
        for (k, v) in &injected {
            assert!(
                !read_vars.contains(k),
                "{bin} reads {k}, which Kubernetes sets to {v:?} for a Service in every weft pod: \
                 rename the Service or the variable, or set enableServiceLinks: false"
            );
        }
    }
    for d in daemon_containers(&docs) {
        let (c, program, args, what) = (d.container, d.program, d.args, d.what);
        let resolve = |mut env: BTreeMap<String, String>| {
            if program == "weft-controller" {
                env.insert("WEFT_TLS_DIR".into(), pki.clone());
            }
            let mut a = args.clone();
            a.push("--check-config".into());
            let out = run(&weft_tests::bin_path(&program), &a, &env);
            assert!(
                out.status.success(),
                "{what}: --check-config: {}",
                text(&out.stderr)
            );
            serde_json::from_slice::<Value>(&out.stdout).expect("--check-config JSON")
        };
        assert_eq!(
            resolve(kubelet_env(&docs, c)),
            resolve(container_env(&docs, c)),
            "{what}: the Services' variables change the configuration"
        );
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
