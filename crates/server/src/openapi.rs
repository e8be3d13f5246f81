//! The REST API's OpenAPI description, served at `/api/v1/openapi.json`.
//!
//! It is generated from the code: each handler carries its
//! `#[utoipa::path]` (method, path, parameters, bodies, answers), the
//! router is built from those same annotations ([`crate::routes::api`]
//! registers handlers through `utoipa_axum::routes!`, which takes the path
//! from the annotation), and the types are the wire types of
//! `satchel_model` with `ToSchema` derived. So a route cannot exist
//! without its description, nor the description drift from the route.
//! `docs/openapi.json` is the committed snapshot; a test fails when the
//! generated description differs from it, so every change to the API is a
//! deliberate one.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ResponseBuilder, Server};

/// Every error answer: the body of [`crate::error::ApiError`]. One set for
/// every operation, since authentication (401, 429), access (403), body
/// limits (413) and the store (502, 503) apply to each.
pub(crate) struct Errors;

/// Raw bytes in a body (a file, an archive, a framed stream): a binary
/// string to OpenAPI, where `Vec<u8>` would read as a JSON array.
pub(crate) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// The error answers, by status: each described once under
/// `components.responses` and referred to by every operation.
const ERRORS: [(&str, &str); 14] = [
    ("400", "The request is not valid (the message says why)"),
    ("401", "No token, or a token that is not valid"),
    ("403", "The token may not do this"),
    ("404", "No such thing (or an id of the wrong shape)"),
    ("405", "The path does not take this method"),
    (
        "409",
        "Conflicts with what is stored (state, names, limits)",
    ),
    ("413", "The body or the answer would be too large"),
    ("415", "The body is not JSON where JSON is needed"),
    ("416", "The range cannot be satisfied"),
    ("422", "The JSON body does not have the expected shape"),
    ("429", "Too many failed authentications from this address"),
    ("500", "The server failed (never the input's fault)"),
    ("502", "The content store failed"),
    ("503", "A dependency is unavailable"),
];

impl utoipa::IntoResponses for Errors {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        ERRORS
            .iter()
            .map(|(status, _)| {
                (
                    status.to_string(),
                    utoipa::openapi::Ref::new(format!("#/components/responses/Error{status}"))
                        .into(),
                )
            })
            .collect()
    }
}

/// The description of the API, from the routes' own annotations.
pub fn spec() -> utoipa::openapi::OpenApi {
    let (_, mut api) = crate::routes::api(&crate::Limits::default()).split_for_parts();
    // Our own info whole: the router's default carries its crate's.
    api.info = utoipa::openapi::InfoBuilder::new()
        .title("Satchel")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Satchel's REST API: runs, artifacts, files, uploads, packages and administration. \
             Every operation takes `Authorization: Bearer TOKEN`; errors are \
             `{\"error\": {\"code\", \"message\"}}`. See docs/api.md.",
        ))
        .license(Some(utoipa::openapi::License::new(env!(
            "CARGO_PKG_LICENSE"
        ))))
        .build();
    api.servers = Some(vec![Server::new("/api/v1")]);
    let components = api.components.get_or_insert_with(Default::default);
    // The error body every operation answers with (see [`Errors`]).
    {
        use satchel_model::api::ErrorBody;
        use utoipa::{PartialSchema, ToSchema};
        let mut deps = Vec::new();
        <ErrorBody as ToSchema>::schemas(&mut deps);
        components.schemas.extend(deps);
        components
            .schemas
            .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
        for (status, what) in ERRORS {
            components.responses.insert(
                format!("Error{status}"),
                ResponseBuilder::new()
                    .description(what)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build()
                    .into(),
            );
        }
    }
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    api.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
        &str,
        [&str; 0],
        &str,
    >("bearer", [])]);
    api
}

/// `GET /api/v1/openapi.json` (no token: it describes, it holds nothing).
pub(crate) async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = JSON.get_or_init(|| spec().to_pretty_json().expect("the spec serializes"));
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.as_str(),
    )
        .into_response()
}
