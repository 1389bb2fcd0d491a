//! A plugin's component pre-instantiated, and its instances, whichever contract version it
//! was built against: the code that runs a plugin calls these and never a version's bindings.

use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

use super::bindings::types::{Delivery, Event, HandlerError, Subscription};
use super::bindings::{v0_1, v0_2};
use super::contract::Contract;
use super::sandbox::HostState;

/// A plugin pre-instantiated against the version it was built for.
pub enum Pre {
    /// Built against 0.1.0.
    V0_1(v0_1::SubscriberPre<HostState>),
    /// Built against 0.2.0.
    V0_2(v0_2::SubscriberPre<HostState>),
}

impl Pre {
    /// Check that `pre` exports `contract`'s handler with the right types.
    pub fn new(contract: Contract, pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(match contract {
            Contract::V0_1 => Self::V0_1(v0_1::SubscriberPre::new(pre)?),
            Contract::V0_2 => Self::V0_2(v0_2::SubscriberPre::new(pre)?),
        })
    }

    /// The version the plugin was built against.
    pub fn contract(&self) -> Contract {
        match self {
            Self::V0_1(_) => Contract::V0_1,
            Self::V0_2(_) => Contract::V0_2,
        }
    }

    /// The component.
    pub fn component(&self) -> &Component {
        match self {
            Self::V0_1(pre) => pre.instance_pre().component(),
            Self::V0_2(pre) => pre.instance_pre().component(),
        }
    }

    /// A new instance in `store`.
    pub async fn instantiate_async(&self, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Self::V0_1(pre) => Instance::V0_1(pre.instantiate_async(store).await?),
            Self::V0_2(pre) => Instance::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

/// One instance of a plugin, of whichever version.
pub enum Instance {
    /// Built against 0.1.0.
    V0_1(v0_1::Subscriber),
    /// Built against 0.2.0.
    V0_2(v0_2::Subscriber),
}

impl Instance {
    /// Call the handler's `handle`.
    pub async fn handle(
        &self,
        store: &mut Store<HostState>,
        event: &Event,
        delivery: &Delivery,
    ) -> wasmtime::Result<Result<(), HandlerError>> {
        match self {
            Self::V0_1(b) => b.ferry_plugin_handler().call_handle(store, event, delivery).await,
            Self::V0_2(b) => b.ferry_plugin_handler().call_handle(store, event, delivery).await,
        }
    }

    /// Call the handler's `subscriptions`.
    pub async fn subscriptions(&self, store: &mut Store<HostState>) -> wasmtime::Result<Vec<Subscription>> {
        match self {
            Self::V0_1(b) => b.ferry_plugin_handler().call_subscriptions(store).await,
            Self::V0_2(b) => b.ferry_plugin_handler().call_subscriptions(store).await,
        }
    }
}
