//! The deploy files are what operators run, so they are tested like code.
//! Here CNI (the systemd units in `deploy_systemd`, the rest of the
//! Kubernetes manifests in `deploy_kubernetes`):
//! `deploy/cni/10-weft.conflist` is a network config runtimes load and
//! weft-cni speaks, naming the plugin the image ships and the socket the
//! agent serves; the agent pods' init container, its script run against
//! stand-in directories, installs exactly that plugin into the node's
//! `/opt/cni/bin` and that file (through the ConfigMap kustomize generates
//! from it) into `/etc/cni/net.d`, each by a rename.
//!
//! Needs neither root nor the binaries. `kubectl` (for `kubectl
//! kustomize`) is used when installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use weft_tests::deploy::manifests::{
    at, container, container_env, kind, list, manifests, mounted, name, object, strings, yaml_docs,
    NAMESPACE, WEFT_IMAGE,
};
use weft_tests::deploy::systemd::Unit;
use weft_tests::deploy::{deploy, read, text, which};
use weft_tests::TempDir;

/// The `cniVersion`s weft-cni speaks.
const CNI_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The plugin: the binary a runtime runs for the config's `type`.
const CNI_PLUGIN: &str = "weft-cni";
/// The agent socket weft-cni dials when its config names none.
const CNI_DEFAULT_AGENT_SOCKET: &str = "/run/weft/agent.sock";
/// Where runtimes look for plugins and network configs (containerd's and
/// CRI-O's defaults).
const CNI_BIN_DIR: &str = "/opt/cni/bin";
const CNI_NET_DIR: &str = "/etc/cni/net.d";
/// The files a runtime loads from CNI_NET_DIR (libcni's ConfFiles).
const CNI_CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// The one network config of every runtime, the Kubernetes nodes' included.
fn cni_conflist() -> PathBuf {
    deploy("cni/10-weft.conflist")
}

/// Checks a network config list as a runtime and weft-cni read it: JSON, a
/// cniVersion weft-cni speaks, a valid network name, every plugin typed,
/// the first one without `ipam` (the agent hands out addresses) and with
/// the `portMappings` capability (published ports). Returns the first
/// plugin's `type` and the agent socket it dials.
fn check_conflist(what: &str, source: &str) -> (String, String) {
    let v: Value = serde_json::from_str(source).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    let version = v["cniVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no cniVersion"));
    assert!(
        CNI_VERSIONS.contains(&version),
        "{what}: cniVersion {version:?}, weft-cni speaks {CNI_VERSIONS:?}"
    );
    // CNI's rule for network names: ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$
    let name = v["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no network name"));
    assert!(
        name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
        "{what}: {name:?} is not a CNI network name"
    );
    let plugins = list(&v["plugins"]);
    assert!(!plugins.is_empty(), "{what}: no plugins");
    for p in plugins {
        assert!(
            p["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{what}: a plugin without a type: {p}"
        );
    }
    let first = &plugins[0];
    let ty = first["type"].as_str().unwrap();
    assert!(
        first.get("ipam").is_none(),
        "{what}: {ty} takes its addresses from the agent, an ipam section is ignored"
    );
    assert_eq!(
        first.pointer("/capabilities/portMappings"),
        Some(&Value::Bool(true)),
        "{what}: {ty} publishes the runtime's portMappings"
    );
    let socket = match first.get("agentSocket") {
        None => CNI_DEFAULT_AGENT_SOCKET.to_string(),
        Some(s) => s
            .as_str()
            .filter(|s| s.starts_with('/'))
            .unwrap_or_else(|| panic!("{what}: agentSocket {s} is not an absolute path"))
            .to_string(),
    };
    (ty.to_string(), socket)
}

/// The binaries the image ships (`target/release/NAME` in the Dockerfile).
fn image_binaries() -> BTreeSet<String> {
    read(&deploy("kubernetes/Dockerfile"))
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn cni_config_runs_weft_cni_against_the_hosts_agent() {
    let file = cni_conflist();
    let what = file.display().to_string();
    let (ty, socket) = check_conflist(&what, &read(&file));
    assert_eq!(ty, CNI_PLUGIN, "{what}: the first plugin is weft's");
    assert!(
        image_binaries().contains(&ty),
        "the image (deploy/kubernetes/Dockerfile) does not ship {ty}"
    );
    // On a plain host the agent is the systemd unit's, whose socket is in
    // its RuntimeDirectory.
    let unit = Unit::load("weft-agent.service");
    assert_eq!(
        socket,
        format!("/run/{}/agent.sock", unit.one("RuntimeDirectory")),
        "{what}: weft-cni would dial another socket than the one weft-agent.service serves"
    );
    // The instructions install it under the names the runtimes look for.
    let readme = read(&deploy("cni/README.md"));
    for path in [
        format!("{CNI_BIN_DIR}/{ty}"),
        format!(
            "{CNI_NET_DIR}/{}",
            file.file_name().unwrap().to_str().unwrap()
        ),
    ] {
        assert!(
            readme.contains(&path),
            "deploy/cni/README.md does not install {path}"
        );
    }
}

/// The ConfigMaps kustomize generates for deploy/kubernetes, from the
/// `configMapGenerator`s of its kustomization and of the components it
/// lists: name → (key → file).
fn generated_config_maps() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let base = deploy("kubernetes");
    let kust = &yaml_docs(&base.join("kustomization.yaml"))[0];
    let mut dirs = vec![base.clone()];
    dirs.extend(strings(&kust["components"]).iter().map(|c| base.join(c)));
    let mut out = BTreeMap::new();
    for dir in dirs {
        let file = dir.join("kustomization.yaml");
        let k = &yaml_docs(&file)[0];
        for g in list(&k["configMapGenerator"]) {
            let name = g["name"].as_str().unwrap_or_else(|| {
                panic!("{}: a configMapGenerator without a name", file.display())
            });
            assert_eq!(
                g["namespace"],
                NAMESPACE,
                "{}: ConfigMap {name} is generated outside {NAMESPACE}",
                file.display()
            );
            let mut files = BTreeMap::new();
            for f in strings(&g["files"]) {
                let (key, rel) = match f.split_once('=') {
                    Some((k, r)) => (k.to_string(), r.to_string()),
                    None => (
                        Path::new(&f)
                            .file_name()
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .to_string(),
                        f.clone(),
                    ),
                };
                let path = dir.join(&rel);
                let real = path
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{}: {rel}: {e}", file.display()));
                assert!(
                    real.starts_with(dir.canonicalize().unwrap()),
                    "{}: {rel} is outside the kustomization's directory, which kustomize refuses",
                    file.display()
                );
                files.insert(key, path);
            }
            assert!(
                out.insert(name.to_string(), files).is_none(),
                "two configMapGenerators make ConfigMap {name}"
            );
        }
    }
    out
}

/// `s` with every path at or under one of `map`'s container paths moved to
/// its stand-in directory (the longest match, in one pass).
fn rebase_paths(s: &str, map: &[(String, PathBuf)]) -> String {
    fn path_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || "/._-+@%~".contains(c)
    }
    let mut out = String::new();
    let mut prev = None;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        // A path starts at a '/' that does not continue a word.
        let hit = if c == '/' && !prev.is_some_and(path_char) {
            map.iter()
                .filter(|(p, _)| {
                    rest.strip_prefix(p.as_str())
                        .is_some_and(|r| r.chars().next().is_none_or(|n| n == '/' || !path_char(n)))
                })
                .max_by_key(|(p, _)| p.len())
        } else {
            None
        };
        match hit {
            Some((p, dir)) => {
                out.push_str(dir.to_str().unwrap());
                rest = &rest[p.len()..];
                prev = p.chars().last();
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
                prev = Some(c);
            }
        }
    }
    out
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_str().unwrap().to_string());
            }
        }
    }
    out
}

#[test]
fn kubernetes_agent_pods_install_weft_cni_on_every_node() {
    use std::os::unix::fs::PermissionsExt;

    let docs = manifests();
    let ds = object(&docs, "DaemonSet", "weft-agent");
    let pod = at(ds, "/spec/template/spec");
    let volumes = list(&pod["volumes"]);
    let volume = |m: &Value| {
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("DaemonSet weft-agent: no volume {}", m["name"]))
    };
    // The init container that writes the node's plugin directory.
    let installers: Vec<&Value> = list(&pod["initContainers"])
        .iter()
        .filter(|c| {
            list(&c["volumeMounts"])
                .iter()
                .any(|m| volume(m).pointer("/hostPath/path") == Some(&Value::from(CNI_BIN_DIR)))
        })
        .collect();
    let [init] = installers.as_slice() else {
        panic!(
            "DaemonSet weft-agent: {} init containers mount the node's {CNI_BIN_DIR}, expected one",
            installers.len()
        );
    };
    let what = format!("DaemonSet weft-agent/{}", init["name"].as_str().unwrap());
    assert!(
        init["image"]
            .as_str()
            .unwrap_or_default()
            .starts_with(WEFT_IMAGE),
        "{what}: the plugin comes from the weft image"
    );
    let mut words = strings(&init["command"]);
    words.extend(strings(&init["args"]));
    let script = match words.as_slice() {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" => script.clone(),
        _ => panic!("{what}: expected /bin/sh -c SCRIPT, found {words:?}"),
    };

    // Stand-ins for what the container sees: each host path a directory
    // under node/, each ConfigMap its generated files, the image's
    // /usr/local/bin the binaries the Dockerfile installs.
    let tmp = TempDir::new("deploy-install-cni");
    let root = tmp.path().to_path_buf();
    let node = root.join("node");
    let generated = generated_config_maps();
    let mut map: Vec<(String, PathBuf)> = Vec::new();
    let mut mount_of = BTreeMap::new();
    for m in list(&init["volumeMounts"]) {
        let mount = m["mountPath"].as_str().expect("mountPath").to_string();
        let v = volume(m);
        let dir = if let Some(p) = v.pointer("/hostPath/path").and_then(Value::as_str) {
            mount_of.insert(p.to_string(), mount.clone());
            node.join(p.trim_start_matches('/'))
        } else if let Some(n) = v.pointer("/configMap/name").and_then(Value::as_str) {
            let files = generated.get(n).unwrap_or_else(|| {
                panic!(
                    "{what}: ConfigMap {n} comes from no configMapGenerator of \
                     deploy/kubernetes or its components"
                )
            });
            let d = root.join("configmap").join(n);
            std::fs::create_dir_all(&d).unwrap();
            for (key, file) in files {
                std::fs::copy(file, d.join(key)).unwrap();
            }
            d
        } else {
            panic!(
                "{what}: mounts {}, neither a host path nor a ConfigMap",
                m["name"]
            );
        };
        std::fs::create_dir_all(&dir).unwrap();
        map.push((mount, dir));
    }
    let image_bin = root.join("image/usr/local/bin");
    std::fs::create_dir_all(&image_bin).unwrap();
    let shipped = image_binaries();
    let stand_in = |b: &str, generation: u32| {
        let p = image_bin.join(b);
        std::fs::write(&p, format!("#!/bin/sh\n# stand-in for {b}, {generation}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    for b in &shipped {
        stand_in(b, 1);
    }
    map.push(("/usr/local/bin".to_string(), image_bin.clone()));
    let rebased = rebase_paths(&script, &map);
    // Never touch this machine's own directories: every absolute path the
    // script names must now be a stand-in.
    let root_str = root.to_str().unwrap();
    for w in rebased.split(|c: char| !(c.is_ascii_alphanumeric() || "/._-+@%~".contains(c))) {
        assert!(
            !w.starts_with('/') || w.starts_with(root_str),
            "{what}: the script names {w}, which is in no volume of the pod nor the image's \
             /usr/local/bin"
        );
    }
    let run_script = || {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&rebased)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: the script fails: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    };

    // It installs the config and the plugin it names, nothing else; the
    // second run (a restarted pod, a new image) replaces both.
    let conflist = cni_conflist();
    let config_name = conflist.file_name().unwrap().to_str().unwrap().to_string();
    let mut installed_plugin = None;
    for generation in [1, 2] {
        if generation == 2 {
            for b in &shipped {
                stand_in(b, 2);
            }
        }
        run_script();
        let installed_config = node
            .join(CNI_NET_DIR.trim_start_matches('/'))
            .join(&config_name);
        let installed = std::fs::read_to_string(&installed_config)
            .unwrap_or_else(|e| panic!("{what}: no {CNI_NET_DIR}/{config_name} on the node: {e}"));
        assert_eq!(
            installed,
            read(&conflist),
            "{what}: installs another config than deploy/cni/{config_name}"
        );
        let (ty, socket) =
            check_conflist(&format!("{what}: {CNI_NET_DIR}/{config_name}"), &installed);
        assert_eq!(
            files_under(&node),
            BTreeSet::from([
                format!("{}/{ty}", CNI_BIN_DIR.trim_start_matches('/')),
                format!("{}/{config_name}", CNI_NET_DIR.trim_start_matches('/')),
            ]),
            "{what}: the node should get the plugin the config names ({ty}) in {CNI_BIN_DIR} and \
             the config in {CNI_NET_DIR}, and nothing else (no temporary files)"
        );
        assert!(
            shipped.contains(&ty),
            "{what}: the config names {ty}, which the image does not ship"
        );
        let plugin = node.join(CNI_BIN_DIR.trim_start_matches('/')).join(&ty);
        assert_eq!(
            std::fs::read(&plugin).unwrap(),
            std::fs::read(image_bin.join(&ty)).unwrap(),
            "{what}: {CNI_BIN_DIR}/{ty} is not the image's /usr/local/bin/{ty} (run {generation})"
        );
        let mode = std::fs::metadata(&plugin).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o111,
            0o111,
            "{what}: {CNI_BIN_DIR}/{ty} is not executable"
        );
        installed_plugin = Some((ty, socket));
    }
    let (ty, socket) = installed_plugin.unwrap();

    // Both land by a rename from the same directory: a runtime never
    // reads half a config, a plugin being run keeps its file.
    for (host_dir, file) in [
        (CNI_BIN_DIR, ty.as_str()),
        (CNI_NET_DIR, config_name.as_str()),
    ] {
        let dest = format!("{}/{file}", mount_of[host_dir]);
        let writes: Vec<Vec<&str>> = script
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w.contains(&dest.as_str()))
            .collect();
        assert!(!writes.is_empty(), "{what}: the script never names {dest}");
        for w in writes {
            assert!(
                w[0] == "mv" && w.last() == Some(&dest.as_str()) && w.len() >= 3,
                "{what}: `{}` writes {dest} in place: a runtime may read it half-written",
                w.join(" ")
            );
            let src = Path::new(w[w.len() - 2]);
            assert_eq!(
                src.parent(),
                Path::new(&dest).parent(),
                "{what}: `{}` moves from another directory: a copy, not a rename",
                w.join(" ")
            );
            assert!(
                host_dir != CNI_NET_DIR
                    || !src
                        .extension()
                        .is_some_and(|e| CNI_CONFIG_EXTENSIONS.iter().any(|x| e == *x)),
                "{what}: the runtime would load the temporary {}",
                src.display()
            );
        }
    }

    // The plugin runs on the node and dials the agent's socket there:
    // the agent's run directory must be that host path.
    let agent = container(ds, "weft-agent");
    let env = container_env(&docs, agent);
    let run_dir = env
        .get("WEFT_RUN_DIR")
        .unwrap_or_else(|| panic!("DaemonSet weft-agent: no WEFT_RUN_DIR"));
    let (v, _) = mounted(ds, agent, run_dir)
        .unwrap_or_else(|| panic!("DaemonSet weft-agent: {run_dir} is not mounted"));
    let host_run_dir = v["hostPath"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("DaemonSet weft-agent: {run_dir} is not a host path"));
    assert_eq!(
        Path::new(&socket),
        Path::new(host_run_dir).join("agent.sock"),
        "{what}: weft-cni dials {socket}, the agent serves the node's {host_run_dir}/agent.sock"
    );

    // kubectl builds the ConfigMap from the file and points the pods at it.
    let Some(kubectl) = which("kubectl") else {
        eprintln!(
            "NOTE: kubectl not found: the ConfigMap weft-cni was NOT built by `kubectl kustomize`"
        );
        return;
    };
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(deploy("kubernetes"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        text(&out.stderr)
    );
    let built: Vec<Value> = serde_norway::Deserializer::from_str(&text(&out.stdout))
        .map(|de| Value::deserialize(de).expect("kubectl kustomize: YAML"))
        .filter(|v| !v.is_null())
        .collect();
    let built_ds = built
        .iter()
        .find(|v| kind(v) == "DaemonSet" && name(v) == "weft-agent")
        .expect("kubectl kustomize: no DaemonSet weft-agent");
    for m in list(&init["volumeMounts"]) {
        let Some(n) = volume(m).pointer("/configMap/name").and_then(Value::as_str) else {
            continue;
        };
        let built_name = list(&built_ds["spec"]["template"]["spec"]["volumes"])
            .iter()
            .find(|v| v["name"] == m["name"])
            .and_then(|v| v.pointer("/configMap/name"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("kubectl kustomize: the DaemonSet lost volume {}", m["name"]))
            .to_string();
        assert!(
            built_name.starts_with(&format!("{n}-")),
            "kubectl kustomize: volume {} refers to {built_name}, not the generated {n}",
            m["name"]
        );
        let cm = built
            .iter()
            .find(|v| kind(v) == "ConfigMap" && name(v) == built_name)
            .unwrap_or_else(|| panic!("kubectl kustomize: no ConfigMap {built_name}"));
        assert_eq!(cm["metadata"]["namespace"], NAMESPACE);
        for (key, file) in &generated[n] {
            assert_eq!(
                cm["data"][key].as_str(),
                Some(read(file).as_str()),
                "kubectl kustomize: ConfigMap {built_name}: {key} is not {}",
                file.display()
            );
        }
    }
}
