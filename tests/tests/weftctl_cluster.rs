//! Every etcd-backed `weftctl` command (and `certs`), in table and `-o json`
//! form, against the real etcd of a cluster lab: what each prints, what it
//! writes to etcd (read back with etcdctl), and that every refusal is one
//! `weftctl: …` line on stderr, a non-zero exit, and with `-o json` exactly
//! one `{"error": …}` object on stdout.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_tests::cli::{check_failure, fails_with, json_with, table_with};
use weft_tests::cluster::etcd_url;
use weft_tests::{Host, Lab, LabOpts};

/// [`fails_with`] against the lab's etcd.
fn fails(lab: &Lab, args: &[&str]) -> (i32, String) {
    fails_with(|a| lab.weftctl_etcd(a), args)
}

fn table(lab: &Lab, args: &[&str]) -> String {
    table_with(|a| lab.weftctl_etcd(a), args)
}

/// Like [`Lab::weftctl_etcd_json`], and also insists on a quiet stderr and
/// a single line.
fn json_out(lab: &Lab, args: &[&str]) -> Value {
    json_with(|a| lab.weftctl_etcd(a), args)
}

/// The whitespace-separated cells of each line of a table.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Key → value of everything under `/weft/`, read with etcdctl.
fn etcd(lab: &Lab) -> BTreeMap<String, Value> {
    lab.etcd_dump().into_iter().collect()
}

fn subnet_key(net: &str) -> String {
    format!("/weft/subnets/{}", net.replace('/', "-"))
}

/// The peers (name → (subnet, public ip)) an agent reports.
fn peers(h: &Host) -> BTreeMap<String, (String, String)> {
    peers_of(&h.status())
}

fn peers_of(s: &weft_tests::Status) -> BTreeMap<String, (String, String)> {
    s.peers
        .iter()
        .map(|p| (p.name.clone(), (p.subnet.clone(), p.public_ip.to_string())))
        .collect()
}

fn wait_peers(h: &Host, want: &BTreeMap<String, (String, String)>) {
    h.wait_status(weft_tests::WAIT, &format!("the peers {want:?}"), |s| {
        &peers_of(s) == want
    });
}

/// The VTEP MAC the agent saved in its state directory.
fn saved_vtep_mac(h: &Host) -> String {
    let p = h.state_dir.join("node.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["vtep_mac"]
        .as_str()
        .expect("vtep_mac in node.json")
        .to_string()
}

#[test]
fn certs_init_and_issue_table_json_and_refusals() {
    let lab = Lab::new(LabOpts::hosts(1));
    let h1 = lab.host(1);
    let run = |a: &[&str]| h1.weftctl(a);

    // init: CA files with the right modes, the paths in the message.
    let pki = lab.dir.join("pki-a");
    let d = pki.display().to_string();
    let out = table_with(run, &["certs", "init", "--dir", &d]);
    assert_eq!(
        out,
        format!("created cluster CA {d}/ca.pem (key {d}/ca-key.pem, keep it offline)\n")
    );
    assert_eq!(entries(&pki), ["ca-key.pem", "ca.pem"]);
    assert_eq!(mode(&pki.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&pki.join("ca.pem")), 0o644);
    assert_eq!(mode(&pki), 0o700);
    let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(pki.join("ca-key.pem")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert!(
        ca_key.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{ca_key}"
    );

    // A second init is refused, names the file, and changes nothing.
    let (code, msg) = fails_with(run, &["certs", "init", "--dir", &d]);
    assert_eq!(code, 1);
    assert_eq!(
        msg,
        format!("{d}/ca.pem already exists; refusing to overwrite the cluster CA")
    );
    assert_eq!(std::fs::read_to_string(pki.join("ca.pem")).unwrap(), ca);
    assert_eq!(
        std::fs::read_to_string(pki.join("ca-key.pem")).unwrap(),
        ca_key
    );

    // init -o json (the flag also works after the subcommand).
    let pki_b = lab.dir.join("nested/pki-b");
    let db = pki_b.display().to_string();
    let v = json_with(run, &["certs", "init", "--dir", &db]);
    assert_eq!(
        v,
        json!({"ca": format!("{db}/ca.pem"), "ca_key": format!("{db}/ca-key.pem")})
    );
    assert_eq!(mode(&pki_b.join("ca-key.pem")), 0o600);
    let (_, msg) = check_failure(
        "certs init (json after)",
        &run(&["certs", "init", "--dir", &db, "-o", "json"]),
        true,
    );
    assert!(msg.contains(&format!("{db}/ca.pem")), "{msg}");

    // issue without a CA: points at `certs init`, creates nothing.
    let empty = lab.dir.join("no-ca");
    let de = empty.display().to_string();
    let (code, msg) = fails_with(
        run,
        &[
            "certs", "issue", "--dir", &de, "--name", "n1", "--role", "agent",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(
        msg,
        format!("no CA in {de}: run `weftctl certs init --dir {de}` first")
    );
    assert!(!empty.exists(), "issue without a CA created {de}");

    // A bad node name is refused before anything is written.
    let (code, msg) = fails_with(
        run,
        &[
            "certs", "issue", "--dir", &d, "--name", "Bad_Name", "--role", "agent",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        msg.starts_with("invalid node name: ") && msg.contains("Bad_Name"),
        "{msg}"
    );
    assert_eq!(entries(&pki), ["ca-key.pem", "ca.pem"]);

    // An unknown role is a usage error on one line (clap's, without usage).
    let (code, msg) = fails_with(
        run,
        &[
            "certs", "issue", "--dir", &d, "--name", "n1", "--role", "bogus",
        ],
    );
    assert_eq!(code, 2);
    assert_eq!(
        msg,
        "invalid value 'bogus' for '--role <ROLE>': unknown role \"bogus\": expected \"agent\" or \"controller\" (see weftctl --help)"
    );
    // So is a missing --name.
    let (code, msg) = fails_with(run, &["certs", "issue", "--dir", &d, "--role", "agent"]);
    assert_eq!(code, 2);
    assert!(msg.contains("--name"), "{msg}");
    assert_eq!(entries(&pki), ["ca-key.pem", "ca.pem"]);

    // issue (table): the node directory with the CA, key 0600.
    let out = table_with(
        run,
        &[
            "certs", "issue", "--dir", &d, "--name", "n1", "--role", "agent",
        ],
    );
    assert_eq!(
        out,
        format!("issued agent certificate for n1 in {d}/n1 (ca.pem, cert.pem, key.pem)\n")
    );
    let n1 = pki.join("n1");
    assert_eq!(entries(&n1), ["ca.pem", "cert.pem", "key.pem"]);
    assert_eq!(entries(&pki), ["ca-key.pem", "ca.pem", "n1"]);
    assert_eq!(mode(&n1.join("key.pem")), 0o600);
    assert_eq!(mode(&n1.join("cert.pem")), 0o644);
    assert_eq!(mode(&n1), 0o700);
    assert_eq!(std::fs::read_to_string(n1.join("ca.pem")).unwrap(), ca);
    let cert = std::fs::read_to_string(n1.join("cert.pem")).unwrap();
    let key = std::fs::read_to_string(n1.join("key.pem")).unwrap();

    // Issuing again is refused and keeps the old certificate.
    let (code, msg) = fails_with(
        run,
        &[
            "certs", "issue", "--dir", &d, "--name", "n1", "--role", "agent",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(
        msg,
        format!("{d}/n1/cert.pem already exists; pass --force to replace it")
    );
    assert_eq!(std::fs::read_to_string(n1.join("cert.pem")).unwrap(), cert);

    // --force replaces it (json form; repeated --ip given once in the SANs).
    let v = json_with(
        run,
        &[
            "certs",
            "issue",
            "--dir",
            &d,
            "--name",
            "n1",
            "--role",
            "controller",
            "--ip",
            "198.18.0.9",
            "--ip",
            "10.1.2.3",
            "--force",
        ],
    );
    assert_eq!(
        v,
        json!({"name": "n1", "role": "controller", "dir": format!("{d}/n1"),
               "ips": ["198.18.0.9", "10.1.2.3"]})
    );
    let cert2 = std::fs::read_to_string(n1.join("cert.pem")).unwrap();
    let key2 = std::fs::read_to_string(n1.join("key.pem")).unwrap();
    assert_ne!(cert2, cert, "--force did not replace the certificate");
    assert_ne!(key2, key, "--force did not replace the key");
    assert_eq!(mode(&n1.join("key.pem")), 0o600);
    // No staging directories are left behind.
    assert_eq!(entries(&pki), ["ca-key.pem", "ca.pem", "n1"]);

    // issue -o json into the second PKI.
    let v = json_with(
        run,
        &[
            "certs", "issue", "--dir", &db, "--name", "c-1", "--role", "agent",
        ],
    );
    assert_eq!(
        v,
        json!({"name": "c-1", "role": "agent", "dir": format!("{db}/c-1"), "ips": []})
    );
    assert_eq!(
        entries(&pki_b.join("c-1")),
        ["ca.pem", "cert.pem", "key.pem"]
    );
}

#[test]
fn cluster_init_and_show_refusals_and_etcd_unreachable() {
    let lab = Lab::new(LabOpts::cluster(1, 1));
    let initial =
        json!({"cidr": "10.244.0.0/16", "subnet_len": 24, "vni": 1, "port": 4789, "mtu": null});

    // show, both forms.
    assert_eq!(json_out(&lab, &["cluster", "show"]), initial);
    assert_eq!(
        table(&lab, &["cluster", "show"]),
        "cidr:        10.244.0.0/16\n\
         subnet-len:  24 (256 subnets, 0 held or reserved)\n\
         vni:         1\n\
         port:        4789\n\
         mtu:         derived (each host's underlay MTU - 50)\n"
    );

    // Re-init with the same values: unchanged.
    let out = table(&lab, &["cluster", "init", "--cidr", "10.244.0.0/16"]);
    assert_eq!(
        out,
        "cluster config unchanged\n\
         cidr:        10.244.0.0/16\n\
         subnet-len:  24 (256 subnets)\n\
         vni:         1\n\
         port:        4789\n\
         mtu:         derived (each host's underlay MTU - 50)\n"
    );
    assert_eq!(
        json_out(&lab, &["cluster", "init", "--cidr", "10.244.0.0/16"]),
        initial
    );

    // Configs that cannot work are usage errors and change nothing.
    let base = ["cluster", "init", "--cidr", "10.244.0.0/16"];
    for (extra, want) in [
        (
            &["--subnet-len", "16"][..],
            "subnet-len 16 must be longer than the cluster prefix /16",
        ),
        (
            &["--subnet-len", "31"],
            "subnet-len 31 leaves no address for namespaces; use 30 or less",
        ),
        (&["--vni", "0"], "vni 0 is out of range 1..16777215"),
        (
            &["--vni", "16777216"],
            "vni 16777216 is out of range 1..16777215",
        ),
        (&["--port", "0"], "port 0 is not a usable VXLAN port"),
        (&["--mtu", "100"], "mtu 100 is out of range 576..9000"),
        (&["--mtu", "9001"], "mtu 9001 is out of range 576..9000"),
    ] {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        assert_eq!(fails(&lab, &a), (2, want.to_string()), "{a:?}");
    }
    for (cidr, want) in [
        (
            "10.244.1.0/16",
            "cidr 10.244.1.0/16: host bits are set; did you mean 10.244.0.0/16?",
        ),
        (
            "127.0.0.0/8",
            "cidr 127.0.0.0/8 is not usable for namespaces (loopback, multicast, link-local or 0.0.0.0/8)",
        ),
    ] {
        assert_eq!(
            fails(&lab, &["cluster", "init", "--cidr", cidr]),
            (2, want.to_string())
        );
    }
    // clap's own errors: a value that is not a number, a missing --cidr.
    let (code, msg) = fails(
        &lab,
        &["cluster", "init", "--cidr", "10.244.0.0/16", "--vni", "x"],
    );
    assert_eq!(code, 2);
    assert!(
        msg.contains("--vni") && msg.ends_with("(see weftctl --help)"),
        "{msg}"
    );
    let (code, msg) = fails(&lab, &["cluster", "init"]);
    assert_eq!(code, 2);
    assert!(msg.contains("--cidr"), "{msg}");
    assert_eq!(json_out(&lab, &["cluster", "show"]), initial);
    assert_eq!(etcd(&lab)["/weft/config"], initial);

    // Another prefix is another (uninitialised) cluster.
    let (code, msg) = fails(&lab, &["cluster", "show", "--etcd-prefix", "/other"]);
    assert_eq!(code, 1);
    assert_eq!(
        msg,
        "the cluster is not initialised: run `weftctl cluster init --cidr CIDR`"
    );
    assert!(msg.contains("weftctl cluster init"));
    let (code, msg) = fails(
        &lab,
        &[
            "--etcd-prefix",
            "/other",
            "subnet",
            "reserve",
            "10.244.3.0/24",
        ],
    );
    assert_eq!((code, msg.contains("not initialised")), (1, true), "{msg}");
    let (code, msg) = fails(&lab, &["cluster", "show", "--etcd-prefix", "weft"]);
    assert_eq!(code, 2);
    assert_eq!(
        msg,
        "--etcd-prefix \"weft\": expected an absolute key prefix like /weft"
    );
    let other =
        json!({"cidr": "10.250.0.0/16", "subnet_len": 26, "vni": 9, "port": 8472, "mtu": 1400});
    let out = table(
        &lab,
        &[
            "--etcd-prefix",
            "/other",
            "cluster",
            "init",
            "--cidr",
            "10.250.0.0/16",
            "--subnet-len",
            "26",
            "--vni",
            "9",
            "--port",
            "8472",
            "--mtu",
            "1400",
        ],
    );
    assert!(out.starts_with("initialised cluster\n"), "{out}");
    assert!(out.contains("subnet-len:  26 (1024 subnets)\n"), "{out}");
    assert!(out.contains("mtu:         1400\n"), "{out}");
    assert_eq!(
        json_out(&lab, &["cluster", "show", "--etcd-prefix", "/other/"]),
        other
    );
    // /weft is untouched by it.
    assert_eq!(json_out(&lab, &["cluster", "show"]), initial);

    // With a host holding a subnet, the layout cannot change.
    let _a1 = lab.host(1).start_agent(&[]);
    let s1 = lab.host(1).status().subnet;
    let (code, msg) = fails(&lab, &["cluster", "init", "--cidr", "10.245.0.0/16"]);
    assert_eq!(code, 1);
    assert_eq!(
        msg,
        "cannot change cidr/subnet-len from 10.244.0.0/16 /24 to 10.245.0.0/16 /24: 1 subnets are held or reserved (remove the hosts and reservations first)"
    );
    let (code, msg) = fails(
        &lab,
        &[
            "cluster",
            "init",
            "--cidr",
            "10.244.0.0/16",
            "--subnet-len",
            "25",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        msg.starts_with(
            "cannot change cidr/subnet-len from 10.244.0.0/16 /24 to 10.244.0.0/16 /25"
        ),
        "{msg}"
    );
    assert_eq!(json_out(&lab, &["cluster", "show"]), initial);
    assert_eq!(
        etcd(&lab)[&subnet_key(&s1)],
        json!({"host": "h1", "reserved": false})
    );

    // vni, port and mtu may change while hosts exist.
    let out = table(
        &lab,
        &["cluster", "init", "--cidr", "10.244.0.0/16", "--vni", "42"],
    );
    assert!(
        out.starts_with("updated cluster config; agents apply it when they next register\n"),
        "{out}"
    );
    assert!(out.contains("vni:         42\n"), "{out}");
    let changed =
        json!({"cidr": "10.244.0.0/16", "subnet_len": 24, "vni": 42, "port": 4789, "mtu": 1450});
    assert_eq!(
        json_out(
            &lab,
            &[
                "cluster",
                "init",
                "--cidr",
                "10.244.0.0/16",
                "--vni",
                "42",
                "--mtu",
                "1450"
            ]
        ),
        changed
    );
    assert_eq!(json_out(&lab, &["cluster", "show"]), changed);
    assert_eq!(etcd(&lab)["/weft/config"], changed);
    assert_eq!(
        table(&lab, &["cluster", "show"]),
        "cidr:        10.244.0.0/16\n\
         subnet-len:  24 (256 subnets, 1 held or reserved)\n\
         vni:         42\n\
         port:        4789\n\
         mtu:         1450\n"
    );

    // Endpoints that are not URLs: usage errors naming them.
    let (code, msg) = fails(&lab, &["cluster", "show", "--etcd-endpoints", "notaurl"]);
    assert_eq!(code, 2);
    assert_eq!(
        msg,
        "--etcd-endpoints \"notaurl\": expected a URL like http://127.0.0.1:2379"
    );
    let raw = |a: &[&str]| lab.weftctl_plain(a);
    let (code, msg) = fails_with(raw, &["--etcd-endpoints", "notaurl", "host", "list"]);
    assert_eq!((code, msg.contains("\"notaurl\"")), (2, true), "{msg}");
    let (code, msg) = fails_with(
        raw,
        &["--etcd-endpoints", "http://bad host:2379", "subnet", "list"],
    );
    assert_eq!(code, 2);
    assert_eq!(
        msg,
        "--etcd-endpoints \"http://bad host:2379\": not HOST:PORT after the scheme; \
         expected a URL like http://127.0.0.1:2379"
    );

    // An address where nothing answers: a bounded, clear failure.
    let t0 = Instant::now();
    let (code, msg) = check_failure(
        "cluster show (no etcd there)",
        &lab.weftctl_plain(&[
            "-o",
            "json",
            "--etcd-endpoints",
            "http://198.18.0.99:2379",
            "cluster",
            "show",
        ]),
        true,
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(code, 1);
    assert!(
        msg.starts_with("cannot reach etcd at http://198.18.0.99:2379: "),
        "{msg}"
    );

    // etcd goes away: every etcd command fails fast, naming etcd's URL.
    assert!(lab.kill_held("etcd"));
    let want = format!("cannot reach etcd at {}: ", etcd_url());
    for args in [
        &["cluster", "show"][..],
        &["cluster", "init", "--cidr", "10.244.0.0/16"],
        &["host", "list"],
        &["host", "show", "h1"],
        &["host", "rm", "h1"],
        &["subnet", "list"],
        &["subnet", "reserve", "10.244.3.0/24"],
        &["subnet", "release", "10.244.3.0/24"],
    ] {
        let t0 = Instant::now();
        let (code, msg) = fails(&lab, args);
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            t0.elapsed()
        );
        assert_eq!(code, 1, "{args:?}");
        assert!(msg.starts_with(&want), "{args:?}: {msg}");
    }
}

#[test]
fn host_list_show_rm_and_peers_drop_removed_hosts() {
    let lab = Lab::new(LabOpts::cluster(3, 1));
    let mut agents: Vec<_> = lab.hosts().iter().map(|h| h.start_agent(&[])).collect();
    let subnet: BTreeMap<String, String> = lab
        .hosts()
        .iter()
        .map(|h| (h.name.clone(), h.status().subnet))
        .collect();
    let expect = |h: &Host| {
        json!({
            "name": h.name,
            "public_ip": h.ip.to_string(),
            "subnet": subnet[&h.name],
            "vtep_mac": saved_vtep_mac(h),
        })
    };
    // The record without the volatile times and the connection (every
    // agent is connected, to the one controller).
    let strip = |v: &Value| {
        let mut v = v.clone();
        let o = v.as_object_mut().expect("host object");
        assert!(o.remove("last_seen").is_some_and(|t| t.is_u64()), "{o:?}");
        if o.contains_key("connected") {
            assert_eq!(o.remove("connected"), Some(json!(true)), "{o:?}");
            assert!(
                o.remove("controller").is_some_and(|c| c.is_string()),
                "{o:?}"
            );
            assert!(
                o.remove("connected_since").is_some_and(|t| t.is_u64()),
                "{o:?}"
            );
        }
        v
    };

    // list -o json: every host with what etcd and the agents say.
    let list = json_out(&lab, &["host", "list"]);
    let list = list.as_array().expect("host list is an array");
    assert_eq!(
        list.iter().map(strip).collect::<Vec<_>>(),
        lab.hosts().iter().map(expect).collect::<Vec<_>>()
    );
    let dump = etcd(&lab);
    for (h, v) in lab.hosts().iter().zip(list) {
        assert_eq!(strip(&dump[&format!("/weft/hosts/{}", h.name)]), strip(v));
    }

    // list (table).
    let t = rows(&table(&lab, &["host", "list"]));
    assert_eq!(
        t[0],
        [
            "NAME",
            "SUBNET",
            "PUBLIC-IP",
            "VTEP-MAC",
            "CONNECTED",
            "CONTROLLER",
            "LAST-SEEN"
        ]
    );
    assert_eq!(t.len(), 4, "{t:?}");
    for (h, r) in lab.hosts().iter().zip(&t[1..]) {
        assert_eq!(r.len(), 7, "{r:?}");
        assert_eq!(
            r[..4],
            [
                h.name.clone(),
                subnet[&h.name].clone(),
                h.ip.to_string(),
                saved_vtep_mac(h)
            ]
        );
        assert!(r[4] == "yes" && r[6] == "now", "{r:?}");
    }

    // show, both forms.
    let h2 = lab.host(2);
    let v = json_out(&lab, &["host", "show", "h2"]);
    assert_eq!(strip(&v), expect(h2));
    let t = table(&lab, &["host", "show", "h2"]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "name:        h2".to_string(),
            format!("subnet:      {}", subnet["h2"]),
            format!("public ip:   {}", h2.ip),
            format!("vtep mac:    {}", saved_vtep_mac(h2)),
        ]
    );
    assert!(
        lines.len() == 6
            && lines[4].starts_with("connected:   yes, to controller ")
            && lines[5] == "last seen:   now",
        "{t}"
    );

    // Unknown and invalid names.
    assert_eq!(
        fails(&lab, &["host", "show", "nope"]),
        (1, "no host named \"nope\"".to_string())
    );
    assert_eq!(
        fails(&lab, &["host", "rm", "nope"]),
        (1, "no host named \"nope\"".to_string())
    );
    for cmd in ["show", "rm"] {
        let (code, msg) = fails(&lab, &["host", cmd, "Bad_Name"]);
        assert_eq!(code, 2);
        assert!(msg.contains("Bad_Name"), "{msg}");
    }
    let (code, msg) = fails(&lab, &["host", "show"]);
    assert_eq!(code, 2);
    assert!(msg.contains("<NAME>"), "{msg}");
    assert_eq!(
        json_out(&lab, &["host", "list"]).as_array().unwrap().len(),
        3
    );

    // h2 sees both others.
    let peer = |h: &Host| (subnet[&h.name].clone(), h.ip.to_string());
    let all_but = |me: &str| -> BTreeMap<_, _> {
        lab.hosts()
            .iter()
            .filter(|h| h.name != me)
            .map(|h| (h.name.clone(), peer(h)))
            .collect()
    };
    wait_peers(h2, &all_but("h2"));

    // h1 stops: a stop is not a removal (its lease is 24 h).
    assert!(agents[0].stop().success());
    assert!(etcd(&lab).contains_key("/weft/hosts/h1"));
    assert_eq!(peers(h2), all_but("h2"));

    // host rm h1 (table): gone from etcd, from the list, and from h2's peers.
    let out = table(&lab, &["host", "rm", "h1"]);
    assert_eq!(
        out,
        format!(
            "removed host h1; subnet {} is free unless reserved (an agent still running there registers again)\n",
            subnet["h1"]
        )
    );
    let dump = etcd(&lab);
    assert!(!dump.contains_key("/weft/hosts/h1"), "{dump:?}");
    assert!(!dump.contains_key(&subnet_key(&subnet["h1"])), "{dump:?}");
    assert!(dump.contains_key("/weft/hosts/h2") && dump.contains_key("/weft/hosts/h3"));
    let names: Vec<Value> = json_out(&lab, &["host", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].clone())
        .collect();
    assert_eq!(names, [json!("h2"), json!("h3")]);
    let t = rows(&table(&lab, &["host", "list"]));
    assert_eq!(
        t.iter().skip(1).map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["h2", "h3"]
    );
    let mut want = all_but("h2");
    want.remove("h1");
    wait_peers(h2, &want);
    assert_eq!(
        fails(&lab, &["host", "show", "h1"]),
        (1, "no host named \"h1\"".to_string())
    );
    assert_eq!(
        fails(&lab, &["host", "rm", "h1"]),
        (1, "no host named \"h1\"".to_string())
    );
    let sl = json_out(&lab, &["subnet", "list"]);
    assert!(
        !sl.as_array()
            .unwrap()
            .iter()
            .any(|s| s["subnet"] == subnet["h1"].as_str()),
        "{sl}"
    );

    // host rm -o json (h3, stopped): prints the removed record.
    assert!(agents[2].stop().success());
    let v = json_out(&lab, &["host", "rm", "h3"]);
    assert_eq!(strip(&v), expect(lab.host(3)));
    let dump = etcd(&lab);
    assert_eq!(
        dump.keys()
            .filter(|k| !k.starts_with("/weft/agents/") && !k.starts_with("/weft/endpoints/"))
            .cloned()
            .collect::<Vec<_>>(),
        [
            "/weft/config".to_string(),
            "/weft/hosts/h2".to_string(),
            subnet_key(&subnet["h2"])
        ]
    );
    wait_peers(h2, &BTreeMap::new());
    let t = rows(&table(&lab, &["host", "list"]));
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(t[1][0], "h2");
}

#[test]
fn subnet_list_reserve_release_and_pinned_subnets() {
    let lab = Lab::new(LabOpts::cluster(2, 1));
    const PIN: &str = "10.244.7.0/24";
    const RES: &str = "10.244.9.0/24";

    // Empty at first.
    assert_eq!(json_out(&lab, &["subnet", "list"]), json!([]));
    assert_eq!(
        rows(&table(&lab, &["subnet", "list"])),
        [["SUBNET", "HOST", "RESERVED"]]
    );

    // Pin PIN to h2 before h2 ever starts (json), reserve RES (table).
    assert_eq!(
        json_out(&lab, &["subnet", "reserve", PIN, "--host", "h2"]),
        json!({"subnet": PIN, "host": "h2", "reserved": true})
    );
    assert_eq!(
        table(&lab, &["subnet", "reserve", RES]),
        format!("reserved subnet {RES}: it will not be allocated\n")
    );
    // Reserving the same again is fine, both forms.
    assert_eq!(
        table(&lab, &["subnet", "reserve", PIN, "--host", "h2"]),
        format!("reserved subnet {PIN} for host h2\n")
    );
    assert_eq!(
        json_out(&lab, &["subnet", "reserve", RES]),
        json!({"subnet": RES, "host": null, "reserved": true})
    );
    assert_eq!(
        json_out(&lab, &["subnet", "list"]),
        json!([
            {"subnet": PIN, "host": "h2", "reserved": true},
            {"subnet": RES, "host": null, "reserved": true},
        ])
    );
    let dump = etcd(&lab);
    assert_eq!(
        dump[&subnet_key(PIN)],
        json!({"host": "h2", "reserved": true})
    );
    assert_eq!(
        dump[&subnet_key(RES)],
        json!({"host": null, "reserved": true})
    );

    // h1 gets some other subnet; h2 gets the one pinned to it.
    let _a1 = lab.host(1).start_agent(&[]);
    let mut a2 = lab.host(2).start_agent(&[]);
    let s1 = lab.host(1).status().subnet;
    assert!(s1 != PIN && s1 != RES, "h1 got reserved {s1}");
    assert_eq!(lab.host(2).status().subnet, PIN);
    let dump = etcd(&lab);
    assert_eq!(dump["/weft/hosts/h2"]["subnet"], PIN);
    assert_eq!(dump["/weft/hosts/h1"]["subnet"], s1.as_str());
    assert_eq!(
        dump[&subnet_key(PIN)],
        json!({"host": "h2", "reserved": true})
    );
    assert_eq!(
        dump[&subnet_key(&s1)],
        json!({"host": "h1", "reserved": false})
    );

    // list, both forms (sorted by subnet).
    let mut want = vec![
        (
            s1.clone(),
            json!({"subnet": s1, "host": "h1", "reserved": false}),
        ),
        (
            PIN.to_string(),
            json!({"subnet": PIN, "host": "h2", "reserved": true}),
        ),
        (
            RES.to_string(),
            json!({"subnet": RES, "host": null, "reserved": true}),
        ),
    ];
    want.sort_by_key(|(s, _)| s.parse::<ipnetwork::Ipv4Network>().unwrap());
    assert_eq!(
        json_out(&lab, &["subnet", "list"]),
        Value::Array(want.iter().map(|(_, v)| v.clone()).collect())
    );
    let t = rows(&table(&lab, &["subnet", "list"]));
    let mut want_rows = vec![vec!["SUBNET".to_string(), "HOST".into(), "RESERVED".into()]];
    for (s, v) in &want {
        want_rows.push(vec![
            s.clone(),
            v["host"].as_str().unwrap_or("-").to_string(),
            if v["reserved"] == true { "yes" } else { "no" }.to_string(),
        ]);
    }
    assert_eq!(t, want_rows);
    let before = etcd(&lab);

    // Refusals: held, outside the cidr, wrong length, host bits, taken,
    // bad host name.
    assert_eq!(
        fails(&lab, &["subnet", "reserve", &s1]),
        (
            1,
            format!("subnet {s1} is held by host h1; remove it first with `weftctl host rm h1`")
        )
    );
    for bad in ["10.245.9.0/24", "10.244.9.0/25", "10.244.8.0/23"] {
        assert_eq!(
            fails(&lab, &["subnet", "reserve", bad]),
            (
                1,
                format!("{bad} is not a /24 subnet of the cluster cidr 10.244.0.0/16")
            )
        );
    }
    let (code, msg) = fails(&lab, &["subnet", "reserve", "10.244.9.5/24"]);
    assert_eq!(code, 1);
    assert!(msg.contains("10.244.9.5/24"), "{msg}");
    assert_eq!(
        fails(&lab, &["subnet", "reserve", RES, "--host", "h1"]),
        (1, format!("subnet {RES} is already reserved"))
    );
    assert_eq!(
        fails(&lab, &["subnet", "reserve", PIN]),
        (1, format!("subnet {PIN} is already reserved for host h2"))
    );
    let (code, msg) = fails(
        &lab,
        &["subnet", "reserve", "10.244.11.0/24", "--host", "Bad_Name"],
    );
    assert_eq!(code, 2);
    assert!(msg.contains("Bad_Name"), "{msg}");
    // An address alone is a /32.
    assert_eq!(
        fails(&lab, &["subnet", "reserve", "10.244.11.0"]),
        (
            1,
            "10.244.11.0/32 is not a /24 subnet of the cluster cidr 10.244.0.0/16".to_string()
        )
    );
    let (code, msg) = fails(&lab, &["subnet", "reserve", "10.244.11.0/33"]);
    assert_eq!(code, 2);
    assert!(msg.contains("10.244.11.0/33"), "{msg}");

    // Release refusals: unreserved, unknown, held, pinned and in use, outside.
    for free in [RES.replace(".9.", ".10."), "10.244.200.0/24".to_string()] {
        assert_eq!(
            fails(&lab, &["subnet", "release", &free]),
            (1, format!("subnet {free} is neither reserved nor held"))
        );
    }
    assert_eq!(
        fails(&lab, &["subnet", "release", &s1]),
        (
            1,
            format!(
                "subnet {s1} is not reserved but held by host h1; use `weftctl host rm h1` to free it"
            )
        )
    );
    assert_eq!(
        fails(&lab, &["subnet", "release", PIN]),
        (
            1,
            format!(
                "subnet {PIN} is reserved for host h2, which is using it; use `weftctl host rm h2` first"
            )
        )
    );
    assert_eq!(
        fails(&lab, &["subnet", "release", "10.245.9.0/24"]),
        (
            1,
            "10.245.9.0/24 is not a /24 subnet of the cluster cidr 10.244.0.0/16".to_string()
        )
    );
    // None of the refusals changed etcd.
    assert_eq!(etcd(&lab), before);

    // Release (table), then a second release is refused.
    assert_eq!(
        table(&lab, &["subnet", "release", RES]),
        format!("released subnet {RES}: it can be allocated again\n")
    );
    assert!(!etcd(&lab).contains_key(&subnet_key(RES)));
    assert_eq!(
        fails(&lab, &["subnet", "release", RES]),
        (1, format!("subnet {RES} is neither reserved nor held"))
    );
    // Release -o json.
    let tmp = "10.244.12.0/24";
    json_out(&lab, &["subnet", "reserve", tmp]);
    assert_eq!(
        json_out(&lab, &["subnet", "release", tmp]),
        json!({"subnet": tmp, "host": null, "reserved": false})
    );
    assert!(!etcd(&lab).contains_key(&subnet_key(tmp)));

    // Removing h2 keeps its pinned reservation; then it can be released.
    assert!(a2.stop().success());
    json_out(&lab, &["host", "rm", "h2"]);
    let dump = etcd(&lab);
    assert!(!dump.contains_key("/weft/hosts/h2"));
    assert_eq!(
        dump[&subnet_key(PIN)],
        json!({"host": "h2", "reserved": true})
    );
    assert_eq!(
        json_out(&lab, &["subnet", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["subnet"] == PIN)
            .cloned()
            .collect::<Vec<_>>(),
        [json!({"subnet": PIN, "host": "h2", "reserved": true})]
    );
    assert_eq!(
        json_out(&lab, &["subnet", "release", PIN]),
        json!({"subnet": PIN, "host": null, "reserved": false})
    );
    assert_eq!(
        json_out(&lab, &["subnet", "list"]),
        json!([{"subnet": s1, "host": "h1", "reserved": false}])
    );
}
