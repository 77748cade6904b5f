//! Short plain-text responses the proxy writes itself (refusals and
//! failures), with the reason as the body.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::ResponseBody;

/// A short plain-text response written by the proxy itself.
pub(crate) fn response<B>(status: StatusCode, reason: &str) -> Response<ResponseBody<B>> {
    let mut body = String::with_capacity(reason.len() + 1);
    body.push_str(reason);
    body.push('\n');
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
