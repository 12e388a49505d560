//! Where weft's state lives in etcd (prefix default `/weft`):
//!
//! - `<prefix>/config`: the network config ([`NetworkConfig`](weft_common::cluster::NetworkConfig));
//! - `<prefix>/subnets/<a.b.c.d-len>`: who holds a subnet, or a reservation
//!   ([`SubnetRecord`](weft_common::cluster::SubnetRecord));
//! - `<prefix>/hosts/<name>`: a host record ([`HostRecord`](weft_common::cluster::HostRecord));
//! - `<prefix>/agents/<name>`: which controller the host's agent is
//!   connected to ([`AgentPresence`](super::records::AgentPresence)), on
//!   that controller's short lease;
//! - `<prefix>/policies/<name>`: a network policy
//!   ([`Policy`](weft_common::policy::Policy));
//! - `<prefix>/endpoints/<host>`: the endpoints a host's agent reported,
//!   with their addresses and labels
//!   ([`EndpointEntry`](weft_common::cluster::EndpointEntry) list), on the
//!   host record's lease.

use ipnetwork::Ipv4Network;
use weft_common::cluster::{parse_subnet_key, subnet_key};

/// The default prefix of weft's keys.
pub const DEFAULT_PREFIX: &str = "/weft";

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The prefix without a trailing slash (`/weft`).
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Config,
    /// A subnet key; `None` when the rest is not a subnet.
    Subnet(Option<Ipv4Network>),
    /// A host key and the name it is under.
    Host(&'a str),
    /// A presence key and the name it is under.
    Agent(&'a str),
    /// A policy key and the name it is under.
    Policy(&'a str),
    /// A host's endpoint list and the host's name.
    Endpoints(&'a str),
    /// Anything else (not weft's, or a kind this version does not know).
    Other,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The prefix without a trailing slash (`/weft`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every key of weft's: the prefix with a trailing slash (`/weft/`).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }

    pub fn host(&self, name: &str) -> String {
        format!("{}/hosts/{name}", self.prefix)
    }

    pub fn agents(&self) -> String {
        format!("{}/agents/", self.prefix)
    }

    pub fn agent(&self, name: &str) -> String {
        format!("{}/agents/{name}", self.prefix)
    }

    pub fn policies(&self) -> String {
        format!("{}/policies/", self.prefix)
    }

    pub fn policy(&self, name: &str) -> String {
        format!("{}/policies/{name}", self.prefix)
    }

    pub fn endpoints(&self) -> String {
        format!("{}/endpoints/", self.prefix)
    }

    pub fn host_endpoints(&self, host: &str) -> String {
        format!("{}/endpoints/{host}", self.prefix)
    }

    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn subnet(&self, net: Ipv4Network) -> String {
        format!("{}/subnets/{}", self.prefix, subnet_key(net))
    }

    /// What `key` is, if it is under the prefix at all.
    pub fn parse<'a>(&self, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        Some(if rest == "config" {
            Key::Config
        } else if let Some(s) = rest.strip_prefix("subnets/") {
            Key::Subnet(parse_subnet_key(s))
        } else if let Some(n) = rest.strip_prefix("hosts/") {
            Key::Host(n)
        } else if let Some(n) = rest.strip_prefix("agents/") {
            Key::Agent(n)
        } else if let Some(n) = rest.strip_prefix("policies/") {
            Key::Policy(n)
        } else if let Some(n) = rest.strip_prefix("endpoints/") {
            Key::Endpoints(n)
        } else {
            Key::Other
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/weft/");
        let net: Ipv4Network = "10.244.3.0/24".parse().unwrap();
        assert_eq!(k.prefix(), "/weft");
        assert_eq!(k.config(), "/weft/config");
        assert_eq!(k.subnet(net), "/weft/subnets/10.244.3.0-24");
        assert_eq!(k.host("h1"), "/weft/hosts/h1");
        assert_eq!(k.agent("h1"), "/weft/agents/h1");
        assert_eq!(k.parse(&k.config()), Some(Key::Config));
        assert_eq!(k.parse(&k.subnet(net)), Some(Key::Subnet(Some(net))));
        assert_eq!(
            k.parse("/weft/subnets/10.244.3.1-24"),
            Some(Key::Subnet(None))
        );
        assert_eq!(k.parse(&k.host("h1")), Some(Key::Host("h1")));
        assert_eq!(k.parse(&k.agent("h2")), Some(Key::Agent("h2")));
        assert_eq!(k.policy("p"), "/weft/policies/p");
        assert_eq!(k.parse(&k.policy("p")), Some(Key::Policy("p")));
        assert_eq!(k.host_endpoints("h1"), "/weft/endpoints/h1");
        assert_eq!(k.parse(&k.host_endpoints("h1")), Some(Key::Endpoints("h1")));
        assert_eq!(k.parse("/weft/elsewhere"), Some(Key::Other));
        assert_eq!(k.parse("/weftx/config"), None);
        assert_eq!(k.parse("/other/config"), None);
    }
}
