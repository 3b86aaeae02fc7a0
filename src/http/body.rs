//! The one response body type: a complete buffer (every JSON answer, served as a shared
//! `Bytes` clone) or a stream of chunks (the event stream).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body::{Body, Frame, SizeHint};

pub enum ApiBody {
    Full(Option<Bytes>),
    Stream(Pin<Box<dyn Stream<Item = Bytes> + Send>>),
}

impl ApiBody {
    pub fn empty() -> Self {
        ApiBody::Full(None)
    }

    pub fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            ApiBody::Full(None)
        } else {
            ApiBody::Full(Some(bytes))
        }
    }

    pub fn stream(stream: impl Stream<Item = Bytes> + Send + 'static) -> Self {
        ApiBody::Stream(Box::pin(stream))
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Stream(stream) => stream
                .as_mut()
                .poll_next(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ApiBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(None) => SizeHint::with_exact(0),
            ApiBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ApiBody::Stream(_) => SizeHint::default(),
        }
    }
}
