//! The object store: every object as Kubernetes JSON, one cluster-wide resourceVersion counter,
//! and the history of changes that watches replay (`?watch=true&resourceVersion=N` streams the
//! changes after N).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::cluster::lock;

/// How many changes are kept for watches; a watch from before the oldest kept change gets
/// `410 Gone` (`Expired`) and must list again, as on a real API server.
const HISTORY: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub plural: &'static str,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
}

/// (plural, namespace ("" when cluster-scoped), name)
type Key = (&'static str, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    events: VecDeque<Event>,
    /// Resource versions up to this one are no longer in `events`.
    forgotten: u64,
}

/// Why a watch cannot start where it asked.
#[derive(Debug)]
pub(crate) struct Expired;

pub(crate) struct Store {
    inner: Mutex<Inner>,
    /// store --latest resourceVersion--> watches (woken on every change)
    rv_tx: watch::Sender<u64>,
}

impl Store {
    pub fn new() -> Store {
        let (rv_tx, _) = watch::channel(1);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                events: VecDeque::new(),
                forgotten: 1,
            }),
            rv_tx,
        }
    }

    pub fn get(&self, plural: &'static str, ns: &str, name: &str) -> Option<Value> {
        lock(&self.inner)
            .objects
            .get(&(plural, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Objects of `plural` (in `ns`, or everywhere) and the resourceVersion of the list.
    pub fn list(&self, plural: &'static str, ns: Option<&str>) -> (Vec<Value>, u64) {
        let inner = lock(&self.inner);
        let items = inner
            .objects
            .iter()
            .filter(|((p, n, _), _)| *p == plural && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Stores a new object (its metadata.name and namespace must be set); `None` when one of
    /// that name exists. Fills resourceVersion, uid and creationTimestamp.
    pub fn create(&self, plural: &'static str, ns: &str, mut object: Value) -> Option<Value> {
        let name = object["metadata"]["name"].as_str()?.to_string();
        let mut inner = lock(&self.inner);
        let key = (plural, ns.to_string(), name);
        if inner.objects.contains_key(&key) {
            return None;
        }
        let meta = &mut object["metadata"];
        if meta["uid"].as_str().is_none() {
            meta["uid"] = json!(super::util::uid());
        }
        if meta["creationTimestamp"].as_str().is_none() {
            meta["creationTimestamp"] = json!(super::util::now());
        }
        let object = Self::commit(&mut inner, key, EventType::Added, object);
        drop(inner);
        self.wake();
        Some(object)
    }

    /// Changes an object in place; returns the new version (`None` when there is no such
    /// object).
    pub fn update(
        &self,
        plural: &'static str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut inner = lock(&self.inner);
        let key = (plural, ns.to_string(), name.to_string());
        let mut object = inner.objects.get(&key)?.clone();
        f(&mut object);
        let object = Self::commit(&mut inner, key, EventType::Modified, object);
        drop(inner);
        self.wake();
        Some(object)
    }

    /// Removes an object; returns its last version.
    pub fn delete(&self, plural: &'static str, ns: &str, name: &str) -> Option<Value> {
        let mut inner = lock(&self.inner);
        let key = (plural, ns.to_string(), name.to_string());
        let object = inner.objects.remove(&key)?;
        let object = Self::commit(&mut inner, key, EventType::Deleted, object);
        drop(inner);
        self.wake();
        Some(object)
    }

    fn commit(inner: &mut Inner, key: Key, kind: EventType, mut object: Value) -> Value {
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if kind == EventType::Deleted {
            inner.objects.remove(&key);
        } else {
            inner.objects.insert(key.clone(), object.clone());
        }
        inner.events.push_back(Event {
            rv,
            plural: key.0,
            namespace: key.1,
            kind,
            object: object.clone(),
        });
        while inner.events.len() > HISTORY {
            if let Some(e) = inner.events.pop_front() {
                inner.forgotten = e.rv;
            }
        }
        object
    }

    fn wake(&self) {
        let rv = lock(&self.inner).rv;
        self.rv_tx.send_replace(rv);
    }

    /// Changes of `plural` (in `ns`, or everywhere) after resourceVersion `after`.
    pub fn events_since(
        &self,
        plural: &'static str,
        ns: Option<&str>,
        after: u64,
    ) -> Result<(Vec<Event>, u64), Expired> {
        let inner = lock(&self.inner);
        if after < inner.forgotten {
            return Err(Expired);
        }
        let events = inner
            .events
            .iter()
            .filter(|e| e.rv > after)
            .filter(|e| e.plural == plural && ns.is_none_or(|ns| ns == e.namespace))
            .cloned()
            .collect();
        Ok((events, inner.rv))
    }

    /// A receiver woken on every change (its value is the latest resourceVersion).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }
}
