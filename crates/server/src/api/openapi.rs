//! The OpenAPI description of the HTTP API, generated from the handlers' annotations and
//! served at `/openapi.json`; `docs/openapi.json` is a copy kept in sync by a test.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{cluster, dashboard, documents, poll, realtime, rooms, seeds, streams, system};
use crate::transport::sse;

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald HTTP API", license(name = "MIT"), description = "Publish, history, statistics and streams. WebSocket messages are described in docs/protocol.md."),
    paths(
        realtime::publish, realtime::publish_batch, realtime::subscribe, realtime::events,
        realtime::stats, sse::stream,
        poll::poll,
        dashboard::live_data, dashboard::activity, dashboard::alerts, dashboard::notify,
        system::health, system::metrics, cluster::nodes,
        seeds::events::events, seeds::events::user_events, seeds::events::notifications,
        seeds::events::updates,
        seeds::mailbox::poll, seeds::mailbox::send,
        rooms::presence,
        documents::state, documents::changes,
        streams::list, streams::create, streams::subscribe, streams::publish, streams::delete,
    ),
    modifiers(&BearerAuth, &PublishOnPoll, &BodyLimit),
    tags((name = "realtime"), (name = "dashboard"), (name = "system"), (name = "seed-compatible"), (name = "rooms"), (name = "documents"), (name = "streams"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A JWT (HS256, `sub` = user id) or a server-side API key",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `POST /api/realtime/poll` is served by the publish handler (seed 003's polling clients post
/// where they poll): its description is publish's, under its own operation id.
struct PublishOnPoll;

impl Modify for PublishOnPoll {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let paths = &mut openapi.paths.paths;
        let mut publish = paths["/api/realtime/publish"]
            .post
            .clone()
            .expect("publish is described");
        publish.operation_id = Some("publish_on_poll".into());
        publish.summary = Some(
            "Publishes an event, exactly like `POST /api/realtime/publish` (for clients that poll and post on one URL)."
                .into(),
        );
        paths
            .get_mut("/api/realtime/poll")
            .expect("the poll route is described")
            .post = Some(publish);
    }
}

/// The body size limit is a layer on the whole router (`api::router`): every route that takes a
/// body answers 413 over it, whether or not its handler mentions it.
struct BodyLimit;

impl Modify for BodyLimit {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.delete];
            for op in operations.into_iter().flatten() {
                if op.request_body.is_some() {
                    op.responses
                        .responses
                        .entry("413".into())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description("Body over max_message_bytes")
                                .content(
                                    "application/json",
                                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
