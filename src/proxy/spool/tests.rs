//! Request buffering against a real folder: every byte through the file once, nothing left
//! in the folder, a body that breaks off is an error.

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::*;
use crate::proxy::body::BodyFault;

type Frames = std::pin::Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, BoxError>> + Send>>;

fn body_of(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> LimitedBody<StreamBody<Frames>> {
    let s: Frames = Box::pin(stream::iter(frames));
    let fault = std::sync::Arc::new(BodyFault::default());
    LimitedBody::new(StreamBody::new(s), None, None, fault)
}

#[tokio::test]
async fn a_spooled_body_comes_back_whole_with_its_length_and_leaves_no_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 300 KiB in uneven pieces, one byte a piece at the start (a chunked body may come so).
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..100u8)
        .map(|i| Ok(Frame::data(Bytes::from(vec![i]))))
        .collect();
    let mut expected: Vec<u8> = (0..100u8).collect();
    for i in 0..30u32 {
        let piece: Vec<u8> = (0..10_237u32).map(|j| ((i * 7 + j) % 251) as u8).collect();
        expected.extend_from_slice(&piece);
        frames.push(Ok(Frame::data(Bytes::from(piece))));
    }
    let (file, len) = spool(body_of(frames), dir.path()).await.expect("spooled");
    assert_eq!(len as usize, expected.len());
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "the file has no name"
    );
    let prefix: VecDeque<Frame<Bytes>> = [Frame::data(Bytes::from_static(b"head:"))].into();
    let body = SpooledBody::new(prefix, file, len);
    assert_eq!(http_body::Body::size_hint(&body).exact(), Some(len + 5));
    let got = body.collect().await.expect("read back").to_bytes();
    assert_eq!(&got[..5], b"head:");
    assert_eq!(&got[5..], &expected[..]);
}

#[tokio::test]
async fn a_body_that_breaks_off_is_an_error_not_a_short_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"some"))),
        Err("the client went away".into()),
    ];
    let r = spool(body_of(frames), dir.path()).await;
    assert!(matches!(r, Err(SpoolError::Body)), "{:?}", r.err());
    // A folder that cannot hold it says which.
    let missing = dir.path().join("gone");
    let r = spool(body_of(vec![]), &missing).await;
    assert!(matches!(r, Err(SpoolError::File { .. })));
}
