//! The OpenAPI description covers every HTTP route, and docs/openapi.json is its current copy.

use herald_server::api::openapi::ApiDoc;
use utoipa::OpenApi;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

#[test]
fn every_http_route_is_described() {
    let doc = ApiDoc::openapi();
    let mut paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/cluster/nodes",
            "/api/dashboard/activity",
            "/api/dashboard/alerts",
            "/api/dashboard/live-data",
            "/api/dashboard/notify",
            "/api/documents/{id}",
            "/api/documents/{id}/changes",
            "/api/messages",
            "/api/realtime/events",
            "/api/realtime/poll",
            "/api/realtime/publish",
            "/api/realtime/publish/batch",
            "/api/realtime/stats",
            "/api/realtime/stream",
            "/api/realtime/subscribe",
            "/api/rooms/{room}/presence",
            "/api/streams",
            "/api/streams/{name}",
            "/events",
            "/events/user/{userId}",
            "/health",
            "/metrics",
            "/notifications",
            "/updates",
        ]
    );
    // Operation ids are unique (OpenAPI requires it; clients generated from the document
    // name their methods after them).
    let mut ids: Vec<String> = doc
        .paths
        .paths
        .values()
        .flat_map(|item| {
            let json = serde_json::to_value(item).unwrap();
            let ops = json
                .as_object()
                .unwrap()
                .values()
                .cloned()
                .collect::<Vec<_>>();
            ops.into_iter()
                .filter_map(|op| op.get("operationId")?.as_str().map(String::from))
        })
        .collect();
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operation ids among {ids:?}");
    // `POST /api/realtime/poll` publishes, described as `POST /api/realtime/publish` is.
    let on_poll = doc.paths.paths["/api/realtime/poll"].post.as_ref().unwrap();
    let publish = doc.paths.paths["/api/realtime/publish"]
        .post
        .as_ref()
        .unwrap();
    let json = serde_json::to_value::<&utoipa::openapi::path::Operation>;
    let (on_poll, publish) = (json(on_poll).unwrap(), json(publish).unwrap());
    assert_ne!(on_poll["operationId"], publish["operationId"]);
    for field in ["requestBody", "responses", "security", "tags"] {
        assert_eq!(on_poll[field], publish[field], "{field}");
    }
    // The event acknowledgement (`seq`) and the stream one (`subscribers`) each keep their own.
    let all = serde_json::to_value(&doc).unwrap();
    let required = |schema: &str| all["components"]["schemas"][schema]["required"].to_string();
    assert!(
        required("Published").contains("\"seq\""),
        "{}",
        required("Published")
    );
    assert!(required("StreamPublished").contains("\"subscribers\""));
    let schemas = doc
        .components
        .as_ref()
        .unwrap()
        .schemas
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    for s in [
        "Event",
        "PublishArgs",
        "PublishBatchArgs",
        "PublishBatchResponse",
        "SubscribeArgs",
        "Filters",
        "ErrorBody",
        "EventsPage",
        "PollBatch",
        "ClusterNodes",
        "NodeStatus",
        // Two types named `Published` once shared one schema, and the event publish routes
        // were described with the stream's acknowledgement.
        "Published",
        "StreamPublished",
    ] {
        assert!(
            schemas.iter().any(|k| k == s),
            "schema {s} missing from {schemas:?}"
        );
    }
}

#[test]
fn docs_copy_is_current() {
    let generated = ApiDoc::openapi().to_pretty_json().unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(DOC, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(DOC).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is out of date: run UPDATE_OPENAPI=1 cargo test -p herald-server --test openapi"
    );
}
