//! The request body's rules on paused time: `max_body_size` as it streams, the read deadline
//! that runs only while the front waits for the client, and the pre-read.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::*;

type Frames = std::pin::Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, BoxError>> + Send>>;

/// A client's body: `pieces` of `size` bytes, each after `gap`.
fn client_body(pieces: usize, size: usize, gap: Duration) -> StreamBody<Frames> {
    let s = stream::unfold(0, move |i| async move {
        if i == pieces {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((Ok(Frame::data(Bytes::from(vec![b'x'; size]))), i + 1))
    });
    StreamBody::new(Box::pin(s) as Frames)
}

/// A client that sends `first` bytes, then nothing ever again.
fn stalled_body(first: usize) -> StreamBody<Frames> {
    let s =
        stream::iter([Ok(Frame::data(Bytes::from(vec![b'x'; first])))]).chain(stream::pending());
    StreamBody::new(Box::pin(s) as Frames)
}

async fn read_all<B: ClientBody>(body: &mut LimitedBody<B>) -> Result<usize, BoxError> {
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame?.into_data().map_or(0, |d| d.len());
    }
    Ok(total)
}

#[tokio::test(start_paused = true)]
async fn a_body_over_its_limit_fails_as_it_streams_and_says_why() {
    let fault = Arc::new(BodyFault::default());
    let mut body = LimitedBody::new(
        client_body(10, 1000, Duration::ZERO),
        Some(4500),
        None,
        fault.clone(),
    );
    assert!(read_all(&mut body).await.is_err());
    assert!(fault.over.load(Ordering::Relaxed));
    assert!(!fault.failed.load(Ordering::Relaxed));
    // Exactly at the limit: whole.
    let fault = Arc::new(BodyFault::default());
    let mut body = LimitedBody::new(
        client_body(10, 1000, Duration::ZERO),
        Some(10_000),
        None,
        fault.clone(),
    );
    assert_eq!(read_all(&mut body).await.expect("whole"), 10_000);
    assert!(!fault.over.load(Ordering::Relaxed));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_sending_is_cut_at_the_deadline_and_one_that_trickles_is_not() {
    let fault = Arc::new(BodyFault::default());
    let mut body = LimitedBody::new(
        stalled_body(10),
        None,
        Some(Duration::from_secs(60)),
        fault.clone(),
    );
    let started = tokio::time::Instant::now();
    assert!(read_all(&mut body).await.is_err());
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert!(fault.failed.load(Ordering::Relaxed));
    // A byte every 50 s, for ten minutes: each wait is under the deadline.
    let fault = Arc::new(BodyFault::default());
    let slow = client_body(12, 1, Duration::from_secs(50));
    let mut body = LimitedBody::new(slow, None, Some(Duration::from_secs(60)), fault.clone());
    assert_eq!(read_all(&mut body).await.expect("whole"), 12);
    assert!(!fault.failed.load(Ordering::Relaxed));
}

#[tokio::test(start_paused = true)]
async fn the_pre_read_stops_at_64_kib_or_the_end() {
    let fault = Arc::new(BodyFault::default());
    let mut body = LimitedBody::new(
        client_body(100, 1024, Duration::ZERO),
        None,
        None,
        fault.clone(),
    );
    let (frames, ended) = prebuffer(&mut body).await;
    assert_eq!(frames.len(), 64, "64 frames of 1 KiB");
    assert!(!ended);
    let mut whole = PrefixedBody {
        prefix: frames,
        rest: Some(body),
    };
    let mut total = 0;
    while let Some(f) = whole.frame().await {
        total += f.expect("frame").into_data().map_or(0, |d| d.len());
    }
    assert_eq!(
        total,
        100 * 1024,
        "the pre-read and the rest: every byte once"
    );
    let mut small = LimitedBody::new(client_body(3, 10, Duration::ZERO), None, None, fault);
    let (frames, ended) = prebuffer(&mut small).await;
    assert_eq!((frames.len(), ended), (3, true));
}
