//! weft's nftables table against the kernel (needs root: it fails, not
//! skips, without), each test in scratch network namespaces of its own
//! (`support`), never the root namespace.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use weft_common::Proto;

use weft_agent::firewall::{FirewallError, FirewallSpec, PortForward, Table as Firewall};

mod support;
use support::{run_cmd, Netns};

const TIMEOUT: Duration = Duration::from_secs(3);

/// `nft list table inet TABLE` in the calling thread's namespace, with
/// leading whitespace normalised and weft's rule fingerprints (`comment
/// "weft:…"`, checked apart) left out.
fn nft_list(table: &str) -> String {
    run_cmd("nft", &["list", "table", "inet", table])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.find(" comment \"weft:") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn fwd(
    host_ip: Option<[u8; 4]>,
    host_port: u16,
    proto: Proto,
    target: [u8; 4],
    target_port: u16,
) -> PortForward {
    PortForward {
        host_ip: host_ip.map(Ipv4Addr::from),
        host_port,
        proto,
        target: Ipv4Addr::from(target),
        target_port,
    }
}

fn sorted(mut v: Vec<PortForward>) -> Vec<PortForward> {
    v.sort();
    v
}

fn spec() -> FirewallSpec {
    FirewallSpec {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        subnet: "10.244.1.0/24".parse().unwrap(),
        bridge: "weft0".into(),
        vxlan_port: None,
    }
}

const EXPECTED_EMPTY: &str = "\
table inet weft_test {
map publish_ip_addr {
type ipv4_addr . inet_proto . inet_service : ipv4_addr
}
map publish_ip_port {
type ipv4_addr . inet_proto . inet_service : inet_service
}
map publish_any_addr {
type inet_proto . inet_service : ipv4_addr
}
map publish_any_port {
type inet_proto . inet_service : inet_service
}
chain prerouting {
type nat hook prerouting priority dstnat; policy accept;
fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @publish_ip_addr:ip daddr . meta l4proto . th dport map @publish_ip_port
meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @publish_any_addr:meta l4proto . th dport map @publish_any_port
}
chain output {
type nat hook output priority -100; policy accept;
fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @publish_ip_addr:ip daddr . meta l4proto . th dport map @publish_ip_port
meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @publish_any_addr:meta l4proto . th dport map @publish_any_port
}
chain postrouting {
type nat hook postrouting priority srcnat; policy accept;
ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade
ct status dnat ip saddr 10.244.1.0/24 ip daddr 10.244.1.0/24 masquerade
ip saddr 127.0.0.0/8 oifname \"weft0\" masquerade
}
chain forward {
type filter hook forward priority filter; policy accept;
ct state established,related accept
ip saddr 10.244.0.0/16 accept
ip daddr 10.244.0.0/16 accept
}
chain input {
type filter hook input priority filter; policy accept;
iifname \"weft0\" ip daddr 127.0.0.0/8 ct state established,related accept
iifname \"weft0\" ip daddr 127.0.0.0/8 drop
}
}";

#[test]
fn table_lifecycle() {
    let ns = Netns::new();
    ns.run(|| {
        // A table that is not ours must survive everything below.
        run_cmd("nft", &["add", "table", "inet", "bystander"]);

        let fw = Firewall::new("weft_test");
        let a = fwd(
            Some([192, 168, 1, 1]),
            8080,
            Proto::Tcp,
            [10, 244, 1, 2],
            80,
        );
        let b = fwd(None, 8080, Proto::Tcp, [10, 244, 1, 3], 81);
        let c = fwd(None, 53, Proto::Udp, [10, 244, 1, 4], 5353);
        let d = fwd(
            Some([192, 168, 1, 1]),
            9000,
            Proto::Udp,
            [10, 244, 1, 2],
            9000,
        );

        // No table yet.
        assert!(!fw.exists().unwrap());
        assert_eq!(fw.list_forwards().unwrap(), vec![]);
        fw.del_forwards(&[a]).unwrap();
        let err = fw.add_forwards(&[a]).unwrap_err();
        assert!(matches!(err, FirewallError::AddForwards { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("add port forward 192.168.1.1:8080/tcp -> 10.244.1.2:80: "),
            "{err}"
        );
        fw.teardown().unwrap();

        // sync creates the table; twice changes nothing.
        fw.sync(&spec(), &[], &Default::default()).unwrap();
        assert!(fw.exists().unwrap());
        assert_eq!(nft_list("weft_test"), EXPECTED_EMPTY);
        fw.sync(&spec(), &[], &Default::default()).unwrap();
        assert_eq!(nft_list("weft_test"), EXPECTED_EMPTY);
        assert_eq!(fw.list_forwards().unwrap(), vec![]);

        fw.sync(&spec(), &[a, a], &Default::default()).unwrap();
        let with_a = nft_list("weft_test");
        fw.sync(&spec(), &[a], &Default::default()).unwrap();
        assert_eq!(nft_list("weft_test"), with_a);
        assert!(
            with_a.contains("elements = { 192.168.1.1 . tcp . 8080 : 10.244.1.2 }"),
            "{with_a}"
        );
        assert!(
            with_a.contains("elements = { 192.168.1.1 . tcp . 8080 : 80 }"),
            "{with_a}"
        );
        assert_eq!(fw.list_forwards().unwrap(), vec![a]);

        // add
        fw.add_forwards(&[b, c]).unwrap();
        assert_eq!(fw.list_forwards().unwrap(), sorted(vec![a, b, c]));
        let text = nft_list("weft_test");
        assert!(
            text.contains("elements = { udp . 53 : 10.244.1.4,")
                || text.contains("tcp . 8080 : 10.244.1.3, udp . 53 : 10.244.1.4 }"),
            "{text}"
        );

        // A duplicate fails and changes nothing, also the new forward in the
        // same call is not added.
        let before = nft_list("weft_test");
        for dup in [
            a,
            fwd(
                Some([192, 168, 1, 1]),
                8080,
                Proto::Tcp,
                [10, 244, 1, 9],
                99,
            ),
        ] {
            let err = fw.add_forwards(&[d, dup]).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, FirewallError::AddForwards { .. }), "{msg}");
            assert!(msg.contains("File exists"), "{msg}");
            assert!(
                msg.ends_with("(already forwarded: 192.168.1.1:8080/tcp (-> 10.244.1.2:80))"),
                "{msg}"
            );
            assert_eq!(nft_list("weft_test"), before);
            assert_eq!(fw.list_forwards().unwrap(), sorted(vec![a, b, c]));
        }
        // Conflicts within one call are refused before nft runs.
        let b2 = PortForward {
            target_port: 82,
            ..b
        };
        let err = fw.add_forwards(&[d, b2, b]).unwrap_err();
        assert!(matches!(err, FirewallError::Conflict { .. }), "{err}");
        assert_eq!(nft_list("weft_test"), before);

        // del: a different target for the same key is left alone, absent
        // entries are fine, repeated deletes are fine.
        fw.del_forwards(&[b2]).unwrap();
        assert_eq!(fw.list_forwards().unwrap(), sorted(vec![a, b, c]));
        fw.del_forwards(&[b, d, b]).unwrap();
        assert_eq!(fw.list_forwards().unwrap(), sorted(vec![a, c]));
        fw.del_forwards(&[b]).unwrap();
        fw.add_forwards(&[d]).unwrap();
        assert_eq!(fw.list_forwards().unwrap(), sorted(vec![a, c, d]));

        // A half entry (only in the address map, e.g. from someone editing
        // the table by hand) is not a forward, and del_forwards clears it.
        run_cmd(
            "nft",
            &["add element inet weft_test publish_any_addr { tcp . 7777 : 10.244.1.7 }"],
        );
        assert_eq!(fw.list_forwards().unwrap(), sorted(vec![a, c, d]));
        let half = fwd(None, 7777, Proto::Tcp, [10, 244, 1, 7], 1);
        let err = fw.add_forwards(&[half]).unwrap_err();
        assert!(
            err.to_string()
                .contains("7777/tcp (-> an incomplete entry)"),
            "{err}"
        );
        fw.del_forwards(&[half]).unwrap();
        fw.add_forwards(&[half]).unwrap();
        assert_eq!(fw.list_forwards().unwrap(), sorted(vec![a, c, d, half]));

        // sync replaces the forwards wholesale.
        fw.sync(&spec(), &[c], &Default::default()).unwrap();
        assert_eq!(fw.list_forwards().unwrap(), vec![c]);
        let err = fw.sync(&spec(), &[b, b2], &Default::default()).unwrap_err();
        assert!(matches!(err, FirewallError::Conflict { .. }), "{err}");
        assert_eq!(fw.list_forwards().unwrap(), vec![c]);

        // teardown, twice.
        fw.teardown().unwrap();
        assert!(!fw.exists().unwrap());
        fw.teardown().unwrap();
        assert_eq!(fw.list_forwards().unwrap(), vec![]);

        run_cmd("nft", &["list", "table", "inet", "bystander"]);
    });
}

#[test]
fn failed_sync_keeps_the_old_table() {
    let ns = Netns::new();
    ns.run(|| {
        let fw = Firewall::new("weft_test");
        let a = fwd(None, 8080, Proto::Tcp, [10, 244, 1, 2], 80);
        fw.sync(&spec(), &[a], &Default::default()).unwrap();
        let before = nft_list("weft_test");
        let bad = FirewallSpec {
            bridge: "a-name-longer-than-ifnamsiz".into(),
            ..spec()
        };
        let err = fw.sync(&bad, &[], &Default::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FirewallError::Sync { .. }), "{msg}");
        assert!(
            msg.starts_with("replace nftables table inet weft_test: ")
                && msg.ends_with(
                    "failed (exit status: 1): Error: String exceeds maximum length of 16"
                ),
            "{msg}"
        );
        // The transaction was all or nothing.
        assert_eq!(nft_list("weft_test"), before);
        assert_eq!(fw.list_forwards().unwrap(), vec![a]);
    });
}

/// Many single adds and deletes (what `ns add`/`ns del` with a published
/// port do) leave the table exactly as it was. How long they take is
/// measured by `weft-bench attach`, not judged here.
#[test]
fn adds_and_deletes_of_single_forwards_leave_the_table_as_it_was() {
    let ns = Netns::new();
    ns.run(|| {
        let fw = Firewall::new("weft_test");
        fw.sync(&spec(), &[], &Default::default()).unwrap();
        let before = nft_list("weft_test");
        for i in 0..21u16 {
            let f = fwd(None, 10000 + i, Proto::Tcp, [10, 244, 1, 2], 80);
            fw.add_forwards(&[f]).unwrap();
            assert_eq!(fw.list_forwards().unwrap(), vec![f]);
            fw.del_forwards(&[f]).unwrap();
        }
        assert_eq!(nft_list("weft_test"), before);
    });
}

/// Serves `tag peer\n` for every line a client sends, until stopped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(listener: TcpListener, tag: &'static str) -> Self {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        std::thread::spawn(move || serve(stream, peer, tag));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, tag: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(stream).lines() {
        if line.is_err() || writeln!(writer, "{tag} {}", peer.ip()).is_err() {
            return;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(ns: &Netns, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
}

fn connect(ns: &Netns, addr: &str) -> std::io::Result<Conn> {
    let addr: SocketAddrV4 = addr.parse().unwrap();
    ns.run(move || {
        let s = TcpStream::connect_timeout(&addr.into(), TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    })
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Which server answered and the client address it saw.
    fn ask(&mut self) -> String {
        writeln!(self.writer, "?").unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

/// Connects and asks once.
fn ask(ns: &Netns, addr: &str) -> String {
    connect(ns, addr)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
        .ask()
}

fn refused(ns: &Netns, addr: &str) {
    match connect(ns, addr) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connect to {addr}: expected refused, got {e}"),
        Ok(mut c) => panic!("connect to {addr}: expected refused, got {}", c.ask()),
    }
}

/// host: the namespace with the table. pod: behind "wft0" (plays the bridge),
/// 10.99.1.2 in the host subnet 10.99.1.0/24. client: outside,
/// 10.98.0.2, reaching the host at 10.98.0.1.
#[test]
fn packets_follow_the_forwards() {
    let host = Netns::new();
    let pod = Netns::new();
    let client = Netns::new();
    host.ip(&[
        "link", "add", "wft0", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    host.ip(&[
        "link",
        "add",
        "ext0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &client.name,
    ]);
    host.ip(&["addr", "add", "10.99.1.1/24", "dev", "wft0"]);
    host.ip(&["addr", "add", "10.98.0.1/24", "dev", "ext0"]);
    host.ip(&["link", "set", "wft0", "up"]);
    host.ip(&["link", "set", "ext0", "up"]);
    pod.ip(&["addr", "add", "10.99.1.2/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "default", "via", "10.99.1.1"]);
    client.ip(&["addr", "add", "10.98.0.2/24", "dev", "eth0"]);
    client.ip(&["link", "set", "eth0", "up"]);
    // Only so that the test can show that non-local destinations are not
    // DNAT'ed.
    client.ip(&["route", "add", "10.99.0.0/16", "via", "10.98.0.1"]);
    host.sysctl("net.ipv4.ip_forward", "1");
    host.sysctl("net.ipv4.conf.wft0.route_localnet", "1");

    let _s80 = Server::start(listen(&pod, "10.99.1.2:80"), "pod80");
    let _s81 = Server::start(listen(&pod, "10.99.1.2:81"), "pod81");
    let _s7000 = Server::start(listen(&client, "10.98.0.2:7000"), "client7000");

    let spec = FirewallSpec {
        cluster_cidr: "10.99.0.0/16".parse().unwrap(),
        subnet: "10.99.1.0/24".parse().unwrap(),
        bridge: "wft0".into(),
        vxlan_port: None,
    };
    let fw = Firewall::new("weft_test");
    let bound = fwd(Some([10, 98, 0, 1]), 8080, Proto::Tcp, [10, 99, 1, 2], 80);
    let any = fwd(None, 8080, Proto::Tcp, [10, 99, 1, 2], 81);
    let other = fwd(None, 9090, Proto::Tcp, [10, 99, 1, 2], 81);
    {
        let (fw, spec) = (fw.clone(), spec.clone());
        host.run(move || {
            fw.sync(&spec, &[], &Default::default()).unwrap();
            fw.add_forwards(&[bound, any, other]).unwrap();
        });
    }

    // From outside, through prerouting: the forward bound to the address
    // wins over the any-address one on the same port.
    let mut long_lived = connect(&client, "10.98.0.1:8080").unwrap();
    assert_eq!(long_lived.ask(), "pod80 10.98.0.2");
    assert_eq!(ask(&client, "10.98.0.1:9090"), "pod81 10.98.0.2");
    // Only local destinations are translated.
    refused(&client, "10.99.1.2:9090");

    // From the host itself, through the output chain.
    assert_eq!(ask(&host, "10.98.0.1:8080"), "pod80 10.98.0.1");
    assert_eq!(ask(&host, "10.99.1.1:9090"), "pod81 10.99.1.1");
    // Published on localhost: masqueraded to the bridge address.
    assert_eq!(ask(&host, "127.0.0.1:9090"), "pod81 10.99.1.1");
    // Hairpin: the pod reaches its own published port via the host address.
    assert_eq!(ask(&pod, "10.98.0.1:9090"), "pod81 10.99.1.1");
    // Egress from the cluster is masqueraded to the host's outside address.
    assert_eq!(ask(&pod, "10.98.0.2:7000"), "client7000 10.98.0.1");

    // Replacing the table and removing the forward keep an established
    // flow working (conntrack NAT state survives); new connections then
    // fall back to the any-address forward.
    {
        let (fw, spec) = (fw.clone(), spec.clone());
        host.run(move || {
            fw.sync(&spec, &[bound, any, other], &Default::default())
                .unwrap();
        });
    }
    assert_eq!(long_lived.ask(), "pod80 10.98.0.2");
    {
        let fw = fw.clone();
        host.run(move || fw.del_forwards(&[bound]).unwrap());
    }
    assert_eq!(long_lived.ask(), "pod80 10.98.0.2");
    assert_eq!(ask(&client, "10.98.0.1:8080"), "pod81 10.98.0.2");

    {
        let fw = fw.clone();
        host.run(move || fw.del_forwards(&[any, other]).unwrap());
    }
    refused(&client, "10.98.0.1:8080");
    refused(&client, "10.98.0.1:9090");
    refused(&host, "127.0.0.1:9090");

    host.run(move || fw.teardown().unwrap());
    // Without the table the pod's egress is no longer masqueraded.
    assert_eq!(ask(&pod, "10.98.0.2:7000"), "client7000 10.99.1.2");
}

/// Reading the table back: as written, it matches its spec (every rule
/// carries weft's fingerprint); a rule deleted or added by hand, or a
/// table made for another spec, does not; elements are read as they are.
#[test]
fn observe_tells_a_table_as_written_from_one_changed_by_hand() {
    let ns = Netns::new();
    ns.run(|| {
        let fw = Firewall::new("weft_obs");
        let mut s = spec();
        s.vxlan_port = Some(4789);
        let v = fw.observe(&s).unwrap();
        assert!(!v.exists, "{v:?}");
        let a = fwd(None, 8080, Proto::Tcp, [10, 244, 1, 2], 80);
        let peers = [
            "198.18.0.12".parse().unwrap(),
            "198.18.0.13".parse().unwrap(),
        ]
        .into();
        fw.sync(&s, &[a], &peers).unwrap();
        let listing = run_cmd("nft", &["list", "table", "inet", "weft_obs"]);
        // Rules: the lines of a chain after its `type` line.
        let mut rules = 0;
        let mut in_chain = false;
        for l in listing.lines().map(str::trim) {
            if l.starts_with("chain ") {
                in_chain = true;
            } else if l == "}" {
                in_chain = false;
            } else if in_chain && !l.is_empty() && !l.starts_with("type ") {
                rules += 1;
            }
        }
        assert_eq!(rules, 13, "{listing}");
        assert_eq!(
            listing.matches("comment \"weft:").count(),
            rules,
            "every rule carries weft's fingerprint:\n{listing}"
        );
        let v = fw.observe(&s).unwrap();
        assert!(v.exists && v.rules_as_desired, "{v:?}");
        assert_eq!(v.forwards, vec![a]);
        assert_eq!(v.peers, peers);
        // Another spec: not as desired.
        let mut other = s.clone();
        other.cluster_cidr = "10.245.0.0/16".parse().unwrap();
        assert!(!fw.observe(&other).unwrap().rules_as_desired);
        // A rule added by hand.
        run_cmd(
            "nft",
            &["add", "rule", "inet", "weft_obs", "forward", "accept"],
        );
        assert!(!fw.observe(&s).unwrap().rules_as_desired);
        fw.sync(&s, &[a], &peers).unwrap();
        assert!(fw.observe(&s).unwrap().rules_as_desired);
        // A rule deleted by hand.
        let handles = run_cmd(
            "nft",
            &["-a", "list", "chain", "inet", "weft_obs", "forward"],
        );
        let handle = handles
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("ip ") && l.contains("# handle"))
            .and_then(|l| l.rsplit("handle ").next())
            .unwrap()
            .trim()
            .to_string();
        run_cmd(
            "nft",
            &[
                "delete", "rule", "inet", "weft_obs", "forward", "handle", &handle,
            ],
        );
        assert!(!fw.observe(&s).unwrap().rules_as_desired);
        fw.teardown().unwrap();
    });
}
