//! Which CiliumEndpoint wants which entry published, and what every target key should hold.
//!
//! Each endpoint contributes its published ipcache entries and, when it publishes any, its
//! identity. Two endpoints may claim one IP for a moment (a pod's IP handed to a new pod
//! before the old endpoint is gone): the latest claim wins, and an endpoint that lets go of
//! an IP never deletes another endpoint's entry (Cilium's `CachedConverter` does the same).
//! An identity is published while at least one endpoint publishing it exists.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use crate::resources::ObjectKey;

/// What one CiliumEndpoint contributes to the export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Contribution {
    /// Entries to publish: the key suffix (the IP) and the value.
    pub endpoints: Vec<(String, Bytes)>,
    /// The identity of those entries and its value; `None` when nothing is published.
    pub identity: Option<(u32, Bytes)>,
    /// The keys its decisions are recorded under in the export hook, to forget the ones
    /// it no longer has.
    pub decided: Vec<String>,
}

/// The target keys whose wanted value may have changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Touched {
    /// Endpoint key suffixes (IPs).
    pub endpoints: HashSet<String>,
    /// Numeric identities.
    pub identities: HashSet<u32>,
    /// Export-hook keys no longer decided.
    pub forgotten: Vec<String>,
}

/// Every endpoint's contribution, indexed by what it claims.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    by_endpoint: HashMap<ObjectKey, Contribution>,
    /// Endpoints claiming an IP, oldest claim first.
    ip_owners: HashMap<String, Vec<ObjectKey>>,
    /// Endpoints publishing an identity.
    identity_users: HashMap<u32, BTreeMap<ObjectKey, Bytes>>,
}

impl Claims {
    /// Replaces what `endpoint` contributes (an empty contribution withdraws it).
    pub fn set(&mut self, endpoint: &ObjectKey, contribution: Contribution) -> Touched {
        let old = self.by_endpoint.remove(endpoint).unwrap_or_default();
        let mut touched = Touched::default();
        for (ip, _) in &old.endpoints {
            if !contribution.endpoints.iter().any(|(new, _)| new == ip)
                && let Some(owners) = self.ip_owners.get_mut(ip)
            {
                owners.retain(|o| o != endpoint);
                if owners.is_empty() {
                    self.ip_owners.remove(ip);
                }
            }
            touched.endpoints.insert(ip.clone());
        }
        for (ip, _) in &contribution.endpoints {
            // A claim kept keeps its place; a new one is the latest.
            let owners = self.ip_owners.entry(ip.clone()).or_default();
            if !owners.contains(endpoint) {
                owners.push(endpoint.clone());
            }
            touched.endpoints.insert(ip.clone());
        }
        if let Some((id, _)) = &old.identity {
            if let Some(users) = self.identity_users.get_mut(id) {
                users.remove(endpoint);
                if users.is_empty() {
                    self.identity_users.remove(id);
                }
            }
            touched.identities.insert(*id);
        }
        if let Some((id, value)) = &contribution.identity {
            self.identity_users
                .entry(*id)
                .or_default()
                .insert(endpoint.clone(), value.clone());
            touched.identities.insert(*id);
        }
        touched.forgotten = old
            .decided
            .into_iter()
            .filter(|k| !contribution.decided.contains(k))
            .collect();
        if contribution != Contribution::default() {
            self.by_endpoint.insert(endpoint.clone(), contribution);
        }
        touched
    }

    /// The endpoints contributing anything.
    pub fn endpoints(&self) -> impl Iterator<Item = &ObjectKey> {
        self.by_endpoint.keys()
    }

    /// The value wanted at endpoint key suffix `ip`: the latest claim's.
    pub fn endpoint_value(&self, ip: &str) -> Option<Bytes> {
        let owner = self.ip_owners.get(ip)?.last()?;
        self.by_endpoint[owner]
            .endpoints
            .iter()
            .find(|(claimed, _)| claimed == ip)
            .map(|(_, value)| value.clone())
    }

    /// The value wanted for identity `id`: the first publishing endpoint's (they agree
    /// unless the API is mid-update).
    pub fn identity_value(&self, id: u32) -> Option<Bytes> {
        self.identity_users.get(&id)?.values().next().cloned()
    }

    /// Every endpoint entry wanted: key suffix to value.
    pub fn all_endpoints(&self) -> impl Iterator<Item = (&String, Bytes)> {
        self.ip_owners
            .keys()
            .filter_map(|ip| Some((ip, self.endpoint_value(ip)?)))
    }

    /// Every identity wanted: numeric identity to value.
    pub fn all_identities(&self) -> impl Iterator<Item = (u32, &Bytes)> {
        self.identity_users
            .iter()
            .filter_map(|(id, users)| Some((*id, users.values().next()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn publishes(ips: &[(&str, &str)], identity: Option<(u32, &str)>) -> Contribution {
        Contribution {
            endpoints: ips
                .iter()
                .map(|(ip, v)| (ip.to_string(), Bytes::from(v.to_string())))
                .collect(),
            identity: identity.map(|(id, v)| (id, Bytes::from(v.to_string()))),
            decided: ips.iter().map(|(ip, _)| ip.to_string()).collect(),
        }
    }

    #[test]
    fn the_latest_claim_wins_and_letting_go_never_deletes_another_claim() {
        let mut claims = Claims::default();
        claims.set(
            &key("old"),
            publishes(&[("10.0.0.1", "old")], Some((300, "a"))),
        );
        let touched = claims.set(
            &key("new"),
            publishes(&[("10.0.0.1", "new")], Some((300, "a"))),
        );
        assert_eq!(touched.endpoints, HashSet::from(["10.0.0.1".to_string()]));
        assert_eq!(
            claims.endpoint_value("10.0.0.1").as_deref(),
            Some(&b"new"[..])
        );

        // Deciding the old endpoint again keeps the order.
        claims.set(
            &key("old"),
            publishes(&[("10.0.0.1", "old")], Some((300, "a"))),
        );
        assert_eq!(
            claims.endpoint_value("10.0.0.1").as_deref(),
            Some(&b"new"[..])
        );

        // The old endpoint goes: the new one's entry stays, and so does the identity.
        let touched = claims.set(&key("old"), Contribution::default());
        assert_eq!(touched.forgotten, ["10.0.0.1"]);
        assert_eq!(
            claims.endpoint_value("10.0.0.1").as_deref(),
            Some(&b"new"[..])
        );
        assert_eq!(claims.identity_value(300).as_deref(), Some(&b"a"[..]));

        // The last publisher of the identity goes: nothing is wanted any more.
        let touched = claims.set(&key("new"), Contribution::default());
        assert_eq!(touched.identities, HashSet::from([300]));
        assert_eq!(claims.endpoint_value("10.0.0.1"), None);
        assert_eq!(claims.identity_value(300), None);
        assert_eq!(claims.all_endpoints().count(), 0);
        assert_eq!(claims.endpoints().count(), 0);
    }

    #[test]
    fn a_changed_contribution_touches_old_and_new_keys() {
        let mut claims = Claims::default();
        claims.set(
            &key("web"),
            publishes(&[("10.0.0.1", "v1"), ("fd00::1", "v1")], Some((300, "a"))),
        );
        let touched = claims.set(
            &key("web"),
            publishes(&[("10.0.0.2", "v2")], Some((301, "b"))),
        );
        let mut ips: Vec<_> = touched.endpoints.into_iter().collect();
        ips.sort();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2", "fd00::1"]);
        assert_eq!(touched.identities, HashSet::from([300, 301]));
        assert_eq!(touched.forgotten, ["10.0.0.1", "fd00::1"]);
        let all: BTreeMap<String, Bytes> = claims
            .all_endpoints()
            .map(|(ip, v)| (ip.clone(), v))
            .collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all["10.0.0.2"], Bytes::from("v2"));
        let ids: Vec<_> = claims.all_identities().map(|(id, _)| id).collect();
        assert_eq!(ids, [301]);
    }
}
