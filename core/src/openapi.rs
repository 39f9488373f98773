//! OpenAPI 3 documents generated from a service's route table, so a document describes exactly
//! the surface its router serves. Each API hands in its routes' [`Operation`]s and what is its
//! own (components, path parameter rules, links); this module knows nothing else of any API.

use axum::http::Method;
use axum::routing::MethodRouter;
use serde_json::{json, Map, Value};

use crate::auth::Role;

/// What the document says about one route.
pub struct Operation {
    pub method: Method,
    /// In axum's syntax, which is OpenAPI's: `/subjects/{subject}`.
    pub path: &'static str,
    pub role: Role,
    pub summary: &'static str,
    pub query: &'static [QueryParam],
    /// Request body component, if any.
    pub body: Option<&'static str>,
    /// Success response component.
    pub response: &'static str,
}

/// One route of an API: its handler, and what the document says of it.
pub struct Route<S> {
    pub operation: Operation,
    pub handler: MethodRouter<S>,
}

/// A row of a route table: positional arguments keep each route on one line.
#[allow(clippy::too_many_arguments)]
pub fn route<S>(
    method: Method,
    path: &'static str,
    role: Role,
    summary: &'static str,
    query: &'static [QueryParam],
    body: Option<&'static str>,
    response: &'static str,
    handler: MethodRouter<S>,
) -> Route<S> {
    Route {
        operation: Operation {
            method,
            path,
            role,
            summary,
            query,
            body,
            response,
        },
        handler,
    }
}

/// A query parameter.
pub struct QueryParam {
    name: &'static str,
    description: &'static str,
    kind: Kind,
}

/// What a query parameter's value is.
enum Kind {
    /// `true` or `false`.
    Flag,
    Integer,
    /// Any text.
    Text,
}

impl QueryParam {
    pub const fn flag(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam {
            name,
            description,
            kind: Kind::Flag,
        }
    }

    pub const fn integer(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam {
            name,
            description,
            kind: Kind::Integer,
        }
    }

    pub const fn text(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam {
            name,
            description,
            kind: Kind::Text,
        }
    }

    fn parameter(&self) -> Value {
        let schema = match self.kind {
            Kind::Flag => json!({"type": "boolean"}),
            Kind::Integer => json!({"type": "integer", "format": "int64"}),
            Kind::Text => json!({"type": "string"}),
        };
        json!({"name": self.name, "in": "query", "required": false, "description": self.description, "schema": schema})
    }
}

/// Where an answer leads, by the name of the link: (name, `"METHOD /path"` of the target,
/// (parameter, value or runtime expression) pairs).
pub type Links = &'static [(
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
)];

/// What is the API's own in its document.
pub struct Api {
    pub title: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    /// The media type of request and response bodies.
    pub content_type: &'static str,
    /// `components.schemas`; must hold `Error`, every error answer's body.
    pub components: Value,
    /// The schema of a path parameter, by name.
    pub path_schema: fn(&str) -> Value,
    /// Links from an operation's answer (`"METHOD /path"`) to others.
    pub links: &'static [(&'static str, Links)],
}

/// The document of `api`'s `operations`.
pub fn build<'a>(api: &Api, operations: impl IntoIterator<Item = &'a Operation>) -> Value {
    let content_type = api.content_type;
    let mut paths = Map::new();
    for route in operations {
        let mut parameters: Vec<Value> = path_parameters(route.path)
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": (api.path_schema)(name)}))
            .collect();
        parameters.extend(route.query.iter().map(QueryParam::parameter));
        let mut operation = json!({
            "summary": route.summary,
            "x-required-role": match route.role { Role::Read => "read", Role::Write => "write", Role::Admin => "admin" },
            "parameters": parameters,
            "responses": {
                "200": {"description": "OK", "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{}", route.response)}}}},
                "default": {"description": "Error", "content": {content_type: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if let Some(body) = route.body {
            operation["requestBody"] = json!({"required": true, "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    for (from, links) in api.links {
        let (method, path) = from.split_once(' ').expect("\"METHOD /path\"");
        let Some(operation) = paths
            .get_mut(path)
            .and_then(|item| item.get_mut(method.to_ascii_lowercase()))
        else {
            continue;
        };
        let mut out = Map::new();
        for (name, to, parameters) in *links {
            let (method, path) = to.split_once(' ').expect("\"METHOD /path\"");
            out.insert(
                (*name).to_owned(),
                json!({
                    "operationRef": format!("#/paths/{}/{}", path.replace('~', "~0").replace('/', "~1"), method.to_ascii_lowercase()),
                    "parameters": parameters.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<Map<_, _>>()
                }),
            );
        }
        operation["responses"]["200"]["links"] = Value::Object(out);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": api.title,
            "version": api.version,
            "description": api.description
        },
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": api.components
        },
        "security": [{"basic": []}],
        "paths": paths
    })
}

/// `{name}` segments of a path.
pub fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}
