//! One request: route it by path and method to the handler that answers it.

use std::sync::Arc;

use hyper::{Method, Request, Response};

use super::body::{Body, RequestBody};
use super::response::HttpError;
use super::route::{self, Route};
use super::{ac, cas, observe, status, HttpConfig};
use crate::store::Store;

/// Answers `request`, counted, timed and logged (see [`observe`]).
pub(super) async fn handle(
    store: &Arc<dyn Store>,
    config: &HttpConfig,
    request: Request<RequestBody>,
) -> Response<Body> {
    let observation = observe::begin(config, &request);
    let response = answer(store, config, request).await;
    observation.finish(&response);
    response
}

/// Answers `request`. Every refusal is an error response with a message; only a failure in the
/// middle of a streamed body aborts the connection instead.
async fn answer(
    store: &Arc<dyn Store>,
    config: &HttpConfig,
    request: Request<RequestBody>,
) -> Response<Body> {
    let (parts, mut body) = request.into_parts();
    // Credentials first: a refused request reads no body and stores nothing.
    if let Some(refusal) = super::refuse_unauthorized(config, &parts).await {
        return refusal;
    }
    let route = match route::parse(parts.uri.path()) {
        Ok(route) => route,
        Err(e) => return e.into_response(),
    };
    let result = match (route, &parts.method) {
        (Route::Status, &Method::GET | &Method::HEAD) => Ok(status::get(store.as_ref(), config)),
        (Route::Metrics, &Method::GET | &Method::HEAD) => {
            Ok(status::metrics(store.as_ref(), config))
        }
        (Route::Cas { hash }, &Method::GET) => cas::get(store, &hash, false).await,
        (Route::Cas { hash }, &Method::HEAD) => cas::get(store, &hash, true).await,
        (Route::Cas { hash }, &Method::PUT) => {
            cas::put(store.as_ref(), hash, &parts.headers, &mut body).await
        }
        (Route::Ac { instance, hash }, &Method::GET | &Method::HEAD) => {
            ac::get(store.as_ref(), instance, hash).await
        }
        (Route::Ac { instance, hash }, &Method::PUT) => {
            ac::put(store.as_ref(), config, instance, hash, &mut body).await
        }
        (Route::Page, &Method::GET | &Method::HEAD) => Ok(status::page()),
        (Route::PageData, &Method::GET | &Method::HEAD) => {
            Ok(status::page_data(store.as_ref(), config))
        }
        (Route::Status | Route::Metrics | Route::Page | Route::PageData, method) => {
            Err(HttpError::method_not_allowed(method, "GET, HEAD"))
        }
        (Route::Cas { .. } | Route::Ac { .. }, method) => {
            Err(HttpError::method_not_allowed(method, "GET, HEAD, PUT"))
        }
    };
    result.unwrap_or_else(HttpError::into_response)
}
