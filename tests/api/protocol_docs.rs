//! The protocol documents against the server itself: `GET /api/openapi.json` must name exactly the
//! HTTP routes the server registers and describe what they answer; `GET /api/asyncapi.json` must
//! name exactly its WebSocket endpoints, every event kind, and every message a real client gets.
//!
//! The documents' schemas are checked with a small validator of the JSON Schema they use (local
//! `$ref`, `allOf`/`oneOf`/`anyOf`, `const`, `enum`, `type`, `required`, `properties`, `items`,
//! `additionalProperties`, `minimum`/`maximum`): enough to tell a missing or ill-typed field.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Value};
use swapcast::events::EventBody;

use crate::helpers::{spawn_app, Reply, TestApp, TestUser};
use crate::wsclient::{Client, PATIENCE};

const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// An id no resource has, for calling every route without creating anything first.
const NO_SUCH_ID: &str = "999999";

async fn document(app: &TestApp, path: &str) -> Value {
    let reply = app.get(path, None).await;
    assert_eq!(media_type(&reply).as_deref(), Some("application/json"), "{path}");
    reply.expect(200)
}

fn media_type(reply: &Reply) -> Option<String> {
    let value = reply.headers.get(reqwest::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Follows `$ref`s (local JSON pointers) to the value they name.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local references are used: {reference}"));
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} names nothing"));
    }
    value
}

/// Every `$ref` in the document, for checking that each names something.
fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                out.push(reference.clone());
            }
            map.values().for_each(|v| references(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

fn assert_references_resolve(doc: &Value) {
    let mut all = Vec::new();
    references(doc, &mut all);
    assert!(!all.is_empty());
    let dangling: Vec<_> = all
        .iter()
        .filter(|r| r.strip_prefix('#').and_then(|p| doc.pointer(p)).is_none())
        .collect();
    assert!(dangling.is_empty(), "references to nothing: {dangling:?}");
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown JSON Schema type {other:?}"),
    }
}

/// Does `value` conform to `schema`? The error says where and why not.
fn conforms(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for part in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        conforms(doc, part, value)?;
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let failures: Vec<String> = options.iter().filter_map(|s| conforms(doc, s, value).err()).collect();
            if failures.len() == options.len() {
                return Err(format!("matches no option ({})", failures.join(" | ")));
            }
        }
    }
    if let Some(expected) = schema.get("const") {
        if value != expected {
            return Err(format!("{value} is not {expected}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{value} is not one of {allowed:?}"));
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            other => panic!("bad type {other}"),
        };
        if !types.iter().any(|t| has_type(value, t)) {
            return Err(format!("{value} is not of type {types:?}"));
        }
    }
    if let Some(n) = value.as_f64() {
        let below = schema.get("minimum").and_then(Value::as_f64).is_some_and(|min| n < min);
        let above = schema.get("maximum").and_then(Value::as_f64).is_some_and(|max| n > max);
        if below || above {
            return Err(format!("{n} is out of range"));
        }
    }
    if let Some(object) = value.as_object() {
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("`{name}` is missing from {value}"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, field) in object {
            let field_schema = match properties.and_then(|p| p.get(name)) {
                Some(s) => s,
                None => match schema.get("additionalProperties") {
                    Some(s) if s.is_object() => s,
                    _ => continue,
                },
            };
            conforms(doc, field_schema, field).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    if let (Some(items), Some(item_schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(doc, item_schema, item).map_err(|e| format!("[{i}]: {e}"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP: the OpenAPI document

/// `(lowercase method, path)` of every operation the document describes.
fn documented_operations(openapi: &Value) -> BTreeSet<(String, String)> {
    let paths = openapi["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            HTTP_METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_string(), path.clone()))
        })
        .collect()
}

fn served_operations() -> BTreeSet<(String, String)> {
    swapcast::http::http_routes()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_ascii_lowercase(), path))
        .collect()
}

fn path_parameters(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_owned)
        .collect()
}

/// `method` as the document spells it (`get`), for the HTTP client.
fn http_method(method: &str) -> Method {
    Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("an HTTP method")
}

/// A path template with its parameters filled in, in order; missing ones name nothing.
fn fill(template: &str, ids: &[&str]) -> String {
    let mut ids = ids.iter();
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                ids.next().unwrap_or(&NO_SUCH_ID).to_string()
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The app's answer to a path it has no route for (or a method a path does not take), as told
/// apart from a resource that does not exist.
fn is_route_not_found(reply: &Reply) -> bool {
    reply.status == 405 || (reply.status == 404 && reply.body["error"]["message"] == "Route not found")
}

/// Is this reply one the document describes for the operation: its status, media type and body?
fn check_http(openapi: &Value, method: &str, template: &str, reply: &Reply) -> Result<(), String> {
    let operation = &openapi["paths"][template][method];
    let status = reply.status.as_str();
    let response = operation["responses"]
        .get(status)
        .or_else(|| operation["responses"].get("default"))
        .ok_or_else(|| {
            format!(
                "{method} {template}: status {status} is not documented ({})",
                reply.body
            )
        })?;
    let response = resolve(openapi, response);
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return Ok(());
    };
    let media = media_type(reply).unwrap_or_default();
    let described = content
        .get(&media)
        .ok_or_else(|| format!("{method} {template} {status}: media type {media:?} is not documented"))?;
    if media == "application/json" {
        conforms(openapi, &described["schema"], &reply.body)
            .map_err(|e| format!("{method} {template} {status}: the body does not match the document: {e}"))?;
    }
    Ok(())
}

/// Calls an operation as the document names it, and holds the answer to the document.
struct Api<'a> {
    app: &'a TestApp,
    openapi: &'a Value,
}

impl Api<'_> {
    async fn call(
        &self,
        method: &str,
        template: &str,
        ids: &[&str],
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        assert!(
            self.openapi["paths"][template].get(method).is_some(),
            "{method} {template} is not documented"
        );
        let reply = self
            .app
            .call(http_method(method), &fill(template, ids), token, body)
            .await;
        if let Err(problem) = check_http(self.openapi, method, template, &reply) {
            panic!("{problem}");
        }
        reply
    }
}

#[actix_web::test]
async fn openapi_documents_exactly_the_routes_the_server_registers() {
    let app = spawn_app().await;
    let openapi = document(&app, "/api/openapi.json").await;
    assert!(
        openapi["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1"
    );
    assert_eq!(openapi["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_references_resolve(&openapi);

    let documented = documented_operations(&openapi);
    let served = served_operations();
    assert!(served.contains(&("get".into(), "/api/openapi.json".into())));
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );

    let mut operation_ids = BTreeSet::new();
    for (method, path) in &documented {
        let item = &openapi["paths"][path];
        let operation = &item[method];
        let id = operation["operationId"].as_str().unwrap_or_default();
        assert!(
            operation_ids.insert(id.to_owned()),
            "{method} {path}: operationId {id:?} missing or repeated"
        );
        assert!(
            operation["security"].is_array(),
            "{method} {path}: who may call it is not said"
        );
        assert!(
            operation["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}: no responses"
        );
        let declared: BTreeSet<String> = item["parameters"]
            .as_array()
            .into_iter()
            .chain(operation["parameters"].as_array())
            .flatten()
            .map(|p| resolve(&openapi, p))
            .filter(|p| p["in"] == "path")
            .inspect(|p| assert_eq!(p["required"], true, "{method} {path}: path parameters are required"))
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(declared, path_parameters(path), "{method} {path}: path parameters");
    }
}

#[actix_web::test]
async fn every_documented_operation_is_served_and_answers_as_documented() {
    let app = spawn_app().await;
    let openapi = document(&app, "/api/openapi.json").await;
    let documented = documented_operations(&openapi);
    assert!(documented.len() > 20, "{documented:?}");

    // The detector itself: a path nobody serves is a route-not-found, a missing station is not.
    assert!(is_route_not_found(&app.get("/api/no/such/route", None).await));
    assert!(!is_route_not_found(
        &app.get(&format!("/api/stations/{NO_SUCH_ID}"), None).await
    ));

    for token in [None, Some(app.admin.token.as_str())] {
        for (method, template) in &documented {
            let body = matches!(method.as_str(), "post" | "patch" | "put").then(|| json!({}));
            let reply = app
                .call(http_method(method), &fill(template, &[]), token, body.clone())
                .await;
            let who = if token.is_some() { "an admin" } else { "anonymous" };
            assert!(
                !is_route_not_found(&reply),
                "{method} {template} is documented but not served ({who}): {} {}",
                reply.status,
                reply.body
            );
            assert!(
                reply.status.as_u16() < 500,
                "{method} {template} ({who}): {}",
                reply.body
            );
            if let Err(problem) = check_http(&openapi, method, template, &reply) {
                panic!("{problem} ({who})");
            }
            // A trailing slash reaches the same route (Django clients send one).
            if template != "/" {
                let slashed = format!("{}/", fill(template, &[]));
                let reply = app.call(http_method(method), &slashed, token, body).await;
                assert!(!is_route_not_found(&reply), "{method} {slashed} is not served");
            }
        }
    }

    // And nothing undocumented is served on a documented path.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for path in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if documented.contains(&(method.to_owned(), path.clone())) {
                continue;
            }
            let reply = app
                .call(
                    http_method(method),
                    &fill(path, &[]),
                    Some(&app.admin.token),
                    Some(json!({})),
                )
                .await;
            assert!(
                is_route_not_found(&reply),
                "{method} {path} is served but not documented: {} {}",
                reply.status,
                reply.body
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket: the AsyncAPI document

/// One documented message: its key in `components/messages`, the `type`s it may carry, its payload.
#[derive(Debug)]
struct Message {
    key: String,
    types: BTreeSet<String>,
    payload: Value,
}

/// The values a schema allows for one property (`type`, `action`), through refs and combinators.
fn property_values(doc: &Value, schema: &Value, property: &str, out: &mut BTreeSet<String>) {
    let schema = resolve(doc, schema);
    let field = resolve(doc, &schema["properties"][property]);
    out.extend(field.get("const").and_then(Value::as_str).map(str::to_owned));
    for allowed in field.get("enum").and_then(Value::as_array).into_iter().flatten() {
        out.extend(allowed.as_str().map(str::to_owned));
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for part in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            property_values(doc, part, property, out);
        }
    }
}

fn message(doc: &Value, reference: &Value) -> Message {
    // A channel's message names a component message; its key is the last reference followed.
    let mut value = reference;
    let mut key = String::new();
    while let Some(r) = value.get("$ref").and_then(Value::as_str) {
        key = r.rsplit('/').next().unwrap_or_default().to_owned();
        value = r
            .strip_prefix('#')
            .and_then(|pointer| doc.pointer(pointer))
            .unwrap_or_else(|| panic!("{r} names nothing"));
    }
    let payload = value["payload"].clone();
    let mut types = BTreeSet::new();
    property_values(doc, &payload, "type", &mut types);
    assert!(!types.is_empty(), "message {key} has no `type`");
    Message { key, types, payload }
}

/// The AsyncAPI document, read as: channel address (no trailing slash) → its messages each way.
struct AsyncApi {
    doc: Value,
    /// Server → client, by channel address.
    server: BTreeMap<String, Vec<Message>>,
    /// Client → server, by channel address.
    client: BTreeMap<String, Vec<Message>>,
    /// Documented close codes, by channel address.
    close_codes: BTreeMap<String, BTreeSet<u16>>,
}

impl AsyncApi {
    fn read(doc: Value) -> AsyncApi {
        let channels = doc["channels"].as_object().expect("channels");
        // The server trims a trailing slash, so `/ws/stations/` is the route `/ws/stations`.
        let address_of = |channel: &Value| -> String {
            let address = resolve(&doc, channel)["address"].as_str().expect("address");
            address.trim_end_matches('/').to_owned()
        };
        let mut server: BTreeMap<String, Vec<Message>> = BTreeMap::new();
        let mut client: BTreeMap<String, Vec<Message>> = BTreeMap::new();
        let mut close_codes = BTreeMap::new();
        for channel in channels.values() {
            let address = address_of(channel);
            server.entry(address.clone()).or_default();
            client.entry(address.clone()).or_default();
            let codes: BTreeSet<u16> = channel["x-close-codes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(code, _)| code.parse().expect("a close code"))
                .collect();
            close_codes.insert(address, codes);
        }
        for operation in doc["operations"].as_object().expect("operations").values() {
            let address = address_of(&operation["channel"]);
            let messages = operation["messages"].as_array().expect("messages");
            let (own, replies) = match operation["action"].as_str() {
                Some("send") => (&mut server, None),
                Some("receive") => (&mut client, operation["reply"]["messages"].as_array()),
                other => panic!("action {other:?}"),
            };
            own.entry(address.clone())
                .or_default()
                .extend(messages.iter().map(|m| message(&doc, m)));
            for reply in replies.into_iter().flatten() {
                server.entry(address.clone()).or_default().push(message(&doc, reply));
            }
        }
        AsyncApi {
            doc,
            server,
            client,
            close_codes,
        }
    }

    fn server_types(&self, address: &str) -> BTreeSet<String> {
        self.server[address].iter().flat_map(|m| m.types.clone()).collect()
    }

    fn client_types(&self, address: &str) -> BTreeSet<String> {
        self.client[address].iter().flat_map(|m| m.types.clone()).collect()
    }

    /// The documented server messages a real one matches; an error if its `type` is undocumented
    /// on the channel or it matches none of the messages of that type.
    fn matches(&self, address: &str, value: &Value) -> Result<Vec<String>, String> {
        let kind = value["type"].as_str().unwrap_or_default();
        let candidates: Vec<&Message> = self.server[address].iter().filter(|m| m.types.contains(kind)).collect();
        if candidates.is_empty() {
            return Err(format!("{address}: type {kind:?} is not documented: {value}"));
        }
        let mut failures = Vec::new();
        let mut matched = Vec::new();
        for candidate in candidates {
            match conforms(&self.doc, &candidate.payload, value) {
                Ok(()) => matched.push(candidate.key.clone()),
                Err(e) => failures.push(format!("{}: {e}", candidate.key)),
            }
        }
        if matched.is_empty() {
            return Err(format!(
                "{address}: {value} matches no documented message: {failures:?}"
            ));
        }
        Ok(matched)
    }

    /// A client message the test sends must be one the document describes.
    fn check_client(&self, address: &str, value: &Value) {
        let kind = value["type"].as_str().unwrap_or_default();
        let ok = self.client[address]
            .iter()
            .filter(|m| m.types.contains(kind))
            .any(|m| conforms(&self.doc, &m.payload, value).is_ok());
        assert!(ok, "{address}: the client message {value} is not documented");
    }
}

/// A WebSocket client whose every received message is held to the document.
struct Watcher {
    client: Client,
    address: &'static str,
    seen: Vec<Value>,
}

impl Watcher {
    async fn connect(app: &TestApp, path: &str, address: &'static str) -> Watcher {
        Watcher {
            client: Client::connect(app, path).await,
            address,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, docs: &AsyncApi, message: Value) {
        docs.check_client(self.address, &message);
        self.client.send_text(&message.to_string()).await;
    }

    /// Reads (checking each message) until one satisfies `done`; returns it.
    async fn until(&mut self, docs: &AsyncApi, matched: &mut BTreeSet<String>, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE * 2;
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: gave up waiting; seen {:?}",
                self.address,
                self.seen
            );
            let value = self.client.next().await;
            assert!(value.get("close").is_none(), "{}: closed: {value}", self.address);
            match docs.matches(self.address, &value) {
                Ok(keys) => matched.extend(keys),
                Err(problem) => panic!("{problem}"),
            }
            self.seen.push(value.clone());
            if done(&value) {
                return value;
            }
        }
    }

    /// Reads until every one of `types` has been seen on this connection.
    async fn until_seen(&mut self, docs: &AsyncApi, matched: &mut BTreeSet<String>, types: &[&str]) {
        let missing = |seen: &[Value]| -> Vec<String> {
            types
                .iter()
                .filter(|t| !seen.iter().any(|m| m["type"] == **t))
                .map(|t| t.to_string())
                .collect()
        };
        while !missing(&self.seen).is_empty() {
            let wanted = missing(&self.seen);
            self.until(docs, matched, |m| wanted.iter().any(|t| m["type"] == *t))
                .await;
        }
    }
}

fn typed(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["type"] == kind
}

fn ws_routes() -> BTreeSet<String> {
    swapcast::ws::ws_routes()
        .into_iter()
        .map(|(method, path)| {
            assert_eq!(method.as_str(), "GET", "a WebSocket upgrade is a GET");
            path
        })
        .collect()
}

#[actix_web::test]
async fn asyncapi_documents_every_endpoint_event_kind_and_client_message() {
    let app = spawn_app().await;
    let doc = document(&app, "/api/asyncapi.json").await;
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_references_resolve(&doc);
    let docs = AsyncApi::read(doc);

    // The channels are the server's WebSocket routes, both ways.
    let documented: BTreeSet<String> = docs.server.keys().cloned().collect();
    assert_eq!(
        documented,
        ws_routes(),
        "documented channels vs the server's WebSocket routes"
    );

    // Every event kind the server can emit is documented, on /ws and on some seed channel.
    let seed_types: BTreeSet<String> = ["/ws/stations", "/ws/stations/{id}", "/ws/notifications"]
        .iter()
        .flat_map(|a| docs.server_types(a))
        .collect();
    for kind in EventBody::KINDS {
        assert!(
            seed_types.contains(kind),
            "{kind} is not documented on the seed endpoints"
        );
        assert!(
            docs.server_types("/ws").contains(kind),
            "{kind} is not documented on /ws"
        );
    }

    // The client messages a channel documents are the ones its server knows, both ways: a type
    // documented on one channel but not another must be unknown there.
    let station = app.station("Docs Station", None).await;
    let all_client_types: BTreeSet<String> = docs.client.keys().flat_map(|a| docs.client_types(a)).collect();
    for address in docs.client.keys() {
        let path = fill(address, &[&station.to_string()]);
        let mut client = Client::connect(&app, &format!("{path}?token={}", app.admin.token)).await;
        for kind in all_client_types.iter().map(String::as_str).chain(["no_such_type"]) {
            client.send_text(&json!({ "type": kind }).to_string()).await;
            let marker = format!("after {kind}");
            client
                .send_text(&json!({"type": "ping", "timestamp": marker}).to_string())
                .await;
            let unknown = format!("Unknown message type: {kind}");
            let mut refused = false;
            loop {
                let value = client.next_json().await;
                refused |= value["type"] == "error" && value["message"] == unknown;
                if value["type"] == "pong" && value["timestamp"] == marker.as_str() {
                    break;
                }
            }
            let documented = docs.client_types(address).contains(kind);
            assert_eq!(
                !refused,
                documented,
                "{address}: {kind:?} is {} but the server {} it",
                if documented { "documented" } else { "not documented" },
                if refused { "does not know" } else { "knows" }
            );
        }
    }

    // Every documented request action is one the server knows, and an unknown one is refused.
    let mut actions = BTreeSet::new();
    for request in docs.client["/ws"].iter().filter(|m| m.types.contains("request")) {
        property_values(&docs.doc, &request.payload, "action", &mut actions);
    }
    assert!(!actions.is_empty(), "no actions in the document");
    let mut client = Client::connect(&app, "/ws").await;
    client.next_json().await;
    for action in actions.iter().map(String::as_str).chain(["no_such_action"]) {
        let request = json!({"type": "request", "request_id": action, "action": action, "data": {}});
        client.send_text(&request.to_string()).await;
        let answer = loop {
            let value = client.next_json().await;
            if value["request_id"] == action {
                break value;
            }
        };
        let unknown = answer["error"]["fields"].get("action").is_some();
        assert_eq!(unknown, action == "no_such_action", "{action}: {answer}");
    }

    // Refusals close with documented codes.
    for (path, address, expected) in [
        (format!("/ws/stations/{NO_SUCH_ID}/"), "/ws/stations/{id}", 4004),
        ("/ws/stations/?token=not-a-token".to_owned(), "/ws/stations", 4001),
        ("/ws/notifications/".to_owned(), "/ws/notifications", 4001),
        ("/ws?token=not-a-token".to_owned(), "/ws", 4001),
    ] {
        let mut client = Client::connect(&app, &path).await;
        let code = loop {
            let value = client.next().await;
            if let Some(code) = value.get("close") {
                break code.as_u64().map(|c| c as u16);
            }
            if let Err(problem) = docs.matches(address, &value) {
                panic!("{problem}");
            }
        };
        assert_eq!(code, Some(expected), "{path}");
        assert!(
            docs.close_codes[address].contains(&expected),
            "{address}: close code {expected} is not documented"
        );
    }
}

async fn ws_request(
    watcher: &mut Watcher,
    docs: &AsyncApi,
    matched: &mut BTreeSet<String>,
    id: &str,
    action: &str,
    data: Value,
) -> Value {
    let request = json!({"type": "request", "request_id": id, "action": action, "data": data});
    watcher.send(docs, request).await;
    watcher.until(docs, matched, |m| m["request_id"] == id).await
}

/// A whole swap, driven through documented REST operations and watched on every WebSocket
/// endpoint: every REST answer and every WebSocket message must be as documented, and every
/// documented server message must turn up.
#[actix_web::test]
async fn a_live_swap_speaks_exactly_the_documented_protocols() {
    let app = spawn_app().await;
    let openapi = document(&app, "/api/openapi.json").await;
    let docs = AsyncApi::read(document(&app, "/api/asyncapi.json").await);
    let api = Api {
        app: &app,
        openapi: &openapi,
    };
    let admin = app.admin.token.clone();
    let driver: TestUser = app.user("user").await;
    let mut matched = BTreeSet::new();

    let station = api
        .call(
            "post",
            "/api/stations",
            &[],
            Some(&admin),
            Some(json!({"name": "Docs Station", "address": "1 Main St"})),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let s = station.to_string();
    let start = app.last_event_id().await;

    // Station feeds start with a snapshot (which also says the subscription is live); personal
    // feeds resume from `start`, so nothing from here on can slip past them.
    let mut all = Watcher::connect(&app, "/ws/stations/", "/ws/stations").await;
    all.until(&docs, &mut matched, |m| m["action"] == "snapshot").await;
    let mut one = Watcher::connect(&app, &format!("/ws/stations/{s}/?token={admin}"), "/ws/stations/{id}").await;
    one.until(&docs, &mut matched, |m| m["action"] == "snapshot").await;
    let mut mine = Watcher::connect(
        &app,
        &format!("/ws/notifications/?last_event_id={start}&token={}", driver.token),
        "/ws/notifications",
    )
    .await;
    let mut mux = Watcher::connect(&app, &format!("/ws?last_event_id={start}&token={admin}"), "/ws").await;
    for channel in ["stations".to_owned(), format!("station:{s}")] {
        mux.send(&docs, json!({"type": "subscribe", "channel": channel})).await;
        mux.until(&docs, &mut matched, |m| {
            m["action"] == "snapshot" && m["channel"] == channel.as_str()
        })
        .await;
    }
    mux.send(&docs, json!({"type": "subscribe", "channel": "system"})).await;
    mux.send(&docs, json!({"type": "unsubscribe", "channel": format!("station:{s}")}))
        .await;
    mux.until(&docs, &mut matched, typed("unsubscribed")).await;
    let mut mux_driver = Watcher::connect(&app, "/ws", "/ws").await;
    mux_driver
        .until(&docs, &mut matched, typed("connection_established"))
        .await;
    mux_driver
        .send(&docs, json!({"type": "authenticate", "token": "not-a-token"}))
        .await;
    mux_driver.until(&docs, &mut matched, typed("auth_error")).await;
    // A token that expires in three seconds (the driver's own sign-in session): `token_expiring`.
    let short = short_lived(&driver.token, 3);
    let mut expiring = Watcher::connect(&app, &format!("/ws?token={short}"), "/ws").await;
    expiring.until(&docs, &mut matched, typed("token_expiring")).await;
    mux_driver
        .send(&docs, json!({"type": "authenticate", "token": driver.token}))
        .await;
    mux_driver.until(&docs, &mut matched, typed("subscribed")).await;
    mux_driver
        .send(&docs, json!({"type": "subscribe", "channel": "system"}))
        .await;
    mux_driver
        .until(&docs, &mut matched, |m| m["code"] == "forbidden")
        .await;

    // The swap, through REST.
    let mut serials = BTreeMap::new();
    for serial in ["DOC-1", "DOC-2"] {
        let battery = api
            .call(
                "post",
                "/api/stations/{id}/batteries",
                &[&s],
                Some(&admin),
                Some(json!({"serial": serial, "model": "Tesla Battery - Model 3", "soc": 90})),
            )
            .await
            .expect(201);
        serials.insert(battery["id"].as_i64().unwrap(), serial);
    }
    api.call("get", "/api/stations/{id}/batteries", &[&s], None, None)
        .await
        .expect(200);
    let booking = api
        .call(
            "post",
            "/api/bookings",
            &[],
            Some(&driver.token),
            Some(json!({"station_id": station})),
        )
        .await
        .expect(201);
    let booking_id = booking["id"].as_i64().unwrap().to_string();
    let battery_id = booking["battery_id"].as_i64().unwrap();
    api.call("post", "/api/bookings/{id}/ready", &[&booking_id], Some(&admin), None)
        .await
        .expect(200);
    api.call("post", "/api/bookings/{id}/collect", &[&booking_id], Some(&admin), None)
        .await
        .expect(200);
    api.call(
        "post",
        "/api/stations/{id}/returns",
        &[&s],
        Some(&admin),
        Some(json!({"serial": serials[&battery_id], "soc": 40})),
    )
    .await
    .expect(201);
    api.call(
        "patch",
        "/api/batteries/{id}",
        &[&battery_id.to_string()],
        Some(&admin),
        Some(json!({"soc": 60})),
    )
    .await
    .expect(200);

    // The same through /ws requests.
    let booked = ws_request(
        &mut mux_driver,
        &docs,
        &mut matched,
        "b",
        "book_battery",
        json!({"station_id": station}),
    )
    .await;
    assert_eq!(booked["type"], "response", "{booked}");
    let second = booked["data"]["id"].as_i64().unwrap();
    ws_request(
        &mut mux_driver,
        &docs,
        &mut matched,
        "c",
        "cancel_booking",
        json!({"booking_id": second}),
    )
    .await;
    ws_request(&mut mux_driver, &docs, &mut matched, "l", "list_stations", json!({})).await;
    let missing = ws_request(
        &mut mux_driver,
        &docs,
        &mut matched,
        "g",
        "get_station",
        json!({"station_id": 0}),
    )
    .await;
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");

    api.call(
        "patch",
        "/api/stations/{id}",
        &[&s],
        Some(&admin),
        Some(json!({"status": "maintenance"})),
    )
    .await
    .expect(200);
    api.call(
        "post",
        "/api/stations/{id}/announcements",
        &[&s],
        Some(&admin),
        Some(json!({"message": "Closed for maintenance in 10 minutes", "level": "warning"})),
    )
    .await
    .expect(201);
    let mut mux_admin = Watcher::connect(&app, &format!("/ws?token={admin}"), "/ws").await;
    let announced = ws_request(
        &mut mux_admin,
        &docs,
        &mut matched,
        "a",
        "announce",
        json!({"station_id": station, "message": "Open again"}),
    )
    .await;
    assert_eq!(announced["type"], "response", "{announced}");
    // Presence: the admin watching the station is told when the driver comes and goes; both
    // ask who is there, and only the admin is told who.
    let channel = format!("station:{s}");
    mux_admin
        .send(&docs, json!({"type": "subscribe", "channel": channel}))
        .await;
    mux_admin
        .until(&docs, &mut matched, |m| {
            m["action"] == "snapshot" && m["channel"] == channel.as_str()
        })
        .await;
    mux_driver
        .send(&docs, json!({"type": "subscribe", "channel": channel}))
        .await;
    let joined = mux_admin.until(&docs, &mut matched, typed("viewer_joined")).await;
    assert_eq!(joined["user_id"], driver.id, "{joined}");
    mux_driver
        .send(&docs, json!({"type": "presence", "channel": channel}))
        .await;
    let counted = mux_driver.until(&docs, &mut matched, typed("presence")).await;
    assert!(
        counted.get("signed_in").is_none(),
        "a driver sees the count only: {counted}"
    );
    mux_admin
        .send(&docs, json!({"type": "presence", "channel": channel}))
        .await;
    let listed = mux_admin.until(&docs, &mut matched, typed("presence")).await;
    assert!(listed["signed_in"].as_array().is_some_and(|l| l.len() == 2), "{listed}");
    mux_driver
        .send(&docs, json!({"type": "unsubscribe", "channel": channel}))
        .await;
    let left = mux_admin.until(&docs, &mut matched, typed("viewer_left")).await;
    assert_eq!(left["user_id"], driver.id, "{left}");
    api.call(
        "post",
        "/api/notifications",
        &[],
        Some(&admin),
        Some(json!({"all": true, "title": "Hello", "message": "All"})),
    )
    .await
    .expect(201);
    let note = api
        .call(
            "post",
            "/api/notifications",
            &[],
            Some(&admin),
            Some(json!({"user_id": driver.id, "title": "Hi", "message": "You", "level": "success"})),
        )
        .await
        .expect(201);
    let note_id = note["id"].as_i64().unwrap().to_string();

    // Protocol chatter on every connection.
    for watcher in [&mut all, &mut one, &mut mine, &mut mux] {
        watcher.send(&docs, json!({"type": "ping", "timestamp": 1})).await;
        watcher.client.send_text("not json").await;
    }
    // Not a documented channel name: deliberately outside the document, to draw `unknown_channel`.
    mux.client
        .send_text(&json!({"type": "subscribe", "channel": "nonsense"}).to_string())
        .await;

    let station_events = [
        "connection_established",
        "inventory_update",
        "battery_added",
        "battery_booked",
        "battery_collected",
        "battery_updated",
        "station_status",
        "station_announcement",
        "pong",
        "error",
    ];
    all.until_seen(&docs, &mut matched, &station_events).await;
    one.until_seen(&docs, &mut matched, &station_events).await;
    mine.until_seen(
        &docs,
        &mut matched,
        &[
            "connection_established",
            "booking_confirmed",
            "booking_ready",
            "notification",
            "pong",
            "error",
        ],
    )
    .await;
    mux.until_seen(
        &docs,
        &mut matched,
        &["authenticated", "notification", "system_metrics", "pong", "error"],
    )
    .await;
    mux.until_seen(&docs, &mut matched, &station_events).await;
    mux_driver
        .until_seen(
            &docs,
            &mut matched,
            &["booking_confirmed", "booking_ready", "notification"],
        )
        .await;
    let one_booked = one.seen.iter().find(|m| m["type"] == "battery_booked").unwrap();
    assert_eq!(
        one_booked["user"], driver.email,
        "an admin's station feed names the booker"
    );

    // The REST reads, as documented, now that there is something to read.
    for (template, ids, token) in [
        ("/api/stations", vec![], None),
        ("/api/stations/{id}", vec![s.as_str()], None),
        ("/api/stations/{id}/presence", vec![s.as_str()], Some(admin.as_str())),
        ("/api/bookings", vec![], Some(driver.token.as_str())),
        ("/api/notifications", vec![], Some(driver.token.as_str())),
        ("/api/users", vec![], Some(admin.as_str())),
        ("/api/me", vec![], Some(driver.token.as_str())),
        ("/api/events", vec![], Some(admin.as_str())),
        ("/api/realtime/stats", vec![], Some(admin.as_str())),
        ("/readyz", vec![], None),
    ] {
        api.call("get", template, &ids, token, None).await.expect(200);
    }
    api.call(
        "post",
        "/api/notifications/{id}/read",
        &[&note_id],
        Some(&driver.token),
        None,
    )
    .await
    .expect(200);

    // Every documented server message turned up.
    let all_keys: BTreeSet<String> = docs.server.values().flatten().map(|m| m.key.clone()).collect();
    let never: Vec<_> = all_keys.difference(&matched).collect();
    assert!(never.is_empty(), "documented but never sent: {never:?}");
}

/// The same claims as `token` (its user and sign-in session), signed again to expire in `secs`.
fn short_lived(token: &str, secs: i64) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let mut claims: Value = serde_json::from_slice(&claims).expect("JSON claims");
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + secs);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(crate::helpers::JWT_SECRET.as_bytes()),
    )
    .unwrap()
}
