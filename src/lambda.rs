//! The Lambda front door: API Gateway REST (v1) and HTTP API (v2), Function
//! URLs and ALB events go through [`crate::http::handle`] and are answered in
//! their own response shape; anything else (a direct invoke, an EventBridge
//! event) is an admin event. `model-router invoke` sends one event through this
//! same path without AWS.

use std::convert::Infallible;

use bytes::Bytes;
use lambda_http::request::{LambdaRequest, RequestContext};
use lambda_http::tower::Service;
use lambda_http::{Adapter, Body, Context, LambdaEvent, service_fn};
use serde_json::Value;

use crate::error::{Error, RequestError};
use crate::http::{RequestId, error_response, handle};
use crate::service::ModelService;

/// Handles one Lambda event already parsed by lambda_http.
pub async fn handle_event(
    service: ModelService,
    request: lambda_http::Request,
) -> Result<http::Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let body: Bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    // Only lambda_http's pass-through context, set for events that match no
    // HTTP event shape, reaches the admin actions. No path, header or body of
    // an HTTP event can produce it.
    let context = parts.extensions.get::<RequestContext>().cloned();
    if matches!(context, Some(RequestContext::PassThrough)) {
        let answer = match serde_json::from_slice::<Value>(&body) {
            Ok(event) => crate::admin::handle(&service, &event).await,
            Err(e) => {
                serde_json::json!({"error": format!("the event is not JSON: {e}"), "code": "invalid_json"})
            }
        };
        return Ok(to_lambda(crate::http::json_response(
            http::StatusCode::OK,
            &answer,
        )));
    }
    let limit = service.config().max_request_bytes;
    if body.len() > limit {
        let error = Error::Request(RequestError::PayloadTooLarge {
            size: body.len(),
            limit,
        });
        return Ok(to_lambda(error_response(&error)));
    }
    if let Some(RequestContext::ApiGatewayV1(ctx)) = &context
        && let Some(stage) = ctx.stage.as_deref()
    {
        strip_stage(&mut parts, stage);
    }
    if let Some(id) = parts
        .extensions
        .get::<lambda_http::Context>()
        .map(|c| c.request_id.clone())
    {
        parts.extensions.insert(RequestId(id));
    }
    let response = handle(&service, http::Request::from_parts(parts, body)).await;
    Ok(to_lambda(response))
}

/// lambda_http prefixes REST API (v1) paths with the stage (`/prod/models/...`);
/// routes are stage-independent, so it is removed here.
fn strip_stage(parts: &mut http::request::Parts, stage: &str) {
    let prefix = format!("/{stage}");
    let path = parts.uri.path();
    if let Some(rest) = path.strip_prefix(&prefix)
        && rest.starts_with('/')
    {
        let rest = match parts.uri.query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_string(),
        };
        if let Ok(uri) = rest.parse() {
            parts.uri = uri;
        }
    }
}

fn to_lambda(response: http::Response<Bytes>) -> http::Response<Body> {
    response.map(|bytes| match String::from_utf8(bytes.to_vec()) {
        Ok(text) => Body::Text(text),
        Err(e) => Body::Binary(e.into_bytes()),
    })
}

/// Sends one event (JSON text of any supported event source) through the
/// handler and returns the Lambda-shaped response, exactly as the runtime
/// would send it back.
pub async fn invoke(service: &ModelService, event: &str) -> Result<Value, serde_json::Error> {
    let request: LambdaRequest = serde_json::from_str(event)?;
    let service = service.clone();
    let mut adapter = Adapter::from(service_fn(move |request| {
        handle_event(service.clone(), request)
    }));
    let context = Context::default();
    let response = match adapter.call(LambdaEvent::new(request, context)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    serde_json::to_value(&response)
}

/// Runs the Lambda runtime loop until the runtime ends it.
pub async fn run(service: ModelService) -> Result<(), lambda_http::Error> {
    lambda_http::run(service_fn(move |request| {
        handle_event(service.clone(), request)
    }))
    .await
}
