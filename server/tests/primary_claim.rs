//! Never two servers answering `/primary`: the primary is frozen (SIGSTOP) for 3 s while the
//! others elect a new one, then resumed. `/primary` of every server is polled throughout;
//! the old primary must not answer 200 once the new one has (before the fix it went on for
//! about a second after resuming), nor report itself primary on the client port.
#![cfg(feature = "cli")]

mod common;

use common::{client, primary_of, status_at, Cluster};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_stops_claiming_before_another_is_elected() {
    let c = Arc::new(Cluster::new(3));
    let _ = client(&c, 1).await;
    let old = primary_of(&c).await;
    // (when, server, code) of every /primary answer.
    let answers: Arc<Mutex<Vec<(Instant, u32, u16)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for i in 0..3u32 {
        let (c, answers, stop) = (c.clone(), answers.clone(), stop.clone());
        pollers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((code, _)) = c.admin_get(i, "/primary").await {
                    answers.lock().unwrap().push((Instant::now(), i, code));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.signal(old, "-STOP");
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.signal(old, "-CONT");
    let resumed_at = Instant::now();
    // The client port right after resuming: never "primary".
    let mut roles = Vec::new();
    for _ in 0..20 {
        if let Some(st) = status_at(&c.clients[old as usize]).await {
            roles.push(st.role);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pollers {
        p.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let new_first = answers
        .iter()
        .find(|(t, i, code)| *t > stopped_at && *i != old && *code == 200)
        .map(|(t, i, _)| (*t, *i))
        .unwrap_or_else(|| panic!("no new primary while s{old} was frozen:\n{}", c.logs()));
    let old_claims: Vec<Duration> = answers
        .iter()
        .filter(|(t, i, code)| *t > new_first.0 && *i == old && *code == 200)
        .map(|(t, _, _)| *t - resumed_at)
        .collect();
    let old_answers = answers
        .iter()
        .filter(|(t, i, _)| *t > resumed_at && *i == old)
        .count();
    eprintln!(
        "s{} primary {:?} after s{old} froze; s{old} answered /primary {old_answers} times after resuming, 200 at {:?}",
        new_first.1,
        new_first.0 - stopped_at,
        old_claims
    );
    assert!(old_answers > 10, "s{old} was not polled after resuming");
    // No false alarm on a healthy ring: the primary claimed steadily before the freeze.
    let before: Vec<u16> = answers
        .iter()
        .filter(|(t, i, _)| *t < stopped_at && *i == old)
        .map(|(_, _, code)| *code)
        .collect();
    assert!(
        before.len() > 10 && before.iter().all(|c| *c == 200),
        "s{old} before the freeze: {before:?}"
    );
    assert!(
        old_claims.is_empty(),
        "s{old} still claimed to be primary after s{} was elected: {old_claims:?}",
        new_first.1
    );
    assert!(
        !roles.contains(&replica::Role::Primary),
        "the client port of s{old} said primary after resuming: {roles:?}"
    );
}
