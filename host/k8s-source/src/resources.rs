//! The Kubernetes objects the source watches, typed for kube.
//!
//! Pods and Namespaces are watched as metadata only (`PartialObjectMeta`): labels and
//! annotations are all the export hook reads from them. CiliumEndpoints and CiliumNodes
//! (`cilium.io/v2`) are read into the data model's own subsets of those CRDs
//! ([`convert::CiliumEndpoint`], [`convert::CiliumNode`]), the ones the converters to
//! kvstore values take, so the field shapes are described once.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use meshfilter_cilium::convert;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// Where a namespaced object lives. A CiliumEndpoint carries its Pod's namespace and name,
/// so this key joins the two.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of an object with this metadata.
    pub fn of(meta: &ObjectMeta) -> ObjectKey {
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A `cilium.io/v2` object as the API serves it: the metadata kube needs, and the object
/// read into the data model's type `T`, or why that failed.
///
/// Reading never fails on the body: one malformed object (a field of the wrong type) must
/// not fail a whole list, which would stall the source, so it is kept with its error and
/// the source counts, logs and skips it. Only metadata that is not `ObjectMeta` fails the
/// object, and kube then reports the event as an error.
#[derive(Debug, Clone)]
pub struct CiliumObject<T> {
    metadata: ObjectMeta,
    object: Result<T, String>,
}

/// A CiliumEndpoint (`cilium.io/v2`, namespaced, plural `ciliumendpoints`).
pub type CiliumEndpointObject = CiliumObject<convert::CiliumEndpoint>;

/// A CiliumNode (`cilium.io/v2`, cluster-scoped, plural `ciliumnodes`).
pub type CiliumNodeObject = CiliumObject<convert::CiliumNode>;

impl<T> CiliumObject<T> {
    /// The object, or why it could not be read (with the path of the bad field).
    pub fn object(&self) -> Result<&T, &str> {
        self.object.as_ref().map_err(String::as_str)
    }

    /// Its namespace and name.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::of(&self.metadata)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for CiliumObject<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Metadata {
            #[serde(default)]
            metadata: ObjectMeta,
        }
        let value = serde_json::Value::deserialize(d)?;
        let Metadata { metadata } = Metadata::deserialize(&value).map_err(D::Error::custom)?;
        let object = serde_path_to_error::deserialize(value).map_err(|e| e.to_string());
        Ok(CiliumObject { metadata, object })
    }
}

/// The kube identity of a `cilium.io/v2` kind.
macro_rules! cilium_resource {
    ($object:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $object {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("cilium.io")
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v2")
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

cilium_resource!(
    CiliumEndpointObject,
    "CiliumEndpoint",
    "ciliumendpoints",
    NamespaceResourceScope
);
cilium_resource!(
    CiliumNodeObject,
    "CiliumNode",
    "ciliumnodes",
    ClusterResourceScope
);

#[cfg(test)]
mod tests {
    use kube::Resource;
    use serde_json::json;

    use super::*;

    #[test]
    fn api_paths_are_ciliums() {
        assert_eq!(
            CiliumEndpointObject::url_path(&(), None),
            "/apis/cilium.io/v2/ciliumendpoints"
        );
        assert_eq!(
            CiliumEndpointObject::url_path(&(), Some("shop")),
            "/apis/cilium.io/v2/namespaces/shop/ciliumendpoints"
        );
        assert_eq!(
            CiliumNodeObject::url_path(&(), None),
            "/apis/cilium.io/v2/ciliumnodes"
        );
    }

    #[test]
    fn a_malformed_body_is_kept_with_the_path_of_the_bad_field() {
        let object: CiliumEndpointObject = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
            "metadata": {"name": "web-0", "namespace": "shop", "resourceVersion": "7"},
            "status": {"identity": {"id": "not-a-number"}}
        }))
        .unwrap();
        assert_eq!(object.key().to_string(), "shop/web-0");
        assert_eq!(object.meta().resource_version.as_deref(), Some("7"));
        let error = object.object().unwrap_err();
        assert!(error.starts_with("status.identity.id:"), "{error}");
    }

    #[test]
    fn malformed_metadata_fails_the_object() {
        let result = serde_json::from_value::<CiliumEndpointObject>(json!({
            "metadata": {"name": 42}, "status": {}
        }));
        assert!(result.is_err());
    }
}
