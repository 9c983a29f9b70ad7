//! The policies on paused time: no test waits for a clock.

use super::*;

#[tokio::test(start_paused = true)]
async fn backoff_doubles_to_a_minute_and_resets_after_a_stable_run() {
    let mut b = Backoff::default();
    let mut pauses = Vec::new();
    for _ in 0..12 {
        b.starting();
        // Each process exits after a second: never stable.
        tokio::time::advance(Duration::from_secs(1)).await;
        pauses.push(b.after_exit().as_millis());
    }
    assert_eq!(
        pauses,
        [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000]
    );
    // One that ran 10 s: back to the start.
    b.starting();
    tokio::time::advance(STABLE_AFTER).await;
    assert_eq!(b.after_exit(), INITIAL_BACKOFF);
    // The next one exits at once again: doubling from there.
    b.starting();
    assert_eq!(b.after_exit(), INITIAL_BACKOFF * 2);
    b.reset();
    assert_eq!(b.after_exit(), INITIAL_BACKOFF);
}

#[test]
fn a_slot_is_failing_after_three_failed_starts_in_a_row() {
    let mut f = Failures::default();
    let mut seen = Vec::new();
    for _ in 0..4 {
        f.failed();
        seen.push(f.failing());
    }
    assert_eq!(seen, [false, false, true, true]);
    f.reset();
    assert!(!f.failing());
    assert_eq!(f.in_a_row(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_process_is_idle_after_idle_timeout_without_traffic() {
    let mut a = Activity::new(Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(29)).await;
    a.observe(0, false);
    assert!(!a.idle());
    // A request: the clock starts again.
    a.observe(1, false);
    tokio::time::advance(Duration::from_secs(29)).await;
    a.observe(1, false);
    assert!(!a.idle());
    // A long request in flight counts as activity, however long it takes.
    tokio::time::advance(Duration::from_secs(60)).await;
    a.observe(1, true);
    assert!(!a.idle());
    tokio::time::advance(Duration::from_secs(30)).await;
    a.observe(1, false);
    assert!(a.idle());
    // Without idle_timeout, never.
    let never = Activity::new(None);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(!never.idle());
}

#[test]
fn recycling_counts_max_requests_plus_a_share_of_the_jitter() {
    assert_eq!(recycle_at(None, 10, |_| 3), None);
    assert_eq!(recycle_at(Some(1000), 0, |_| 3), Some(1000));
    assert_eq!(recycle_at(Some(1000), 50, |n| n - 1), Some(1050));
    assert_eq!(recycle_at(Some(1000), 50, |_| 0), Some(1000));
}

#[tokio::test(start_paused = true)]
async fn a_dormant_slot_starts_with_the_first_request_or_ends_with_its_stop() {
    let (wake, mut demand) = watch::channel(0u64);
    let (stop_tx, mut stop) = watch::channel(false);
    // A request arrives a minute later: the slot wakes then, not before.
    let waker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = wake.send(1);
        wake
    });
    let started = Instant::now();
    assert!(wait_for_demand(Some(&mut demand), 0, &mut stop).await);
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    let wake = waker.await.expect("waker");
    // Woken before (count 1 seen): it waits for the next request; a stop ends the wait.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = stop_tx.send(true);
    });
    assert!(!wait_for_demand(Some(&mut demand), 1, &mut stop).await);
    stopper.await.expect("stopper");
    drop(wake);
    // No demand (an app that always runs): at once.
    let (_, mut stop) = watch::channel(false);
    assert!(wait_for_demand(None, 0, &mut stop).await);
}
